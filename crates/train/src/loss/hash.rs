//! The hashing losses on relaxed codes `h` in `(-1, 1)^K` (a batch `[N, K]`):
//!
//! - quantization `mean((|h| - 1)^2)`: every unit pushed to +-1, so that `sign(h)` loses
//!   little;
//! - bit balance `mean_k (mean_n h_k)^2`: each bit +1 on half the images, so every bit
//!   carries information.
//!
//! The total is `L_cls + alpha * L_q + beta * L_b` (the task adds the classification term).

use burn::prelude::*;

pub fn quantization_loss(h: Tensor<2>) -> Tensor<1> {
    (h.abs().sub_scalar(1.0)).powf_scalar(2.0).mean()
}

pub fn bit_balance_loss(h: Tensor<2>) -> Tensor<1> {
    h.mean_dim(0).powf_scalar(2.0).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), &Device::flex())
    }

    fn scalar(x: Tensor<1>) -> f32 {
        x.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn hand_computed() {
        // h = [[0.5, -1.0], [0.0, 0.8]]
        // quantization: ((0.5-1)^2 + 0 + (0-1)^2 + (0.8-1)^2) / 4 = (0.25 + 1 + 0.04) / 4
        // balance: column means 0.25 and -0.1: (0.0625 + 0.01) / 2
        let h = t(&[0.5, -1.0, 0.0, 0.8], [2, 2]);
        assert!((scalar(quantization_loss(h.clone())) - 1.29 / 4.0).abs() < 1e-6);
        assert!((scalar(bit_balance_loss(h)) - 0.0725 / 2.0).abs() < 1e-6);
        // Perfect codes: no quantization loss; balanced bits: no balance loss.
        let b = t(&[1.0, -1.0, -1.0, 1.0], [2, 2]);
        assert_eq!(scalar(quantization_loss(b.clone())), 0.0);
        assert_eq!(scalar(bit_balance_loss(b)), 0.0);
    }

    #[test]
    fn gradients_point_to_the_targets() {
        // d/dh of (|h| - 1)^2 / n at h = 0.5 is 2 (0.5 - 1) / 4 = -0.25: pushes h up to 1.
        let dev = Device::flex().autodiff();
        let h = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -0.5, 2.0, 0.0], [2, 2]), &dev)
            .require_grad();
        let g = quantization_loss(h.clone()).backward();
        let g = h.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!(
            (g[0] + 0.25).abs() < 1e-6 && (g[1] - 0.25).abs() < 1e-6,
            "{g:?}"
        );
        assert!((g[2] - 0.5).abs() < 1e-6, "{g:?}"); // 2 (2 - 1) / 4, pulls |h| down
    }
}
