//! Mirror attention (Fang et al., BSPC 2023, 104277): fundus photographs are nearly
//! symmetric under left/right and up/down flips, and small lesions (microaneurysms,
//! haemorrhages) break that symmetry. Each mirrored view's feature maps, flipped back so
//! positions correspond, query the original view's maps in a non-local cross-attention:
//!
//! - `Q = ReLU(BN(theta(F_view)))`, `K = ReLU(BN(phi(F)))`, `V = g(F)`, all 1x1
//!   convolutions to an inner width `C / 2`;
//! - `A = softmax_j(Q_i . K_j / sqrt(C / 2))` over the `h w` positions, each row a convex
//!   combination;
//! - `y = W(V A^T) + F`, `W` a 1x1 convolution initialised to zero, so that training starts
//!   from the plain backbone.
//!
//! The block takes any `B x C x H x W` maps, so it plugs into DenseNet-121, the small
//! DenseNet or another backbone. Departures from the authors' development code (FundusDR,
//! `nets/MANet.py`), which computes `bmm(g, A)` without the transpose (so an output is not a
//! convex combination of values) and feeds the original view where the vertical one is
//! meant: this block follows the paper.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorAttentionConfig {
    pub channels: usize,
    /// Inner width; `None` is `channels / 2`.
    pub inner: Option<usize>,
}

impl MirrorAttentionConfig {
    pub fn new(channels: usize) -> Self {
        MirrorAttentionConfig {
            channels,
            inner: None,
        }
    }

    fn inner(&self) -> usize {
        self.inner.unwrap_or(self.channels / 2).max(1)
    }

