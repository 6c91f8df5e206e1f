//! Generalised-mean (GeM) pooling (Radenović et al., 2018) with a learnable exponent:
//! `GeM(x)_c = (mean_{h,w} max(x, eps)^p)^(1/p)`. `p = 1` is average pooling; large `p`
//! tends to max pooling. The fundus method pools each mirror view with it (`p` from 3).

use burn::module::Param;
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Gem {
    /// The exponent, learnable (one value).
    pub p: Param<Tensor<1>>,
    pub eps: f64,
}

impl Gem {
    pub fn new(p: f32, device: &Device) -> Self {
        Gem {
            p: Param::from_tensor(Tensor::from_data(TensorData::new(vec![p], [1]), device)),
            eps: 1e-6,
        }
    }

    /// `[N, C, H, W]` to `[N, C]`, computed as `M exp(log(mean(exp(p log(x / M)))) / p)`
    /// with `M` the channel's maximum: GeM is homogeneous of degree one, so dividing by `M`
    /// changes nothing but keeps `(x / M)^p <= 1` from overflowing for large `p`. `p`
    /// broadcasts and takes gradients.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let p = self.p.val().reshape([1, 1, 1, 1]);
        let x = x.clamp_min(self.eps);
        let m = x.clone().max_dims(&[2, 3]).detach();
        let powered = ((x / m.clone()).log() * p.clone()).exp();
        let mean = powered.mean_dims(&[2, 3]);
        ((mean.log() / p).exp() * m).flatten(1, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(dev: &Device) -> Tensor<4> {
        // One image, two channels of four values each.
        Tensor::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 8.0],
                [1, 2, 2, 2],
            ),
            dev,
        )
    }

    fn vals(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn hand_computed() {
        let dev = Device::flex();
        // p = 1: the mean.
        let v = vals(Gem::new(1.0, &dev).forward(maps(&dev)));
        assert!(
            (v[0] - 2.5).abs() < 1e-5 && (v[1] - 2.375).abs() < 1e-5,
            "{v:?}"
        );
        // p = 3: ((1 + 8 + 27 + 64) / 4)^(1/3) = 25^(1/3).
        let v = vals(Gem::new(3.0, &dev).forward(maps(&dev)));
        assert!((v[0] - 25f32.powf(1.0 / 3.0)).abs() < 1e-4, "{v:?}");
        let want = ((3.0 * 0.125 + 512.0) / 4.0f32).powf(1.0 / 3.0);
        assert!((v[1] - want).abs() < 1e-3, "{v:?}");
        // Large p: close to the max.
        let v = vals(Gem::new(60.0, &dev).forward(maps(&dev)));
        assert!(
            (v[0] - 4.0).abs() < 0.1 && (v[1] - 8.0).abs() < 0.2,
            "{v:?}"
        );
    }

    #[test]
    fn gradient_of_p_matches_finite_differences() {
        let dev = Device::flex().autodiff();
        let gem = Gem::new(3.0, &dev);
        let out = gem.forward(maps(&dev)).sum();
        let g = gem
            .p
            .val()
            .grad(&out.backward())
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        let plain = Device::flex();
        let f = |p: f32| {
            vals(Gem::new(p, &plain).forward(maps(&plain)))
                .iter()
                .sum::<f32>() as f64
        };
        let h = 1e-2;
        let fd = (f(3.0 + h) - f(3.0 - h)) / (2.0 * h as f64);
        assert!(
            (g as f64 - fd).abs() < 1e-2 * fd.abs().max(1.0),
            "{g} vs {fd}"
        );
    }
}
