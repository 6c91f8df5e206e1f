//! The hashing losses on relaxed codes `h` in `(-1, 1)^K` (a batch `[N, K]`):
//!
//! - quantization `mean((|h| - 1)^2)`: every unit pushed to +-1, so that `sign(h)` loses
//!   little;
//! - bit balance `mean_k (mean_n h_k)^2`: each bit +1 on half the images, so every bit
//!   carries information.
//!
//! - bit decorrelation `sum_{a != b} ((H^T H / N)_ab)^2 / (K (K - 1))`: the mean squared
//!   off-diagonal second moment of the bits over the batch. Quantization and balance
//!   alone let whole classes share one code (a classifier after the hash layer is
//!   satisfied by one corner per class, and every bit can still be +1 on half the batch);
//!   bits that must also be uncorrelated cannot all follow the class, so codes spread
//!   within a class (the orthogonality term of SDH, Erin Liong et al., CVPR 2015, and of
//!   many later deep-hashing losses).
//!
//! The total is `L_cls + alpha * L_q + beta * L_b + delta * L_d` (`delta`: `--decorrelation`) (the task adds the
//! classification term).
//!
//! Two deep-hashing losses that DeepHash-pytorch users know replace `L_cls` on the same
//! head (`medret train hash --loss dpsh|csq`):
//!
//! - **DPSH** (Li et al., IJCAI 2016): pairwise likelihood over the batch,
//!   `mean_ij [log(1 + exp(t_ij)) - s_ij t_ij]`, `t_ij = h_i . h_j / 2`, `s_ij = 1` when
//!   images `i` and `j` share a label;
//! - **CSQ** (central similarity quantization, Yuan et al., CVPR 2020): each class has a
//!   hash centre in `{-1, 1}^K` (rows of a Hadamard matrix and their negatives when `K`
//!   is a power of two and there are at most `2K` classes, seeded random signs
//!   otherwise); an image's centre is the sign of the sum of its labels' centres; the
//!   loss is the binary cross-entropy between `(h + 1) / 2` and `(c + 1) / 2`.
//!
//! Both keep `alpha * L_q` as their quantization term (DPSH's `|b - u|^2` and CSQ's
//! `(|h| - 1)^2` are this up to a constant factor) and `beta * L_b`.

use burn::prelude::*;
use burn::tensor::activation::softplus;

pub fn quantization_loss(h: Tensor<2>) -> Tensor<1> {
    (h.abs().sub_scalar(1.0)).powf_scalar(2.0).mean()
}

pub fn bit_balance_loss(h: Tensor<2>) -> Tensor<1> {
    h.mean_dim(0).powf_scalar(2.0).mean()
}

pub fn decorrelation_loss(h: Tensor<2>) -> Tensor<1> {
    let [n, k] = h.dims();
    if k < 2 {
        return h.sum().mul_scalar(0.0);
    }
    let device = h.device();
    let second = h.clone().transpose().matmul(h).div_scalar(n.max(1) as f64);
    let off: Vec<f32> = (0..k * k)
        .map(|i| if i / k == i % k { 0.0 } else { 1.0 })
        .collect();
    let off = Tensor::<2>::from_data(TensorData::new(off, [k, k]), &device);
    (second * off)
        .powf_scalar(2.0)
        .sum()
        .div_scalar((k * (k - 1)) as f64)
}

/// DPSH's pairwise negative log-likelihood. `sim` is `[N, N]` with 1 for pairs that share
/// a label and 0 otherwise (the diagonal included, as in the reference implementation).
pub fn dpsh_loss(h: Tensor<2>, sim: Tensor<2>) -> Tensor<1> {
    let theta = h.clone().matmul(h.transpose()).mul_scalar(0.5);
    (softplus(theta.clone(), 1.0) - sim * theta).mean()
}

/// `[classes, K]` hash centres in `{-1, 1}`: Hadamard rows (Sylvester's construction) and
/// their negatives when `K` is a power of two and `classes <= 2K`, so that any two centres
/// differ in `K/2` bits (or all `K`); otherwise seeded random signs.
pub fn csq_centres(classes: usize, bits: usize, seed: u64) -> Vec<Vec<f32>> {
    if bits.is_power_of_two() && classes <= 2 * bits {
        let mut h = vec![vec![1.0f32]];
        while h.len() < bits {
            let n = h.len();
            let mut next = vec![vec![0.0f32; 2 * n]; 2 * n];
            for i in 0..n {
                for j in 0..n {
                    next[i][j] = h[i][j];
                    next[i][j + n] = h[i][j];
                    next[i + n][j] = h[i][j];
                    next[i + n][j + n] = -h[i][j];
                }
            }
            h = next;
        }
        let negated: Vec<Vec<f32>> = h.iter().map(|r| r.iter().map(|x| -x).collect()).collect();
        h.into_iter().chain(negated).take(classes).collect()
    } else {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        (0..classes)
            .map(|_| {
                (0..bits)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if state >> 63 == 1 { 1.0 } else { -1.0 }
                    })
                    .collect()
            })
            .collect()
    }
}

