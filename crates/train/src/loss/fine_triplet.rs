//! The fine triplet loss of the fundus method (Fang et al., BSPC 2023): a pair-weighted
//! triplet loss in the circle-loss form (Sun et al., 2020) over all in-batch pairs, whose
//! positive terms are weighted by a relevance degree learned without labels.
//!
//! For an anchor `i` with positives `P(i)` (same DR grade) and negatives `N(i)`, cosine
//! similarities `s`, margin `m` and scale `gamma`:
//!
//! `L_i = log(1 + sum_{n in N(i)} exp(gamma a_n (s_n - m)) * sum_{p in P(i)} w_p exp(-gamma a_p (s_p - (1 - m))))`
//!
//! with `a_p = [1 + m - s_p]_+` and `a_n = [s_n + m]_+` held constant (as circle loss does),
//! and `w_p = 1` for plain circle loss. The loss is the mean of `L_i` over anchors that have
//! both a positive and a negative; a batch where no anchor has both gives 0 and is reported
//! by [`PairLoss::anchors`] being 0, so the trainer can say so.
//!
//! The relevance degree (our reading of the paper, whose text gives no formula): image `j`'s
//! two mirror halves of the descriptor (`GeM(y_h)` and `GeM(y_v)`) agree by
//! `r_j = (1 + cos) / 2` in `[0, 1]`; for anchor `i`, positive `j` weighs
//! `w_ij = r_j / mean_{p in P(i)} r_p`, so each anchor's positive weights average 1, and
//! positives whose halves agree (clear, typical images) are pulled harder than ambiguous
//! ones. The weights carry no gradient.

use burn::prelude::*;

/// The loss and the number of anchors that contributed.
pub struct PairLoss {
    pub loss: Tensor<1>,
    pub anchors: usize,
}

/// Pairwise cosine similarities of unit rows `[B, d]`.
pub fn similarity(x: Tensor<2>) -> Tensor<2> {
    x.clone().matmul(x.transpose())
}

/// The circle-form loss with optional positive weights `weights` (`[B, B]`, as
/// [`relevance_weights`] gives them; `None`: circle loss). `labels` are the grades.
///
/// Everything stays on the embeddings' device: the masks come from the labels (host data,
/// uploaded once), the constant factors from the detached similarities, so a training step
/// on a GPU reads nothing back until the logged loss.
pub fn fine_triplet_loss(
    embeddings: Tensor<2>,
    labels: &[u8],
    weights: Option<Tensor<2>>,
    margin: f64,
    gamma: f64,
) -> PairLoss {
    let b = labels.len();
    let device = embeddings.device();
    let s = similarity(embeddings);
    let (pos, neg, valid) = masks(labels);
    let anchors = valid.iter().filter(|&&v| v > 0.0).count();
    if anchors == 0 {
        return PairLoss {
            loss: s.sum().mul_scalar(0.0),
            anchors,
        };
    }
    let t =
        |v: Vec<f32>, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, shape), &device);
    let (pm, nm) = (t(pos, [b, b]), t(neg, [b, b]));
    // The circle-loss factors a_p = [1 + m - s]_+ and a_n = [s + m]_+, held constant.
    let sd = s.clone().detach();
    let a_p = sd.clone().neg().add_scalar(1.0 + margin).clamp_min(0.0);
    let a_n = sd.add_scalar(margin).clamp_min(0.0);
    let coef =
        pm.clone() * a_p.clone().mul_scalar(-gamma) + nm.clone() * a_n.clone().mul_scalar(gamma);
    let mut shift = pm.clone() * a_p.mul_scalar(gamma * (1.0 - margin))
        + nm.clone() * a_n.mul_scalar(-gamma * margin);
    if let Some(w) = weights {
        shift = shift + w.detach().clamp_min(1e-12).log() * pm.clone();
    }
    let logits = s * coef + shift;
    // Masked log-sum-exp per row: excluded entries get a large negative constant.
    let excluded = |m: Tensor<2>| m.neg().add_scalar(1.0).mul_scalar(-1e9);
    let lse = |l: Tensor<2>| {
        let max = l.clone().max_dim(1).detach();
        (l - max.clone()).exp().sum_dim(1).log() + max
    };
    let lp = lse(logits.clone() + excluded(pm));
    let ln = lse(logits + excluded(nm));
    // softplus(lp + ln) = log(1 + exp(lp) exp(ln)), stable.
    let z = lp + ln;
    let softplus = z.clone().clamp_min(0.0) + z.abs().neg().exp().add_scalar(1.0).log();
    PairLoss {
        loss: (softplus * t(valid, [b, 1]))
            .sum()
            .div_scalar(anchors as f64),
        anchors,
    }
}

