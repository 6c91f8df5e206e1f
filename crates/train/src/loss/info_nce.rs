//! InfoNCE as MoCo and C2L compute it: for each query `q` (unit row), the logits are its
//! similarity to its positive key and to every negative of the queue, divided by the
//! temperature; the loss is the softmax cross-entropy with the positive at index 0, averaged
//! over the batch.

use burn::prelude::*;

/// `q`, `k_pos`: `[N, d]` unit rows; `negatives`: `[K, d]`.
pub fn info_nce(
    q: Tensor<2>,
    k_pos: Tensor<2>,
    negatives: Tensor<2>,
    temperature: f64,
) -> Tensor<1> {
    let l_pos = (q.clone() * k_pos).sum_dim(1); // [N, 1]
    let l_neg = q.matmul(negatives.transpose()); // [N, K]
    let logits = Tensor::cat(vec![l_pos, l_neg], 1).div_scalar(temperature);
    // log-sum-exp with the row maximum taken out, for stability.
    let max = logits.clone().max_dim(1).detach();
    let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let n = logits.dims()[0];
    let pos = logits.slice([0..n, 0..1]);
    (lse - pos).mean()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), &Device::flex())
    }

    #[test]
    fn hand_computed_two_queries() {
        // q1 = (1, 0) with positive (1, 0): l_pos = 1; negatives (0, 1), (-1, 0): 0, -1.
        // q2 = (0, 1) with positive (0.6, 0.8): 0.8; negatives: 1, 0.
        // T = 0.5: logits [2, 0, -2] and [1.6, 2, 0].
        let q = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let k = t(&[1.0, 0.0, 0.6, 0.8], [2, 2]);
        let neg = t(&[0.0, 1.0, -1.0, 0.0], [2, 2]);
        let got = info_nce(q, k, neg, 0.5)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0] as f64;
        let ce = |l: [f64; 3]| l.iter().map(|x| x.exp()).sum::<f64>().ln() - l[0];
        let want = (ce([2.0, 0.0, -2.0]) + ce([1.6, 2.0, 0.0])) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn large_logits_stay_finite() {
        // T = 0.001 makes the logits 1000: the stable form gives log(1 + e^-1000) ~ 0.
        let q = t(&[1.0, 0.0], [1, 2]);
        let neg = t(&[0.0, 1.0], [1, 2]);
        let v = info_nce(q.clone(), q, neg, 0.001)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        assert!(v.is_finite() && v.abs() < 1e-6, "{v}");
    }
}
