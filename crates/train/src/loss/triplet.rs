//! The baseline metric loss: triplet loss with batch-hard mining (Hermans et al., 2017).
//! For each anchor with a positive and a negative in the batch, the hardest positive (the
//! least similar same-grade image) and the hardest negative (the most similar other-grade
//! image): `[d(a, p) - d(a, n) + margin]_+` with `d = 1 - cos`, averaged over those anchors.

use burn::prelude::*;

use crate::loss::fine_triplet::{PairLoss, similarity};

pub fn batch_hard_triplet_loss(embeddings: Tensor<2>, labels: &[u8], margin: f64) -> PairLoss {
    let b = labels.len();
    let device = embeddings.device();
    let s = similarity(embeddings);
    let (mut pos, mut neg) = (vec![-1e9f32; b * b], vec![-1e9f32; b * b]);
    let mut valid = vec![0.0f32; b];
    for i in 0..b {
        let (mut hp, mut hn) = (false, false);
        for j in (0..b).filter(|&j| j != i) {
            if labels[i] == labels[j] {
                pos[i * b + j] = 0.0;
                hp = true;
            } else {
                neg[i * b + j] = 0.0;
                hn = true;
            }
        }
        valid[i] = if hp && hn { 1.0 } else { 0.0 };
    }
    let anchors = valid.iter().filter(|&&v| v > 0.0).count();
    if anchors == 0 {
        return PairLoss {
            loss: s.sum().mul_scalar(0.0),
            anchors,
        };
    }
    let t =
        |v: Vec<f32>, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, shape), &device);
    // Hardest positive: the smallest similarity, i.e. the largest (-s) among positives.
    let hardest_pos = (s.clone().neg() + t(pos, [b, b])).max_dim(1).neg(); // [B, 1] similarity
    let hardest_neg = (s + t(neg, [b, b])).max_dim(1);
    // d(a,p) - d(a,n) = (1 - s_p) - (1 - s_n) = s_n - s_p.
    let hinge = (hardest_neg - hardest_pos)
        .add_scalar(margin)
        .clamp_min(0.0);
    PairLoss {
        loss: (hinge * t(valid, [b, 1])).sum().div_scalar(anchors as f64),
        anchors,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;

    #[test]
    fn hand_computed_on_four_images() {
        // Unit vectors at angles 0, 60, 90 and 180 degrees; grades 0, 0, 1, 1.
        let a = |deg: f32| [deg.to_radians().cos(), deg.to_radians().sin()];
        let v: Vec<f32> = [0.0, 60.0, 90.0, 180.0]
            .iter()
            .flat_map(|&d| a(d))
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(v, [4, 2]), &Device::flex());
        let got = batch_hard_triplet_loss(x, &[0, 0, 1, 1], 0.2);
        assert_eq!(got.anchors, 4);
        let got = got.loss.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        // cos: s01 = 0.5, s02 = 0, s03 = -1, s12 = cos 30 = 0.866, s13 = -0.5, s23 = 0.
        // Anchor 0: p = 1 (0.5), hardest n = 2 (0): [0 - 0.5 + 0.2]_+ = 0.
        // Anchor 1: p = 0 (0.5), hardest n = 2 (0.866): 0.866 - 0.5 + 0.2 = 0.566.
        // Anchor 2: p = 3 (0), hardest n = 1 (0.866): 1.066.
        // Anchor 3: p = 2 (0), hardest n = 1 (-0.5): [-0.5 - 0 + 0.2]_+ = 0.
        let c30 = 30f64.to_radians().cos();
        let want = ((c30 - 0.5 + 0.2) + (c30 + 0.2)) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
