//! The hashing head of the fusion method: pooled features -> FC (ReLU) -> hash layer
//! (K tanh units, the relaxed codes `h` in `(-1, 1)^K`) -> classifier on `h`. The hash
//! layer sits between the fully connected layer and the classifier, so the codes must
//! carry what the classifier needs.
//!
//! With `norm` (every model trained since codes were found to collapse), the hash layer's
//! pre-activations are batch-normalised before the tanh. Pooled DenseNet features after a
//! ReLU share a large common component, so without it `W x + b` has the same sign for
//! every image from the first epoch on (measured: 48 of 48 bits constant over 538 real
//! chest films after one epoch), the gradients of the saturated units vanish, and no loss
//! term on the codes can pull them apart again. Centring each unit over the batch puts
//! each bit's threshold at the data's median from the first step (docs/cxr-method.md).

use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, tanh};
use serde::{Deserialize, Serialize};

/// Running-statistics momentum of the hash layer's batch normalisation.
pub const HASH_NORM_MOMENTUM: f64 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashHeadConfig {
    pub in_dim: usize,
    /// Width of the fully connected layer before the hash layer.
    pub fc_dim: usize,
    /// Code length K.
    pub bits: usize,
    pub classes: usize,
    /// Batch normalisation of the hash layer's pre-activations.
    #[serde(default)]
    pub norm: bool,
}

impl HashHeadConfig {
    pub fn init(&self, device: &Device) -> HashHead {
        HashHead {
            fc: LinearConfig::new(self.in_dim, self.fc_dim).init(device),
            hash: LinearConfig::new(self.fc_dim, self.bits).init(device),
            // Momentum 0.3, not 0.1: search uses the running statistics, and a short
            // training (a few dozen steps) otherwise leaves them far from the data's
            // mean, which puts every code on one side of every threshold again
            // (0.9^16 = 19% of the offset left after 16 steps; 0.7^16 = 0.3%).
            norm: self.norm.then(|| {
                BatchNormConfig::new(self.bits)
                    .with_momentum(HASH_NORM_MOMENTUM)
                    .init(device)
            }),
            classifier: LinearConfig::new(self.bits, self.classes).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct HashHead {
    pub fc: Linear,
    pub hash: Linear,
    pub norm: Option<BatchNorm>,
    pub classifier: Linear,
}

impl HashHead {
    /// `(h, logits)`: relaxed codes `[N, K]` and class scores `[N, classes]`.
    pub fn forward(&self, features: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let z = self.hash.forward(relu(self.fc.forward(features)));
        let z = match &self.norm {
            // BatchNorm wants [N, C, ...]: one trailing unit axis.
            Some(bn) => bn.forward(z.unsqueeze_dim::<3>(2)).squeeze_dim::<2>(2),
            None => z,
        };
        let h = tanh(z);
        let logits = self.classifier.forward(h.clone());
        (h, logits)
    }
}

/// Packs the signs of relaxed codes (`>= 0` is bit 1) into bytes: bit `i` is bit `i % 8`
/// of byte `i / 8`, the order the index and the store use.
pub fn pack_code_bytes(h: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; h.len().div_ceil(8)];
    for (i, &v) in h.iter().enumerate() {
        if v >= 0.0 {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_follows_the_index_bit_order() {
        let mut h = vec![-0.5f32; 16];
        h[0] = 0.9; // byte 0 bit 0
        h[9] = 0.1; // byte 1 bit 1
        h[15] = 0.0; // zero counts as +1
        assert_eq!(pack_code_bytes(&h), vec![0b0000_0001, 0b1000_0010]);
        let words = medret_eval_free_pack(&pack_code_bytes(&h));
        assert_eq!(words, 0b1000_0010_0000_0001);
    }

    // The eval crate reads bytes as little-endian u64 words; check the same here without
    // depending on it.
    fn medret_eval_free_pack(b: &[u8]) -> u64 {
        b.iter()
            .enumerate()
            .fold(0u64, |w, (i, &x)| w | (x as u64) << (8 * i))
    }

    #[test]
    fn shapes_and_range() {
        let dev = Device::flex();
        let head = HashHeadConfig {
            in_dim: 6,
            fc_dim: 5,
            bits: 16,
            classes: 3,
            norm: false,
        }
        .init(&dev);
        let x = Tensor::<2>::random([4, 6], burn::tensor::Distribution::Normal(0.0, 3.0), &dev);
        let (h, logits) = head.forward(x);
        assert_eq!(h.dims(), [4, 16]);
        assert_eq!(logits.dims(), [4, 3]);
        let v = h.into_data().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.abs() < 1.0));
    }
}