    pub fn init(&self, device: &Device) -> MirrorAttention {
        let (c, i) = (self.channels, self.inner());
        let conv = |a: usize, b: usize| Conv2dConfig::new([a, b], [1, 1]).init(device);
        MirrorAttention {
            theta: conv(c, i),
            theta_bn: BatchNormConfig::new(i).init(device),
            phi: conv(c, i),
            phi_bn: BatchNormConfig::new(i).init(device),
            g: conv(c, i),
            w: Conv2dConfig::new([i, c], [1, 1])
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct MirrorAttention {
    pub theta: Conv2d,
    pub theta_bn: BatchNorm,
    pub phi: Conv2d,
    pub phi_bn: BatchNorm,
    pub g: Conv2d,
    pub w: Conv2d,
}

impl MirrorAttention {
    /// `y` (`B x C x H x W`) and the attention `A` (`B x HW x HW`, rows over key positions).
    pub fn forward_with_attention(
        &self,
        view: Tensor<4>,
        original: Tensor<4>,
    ) -> (Tensor<4>, Tensor<3>) {
        let [b, c, h, w] = original.dims();
        let n = h * w;
        let q = relu(self.theta_bn.forward(self.theta.forward(view)));
        let inner = q.dims()[1];
        let q = q.reshape([b, inner, n]).swap_dims(1, 2); // [B, N, C']
        let k =
            relu(self.phi_bn.forward(self.phi.forward(original.clone()))).reshape([b, inner, n]);
        let a = softmax(q.matmul(k).div_scalar((inner as f64).sqrt()), 2); // [B, N, N]
        let v = self.g.forward(original.clone()).reshape([b, inner, n]);
        let out = v
            .matmul(a.clone().swap_dims(1, 2))
            .reshape([b, inner, h, w]);
        debug_assert_eq!(c, self.w.weight.dims()[0]);
        (self.w.forward(out) + original, a)
    }

    pub fn forward(&self, view: Tensor<4>, original: Tensor<4>) -> Tensor<4> {
        self.forward_with_attention(view, original).0
    }
}

/// The input, its horizontal flip and its vertical flip.
pub fn mirror_views(x: Tensor<4>) -> [Tensor<4>; 3] {
    [x.clone(), x.clone().flip([3]), x.flip([2])]
}

/// Maps of the horizontally flipped view, flipped back so positions match the original.
pub fn unflip_h(f: Tensor<4>) -> Tensor<4> {
    f.flip([3])
}

/// Maps of the vertically flipped view, flipped back.
pub fn unflip_v(f: Tensor<4>) -> Tensor<4> {
    f.flip([2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::AvgPool2dConfig;

    fn v<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn flipped_back_views_line_up_with_the_original() {
        // A feature at (row 1, col 6) of an 8x8 image. Through a translation-equivariant
        // "backbone" (2x2 average pooling), the flipped views' maps, flipped back, put it
        // where the original's maps do: (0, 3).
        let dev = Device::flex();
        let mut px = vec![0.0f32; 64];
        px[8 + 6] = 4.0;
        let x = Tensor::<4>::from_data(TensorData::new(px, [1, 1, 8, 8]), &dev);
        let pool = AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let [o, h, vv] = mirror_views(x);
        let (fo, fh, fv) = (
            pool.forward(o),
            unflip_h(pool.forward(h)),
            unflip_v(pool.forward(vv)),
        );
        let want = {
            let mut m = vec![0.0f32; 16];
            m[3] = 1.0;
            m
        };
        assert_eq!(v(fo), want);
        assert_eq!(v(fh), want);
        assert_eq!(v(fv), want);
    }

    #[test]
    fn zero_initialised_block_is_the_identity_and_rows_are_convex() {
        let dev = Device::flex();
        let block = MirrorAttentionConfig::new(6).init(&dev);
        let f = Tensor::<4>::random(
            [2, 6, 3, 4],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let view = Tensor::<4>::random(
            [2, 6, 3, 4],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let (y, a) = block.forward_with_attention(view, f.clone());
        assert_eq!(v(y), v(f), "W starts at zero: y = F");
        assert_eq!(a.dims(), [2, 12, 12]);
        let rows = v(a.clone().sum_dim(2));
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5), "{rows:?}");
        assert!(v(a).iter().all(|&x| x >= 0.0));
    }

    #[test]
    fn output_is_the_attention_weighted_value_hand_computed() {
        // C = 2, inner 1, two positions. Set theta, phi, g and W by hand (BN in eval with
        // unit statistics is nearly the identity), so that over the two positions
        // Q = (1, 0), K = (0, 2) and V = (3, 5): A_0 = softmax(0, 2), A_1 = softmax(0, 0).
        let dev = Device::flex();
        let mut block = MirrorAttentionConfig {
            channels: 2,
            inner: Some(1),
        }
        .init(&dev);
        let set = |c: &mut Conv2d, w: Vec<f32>, shape: [usize; 4]| {
            c.weight = burn::module::Param::from_data(TensorData::new(w, shape), &dev);
            c.bias = Some(burn::module::Param::from_data(
                TensorData::new(vec![0.0f32; shape[0]], [shape[0]]),
                &dev,
            ));
        };
        set(&mut block.theta, vec![1.0, 0.0], [1, 2, 1, 1]);
        set(&mut block.phi, vec![1.0, 0.0], [1, 2, 1, 1]);
        set(&mut block.g, vec![1.0, 1.0], [1, 2, 1, 1]);
        set(&mut block.w, vec![1.0, 0.0], [2, 1, 1, 1]);
        let block = block.valid();
        // view channel 0 = (1, 0) over positions; original channels: (0, 2) and (3, 3).
        let view = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 9.0, 9.0], [1, 2, 1, 2]),
            &dev,
        );
        let orig = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 2.0, 3.0, 3.0], [1, 2, 1, 2]),
            &dev,
        );
        let (y, a) = block.forward_with_attention(view, orig);
        // Q and K are each divided by sqrt(1 + eps) in BN, so the logit is 2 / (1 + eps).
        let e = (2.0f32 / (1.0 + 1e-5f32)).exp();
        let a0 = [1.0 / (1.0 + e), e / (1.0 + e)];
        let av = v(a);
        assert!(
            (av[0] - a0[0]).abs() < 1e-4
                && (av[1] - a0[1]).abs() < 1e-4
                && (av[2] - 0.5).abs() < 1e-5,
            "{av:?}"
        );
        let out0 = a0[0] * 3.0 + a0[1] * 5.0;
        let yv = v(y);
        // y channel 0 = W (out) + F channel 0; channel 1 untouched (W row 2 is zero).
        assert!(
            (yv[0] - (out0 + 0.0)).abs() < 1e-3 && (yv[1] - (4.0 + 2.0)).abs() < 1e-3,
            "{yv:?}"
        );
        assert_eq!(&yv[2..], &[3.0, 3.0]);
    }
}