/// Positive and negative pair masks (`[B, B]`, the diagonal in neither) and the anchors
/// that have both (`[B]`), from the labels alone.
fn masks(labels: &[u8]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let b = labels.len();
    let (mut pos, mut neg, mut valid) = (vec![0f32; b * b], vec![0f32; b * b], vec![0f32; b]);
    for i in 0..b {
        let (mut hp, mut hn) = (false, false);
        for j in (0..b).filter(|&j| j != i) {
            if labels[i] == labels[j] {
                pos[i * b + j] = 1.0;
                hp = true;
            } else {
                neg[i * b + j] = 1.0;
                hn = true;
            }
        }
        valid[i] = if hp && hn { 1.0 } else { 0.0 };
    }
    (pos, neg, valid)
}

/// The positive weights `w_ij = r_j / mean_{p in P(i)} r_p` from agreements `r` (`[B]`,
/// in `[0, 1]`), as a `[B, B]` tensor on `r`'s device; non-positive pairs, and anchors
/// whose positives all agree 0, get 1.
pub fn relevance_weights(r: Tensor<1>, labels: &[u8]) -> Tensor<2> {
    let b = labels.len();
    let device = r.device();
    let (pos, _, _) = masks(labels);
    let count: Vec<f32> = pos.chunks(b).map(|row| row.iter().sum()).collect();
    let pm = Tensor::<2>::from_data(TensorData::new(pos, [b, b]), &device);
    let count = Tensor::<2>::from_data(TensorData::new(count, [b, 1]), &device);
    let r = r.detach();
    let mean = pm.clone().matmul(r.clone().reshape([b, 1])) / count.clamp_min(1.0);
    let degenerate = mean.clone().lower_equal_elem(0.0);
    let ratio = (r.reshape([1, b]) / mean.clamp_min(1e-30)).mask_fill(degenerate, 1.0);
    pm.clone() * ratio + pm.neg().add_scalar(1.0)
}