/// An image's centre from its multi-hot labels: the sign of the sum of its labels'
/// centres, ties to +1 (DeepHash-pytorch breaks them at random; a fixed rule keeps runs
/// reproducible). An unlabelled row gets the first centre.
pub fn csq_targets(multi_hot: &[f32], classes: usize, centres: &[Vec<f32>]) -> Vec<f32> {
    let bits = centres.first().map_or(0, Vec::len);
    multi_hot
        .chunks(classes)
        .flat_map(|row| {
            let mut sum = vec![0.0f32; bits];
            let mut any = false;
            for (c, &y) in row.iter().enumerate() {
                if y > 0.0 {
                    any = true;
                    sum.iter_mut().zip(&centres[c]).for_each(|(s, x)| *s += x);
                }
            }
            if !any {
                sum.clone_from(&centres[0]);
            }
            sum.into_iter().map(|s| if s >= 0.0 { 1.0 } else { -1.0 })
        })
        .collect()
}

/// CSQ's central loss: binary cross-entropy between `(h + 1) / 2` and `(c + 1) / 2`,
/// computed as `softplus` of the logits `atanh(h)`-free form
/// `-[t log p + (1 - t) log(1 - p)]` with `p` clamped away from 0 and 1.
pub fn csq_loss(h: Tensor<2>, centres: Tensor<2>) -> Tensor<1> {
    let p = h.add_scalar(1.0).mul_scalar(0.5).clamp(1e-6, 1.0 - 1e-6);
    let t = centres.add_scalar(1.0).mul_scalar(0.5);
    let one_minus_t = t.clone().neg().add_scalar(1.0);
    let one_minus_p = p.clone().neg().add_scalar(1.0);
    (t * p.log() + one_minus_t * one_minus_p.log()).neg().mean()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
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
    fn decorrelation_hand_computed() {
        // h = [[1, 1, -1], [1, -1, 1]] (N = 2, K = 3): H^T H / 2 off-diagonal entries
        // (0,1) = 0, (0,2) = 0, (1,2) = (-1 - 1) / 2 = -1. Sum of squares over both
        // triangles 2, over K (K - 1) = 6.
        let h = t(&[1.0, 1.0, -1.0, 1.0, -1.0, 1.0], [2, 3]);
        assert!((scalar(decorrelation_loss(h)) - 2.0 / 6.0).abs() < 1e-6);
        // Orthogonal bit columns (a Hadamard pattern) cost nothing; identical ones the most.
        let ortho = t(&[1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0], [4, 2]);
        assert_eq!(scalar(decorrelation_loss(ortho)), 0.0);
        let copy = t(&[1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0], [4, 2]);
        assert!((scalar(decorrelation_loss(copy)) - 1.0).abs() < 1e-6);
        // One bit: nothing to decorrelate.
        assert_eq!(scalar(decorrelation_loss(t(&[0.3, -0.2], [2, 1]))), 0.0);
    }

    #[test]
    fn dpsh_hand_computed() {
        // h1 = [1, 0], h2 = [0, 1]: theta = 0.5 * [[1, 0], [0, 1]]; sim = identity (the
        // two share no label). Terms: diagonal softplus(0.5) - 0.5, off-diagonal
        // softplus(0) = ln 2. Mean of four.
        let h = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let sim = t(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let sp = (1.0f32 + 0.5f32.exp()).ln();
        let want = (2.0 * (sp - 0.5) + 2.0 * 2f32.ln()) / 4.0;
        assert!((scalar(dpsh_loss(h.clone(), sim)) - want).abs() < 1e-6);
        // Similar pairs pulled together cost less than the same pairs called dissimilar.
        let same = t(&[1.0, 1.0, 1.0, 1.0], [2, 2]);
        let h2 = t(&[1.0, 1.0, 1.0, 1.0], [2, 2]);
        assert!(scalar(dpsh_loss(h2.clone(), same)) < scalar(dpsh_loss(h2, t(&[0.0; 4], [2, 2]))));
    }

    #[test]
    fn csq_centres_targets_and_loss() {
        // Hadamard centres for K = 8 and 16 classes: rows and negatives, pairwise 4 or 8
        // bits apart, never equal.
        let c = csq_centres(16, 8, 0);
        assert_eq!(c.len(), 16);
        for i in 0..16 {
            for j in 0..i {
                let d = c[i].iter().zip(&c[j]).filter(|(a, b)| a != b).count();
                assert!(d == 4 || d == 8, "centres {i}, {j}: {d} bits apart");
            }
        }
        // Not a power of two: seeded random signs, reproducible.
        let r = csq_centres(3, 12, 5);
        assert_eq!(r, csq_centres(3, 12, 5));
        assert!(r.iter().flatten().all(|x| *x == 1.0 || *x == -1.0));
        // Multi-label: the sign of the sum, ties to +1.
        let cs = vec![
            vec![1.0, 1.0, -1.0],
            vec![1.0, -1.0, -1.0],
            vec![-1.0, 1.0, 1.0],
        ];
        let tg = csq_targets(&[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], 3, &cs);
        assert_eq!(tg, vec![1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0]);
        // BCE: h = 0 gives p = 1/2 for every bit: ln 2 whatever the centre.
        let l = scalar(csq_loss(t(&[0.0, 0.0], [1, 2]), t(&[1.0, -1.0], [1, 2])));
        assert!((l - 2f32.ln()).abs() < 1e-6);
        // h = 0.5 towards centre +1: p = 0.75, loss -ln 0.75.
        let l = scalar(csq_loss(t(&[0.5], [1, 1]), t(&[1.0], [1, 1])));
        assert!((l + 0.75f32.ln()).abs() < 1e-6);
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