/// `r = (1 + cos(a, b)) / 2` per row of two `[B, d]` halves, on their device.
pub fn agreement(h: Tensor<2>, v: Tensor<2>) -> Tensor<1> {
    use medret_models::ops::l2_normalise as n;
    let [b, _] = h.dims();
    (n(h) * n(v))
        .sum_dim(1)
        .detach()
        .reshape([b])
        .add_scalar(1.0)
        .div_scalar(2.0)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;

    fn unit(v: &[[f32; 2]]) -> Tensor<2> {
        let flat: Vec<f32> = v
            .iter()
            .flat_map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect();
        Tensor::from_data(TensorData::new(flat, [v.len(), 2]), &Device::flex())
    }

    /// The formula written out in f64 for one batch, for comparison.
    fn reference(s: &[Vec<f64>], labels: &[u8], w: Option<&[f32]>, m: f64, g: f64) -> f64 {
        let b = labels.len();
        let (mut total, mut count) = (0.0, 0);
        for i in 0..b {
            let (mut sp, mut sn) = (0.0, 0.0);
            let (mut hp, mut hn) = (false, false);
            for j in 0..b {
                if i == j {
                    continue;
                }
                if labels[i] == labels[j] {
                    let a = (1.0 + m - s[i][j]).max(0.0);
                    let wij = w.map_or(1.0, |w| w[i * b + j] as f64);
                    sp += wij * (-g * a * (s[i][j] - (1.0 - m))).exp();
                    hp = true;
                } else {
                    let a = (s[i][j] + m).max(0.0);
                    sn += (g * a * (s[i][j] - m)).exp();
                    hn = true;
                }
            }
            if hp && hn {
                total += (1.0 + sp * sn).ln();
                count += 1;
            }
        }
        total / count as f64
    }

    fn sims(v: &[[f32; 2]]) -> Vec<Vec<f64>> {
        let u: Vec<[f64; 2]> = v
            .iter()
            .map(|r| {
                let n = ((r[0] * r[0] + r[1] * r[1]) as f64).sqrt();
                [r[0] as f64 / n, r[1] as f64 / n]
            })
            .collect();
        u.iter()
            .map(|a| u.iter().map(|b| a[0] * b[0] + a[1] * b[1]).collect())
            .collect()
    }

    const BATCH: [[f32; 2]; 4] = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]];
    const GRADES: [u8; 4] = [0, 0, 2, 2];

    #[test]
    fn circle_and_fine_forms_hand_computed_on_four_images() {
        // Four images, grades 0, 0, 2, 2: every anchor has one positive and two negatives.
        let got = fine_triplet_loss(unit(&BATCH), &GRADES, None, 0.25, 8.0);
        assert_eq!(got.anchors, 4);
        let got = got.loss.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        let want = reference(&sims(&BATCH), &GRADES, None, 0.25, 8.0);
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
        // Anchor 0 by hand: s01 = 0.8, a_p = 0.45; s02 = 0, a_n = 0.25; s03 = -0.6, a_n = 0.
        // L_0 = log(1 + exp(-8 * 0.45 * 0.05) * (exp(8 * 0.25 * -0.25) + exp(0))).
        let l0 = (1.0 + (-8.0f64 * 0.45 * 0.05).exp() * ((8.0f64 * 0.25 * -0.25).exp() + 1.0)).ln();
        let s = sims(&BATCH);
        let only0 = {
            let (mut sp, mut sn) = (0.0, 0.0);
            sp += (-8.0 * (1.25 - s[0][1]) * (s[0][1] - 0.75)).exp();
            for j in [2, 3] {
                sn += (8.0 * (s[0][j] + 0.25f64).max(0.0) * (s[0][j] - 0.25)).exp();
            }
            (1.0 + sp * sn).ln()
        };
        assert!((l0 - only0).abs() < 1e-6, "{l0} vs {only0}");
        // Weighted: positive weights change the value as the formula says.
        let w = relevance_weights(r(&[0.9, 0.3, 0.5, 0.5]), &GRADES);
        let got = fine_triplet_loss(unit(&BATCH), &GRADES, Some(w.clone()), 0.25, 8.0)
            .loss
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0] as f64;
        let w = w.into_data().try_into_vec::<f32>().unwrap();
        let want = reference(&sims(&BATCH), &GRADES, Some(&w), 0.25, 8.0);
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
    }

    fn r(v: &[f32]) -> Tensor<1> {
        Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    /// An anchor whose positives all agree 0 keeps weight 1 (no division by zero), and a
    /// lone image (no positive) has only weights of 1.
    #[test]
    fn degenerate_agreements_weigh_one() {
        let w = relevance_weights(r(&[0.0, 0.0, 0.7]), &[1, 1, 2])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(w, vec![1.0; 9]);
    }

    #[test]
    fn relevance_weights_hand_computed() {
        // Anchor 0's only positive is 1: weight r_1 / r_1 = 1. With three of a grade, anchor
        // 0's positives 1 and 2 (r 0.2 and 0.6, mean 0.4) weigh 0.5 and 1.5.
        let w = relevance_weights(r(&[0.9, 0.2, 0.6, 0.5]), &[1, 1, 1, 3])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(
            (w[1] - 0.5).abs() < 1e-6 && (w[2] - 1.5).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!(w[3], 1.0, "negatives are not weighted");
        // Anchor 1's positives 0 and 2: r 0.9 and 0.6, mean 0.75.
        assert!(
            (w[4] - 1.2).abs() < 1e-6 && (w[6] - 0.8).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn a_single_grade_batch_has_no_negatives() {
        let got = fine_triplet_loss(unit(&BATCH), &[1, 1, 1, 1], None, 0.25, 8.0);
        assert_eq!(got.anchors, 0);
        assert_eq!(got.loss.into_data().try_to_vec::<f32>().unwrap()[0], 0.0);
    }

    /// The loss in f64 with the circle factors `a` taken from `s_a` and the exponents from
    /// `s`: the function whose gradient the loss defines (the factors are constants).
    fn reference_fixed(s: &[Vec<f64>], s_a: &[Vec<f64>], labels: &[u8], m: f64, g: f64) -> f64 {
        let b = labels.len();
        let mut total = 0.0;
        for i in 0..b {
            let (mut sp, mut sn) = (0.0, 0.0);
            for j in (0..b).filter(|&j| j != i) {
                if labels[i] == labels[j] {
                    sp += (-g * (1.0 + m - s_a[i][j]).max(0.0) * (s[i][j] - (1.0 - m))).exp();
                } else {
                    sn += (g * (s_a[i][j] + m).max(0.0) * (s[i][j] - m)).exp();
                }
            }
            total += (1.0 + sp * sn).ln();
        }
        total / b as f64
    }

    fn sims_raw(v: &[f32]) -> Vec<Vec<f64>> {
        let rows: Vec<[f32; 2]> = v.chunks(2).map(|c| [c[0], c[1]]).collect();
        sims(&rows)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::flex().autodiff();
        let raw = [0.9f32, 0.1, 0.7, 0.5, 0.1, 0.9, -0.4, 0.8];
        let x = Tensor::<2>::from_data(TensorData::new(raw.to_vec(), [4, 2]), &dev).require_grad();
        let loss = fine_triplet_loss(normalise(x.clone()), &GRADES, None, 0.25, 8.0).loss;
        let g = x
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let s_a = sims_raw(&raw);
        let f = |v: &[f32]| reference_fixed(&sims_raw(v), &s_a, &GRADES, 0.25, 8.0);
        for k in 0..8 {
            let h = 1e-3f32;
            let (mut p, mut m) = (raw, raw);
            p[k] += h;
            m[k] -= h;
            let fd = (f(&p) - f(&m)) / (2.0 * h as f64);
            assert!(
                (g[k] as f64 - fd).abs() < 2e-3 + 1e-2 * fd.abs(),
                "coordinate {k}: {} vs {fd}",
                g[k]
            );
        }
    }

    pub(super) fn normalise(x: Tensor<2>) -> Tensor<2> {
        medret_models::ops::l2_normalise(x)
    }
}
