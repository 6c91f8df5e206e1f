//! Compact binary codes from float descriptors, for a Hamming index beside (or instead of)
//! the exact cosine scan: the signs of a linear projection of the (centred) descriptor.
//!
//! - **Random** (Charikar's SimHash, whose Hamming distance estimates the angle between
//!   descriptors): a seeded Gaussian projection, regenerated from `(dim, bits, seed)`,
//!   which the model card stores, so it needs no weights of its own.
//! - **Learned** (ITQ, fitted after training on the training descriptors by `medret train
//!   metric --binarise itq`): the descriptors' mean and the PCA-then-rotation matrix,
//!   stored in the model card ([`LearnedBinarisation`]), so that the codes keep more of
//!   the descriptors' ranking at the same length.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::cxr_hash::hash_head::pack_code_bytes;

/// A learned binarisation, as the model card stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedBinarisation {
    /// How it was learned (e.g. "itq on 412 training descriptors, 50 iterations").
    pub method: String,
    /// Subtracted from a descriptor before projecting.
    pub mean: Vec<f32>,
    /// `bits x dim`, row-major.
    pub matrix: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignProjection {
    pub dim: usize,
    pub bits: usize,
    /// `bits x dim`, row-major.
    matrix: Vec<f32>,
    /// Subtracted before projecting (zeros for the random projection).
    offset: Vec<f32>,
}

impl SignProjection {
    pub fn new(dim: usize, bits: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let matrix = (0..dim * bits)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        SignProjection {
            dim,
            bits,
            matrix,
            offset: vec![0.0; dim],
        }
    }

    /// The projection of a learned binarisation; `None` when its shapes do not fit `dim`
    /// and `bits`.
    pub fn learned(dim: usize, bits: usize, l: &LearnedBinarisation) -> Option<Self> {
        (l.mean.len() == dim && l.matrix.len() == dim * bits).then(|| SignProjection {
            dim,
            bits,
            matrix: l.matrix.clone(),
            offset: l.mean.clone(),
        })
    }

    /// Packed code bytes (bit `i` is bit `i % 8` of byte `i / 8`) of one descriptor.
    pub fn code(&self, descriptor: &[f32]) -> Vec<u8> {
        assert_eq!(descriptor.len(), self.dim, "descriptor width");
        let h: Vec<f32> = self
            .matrix
            .chunks(self.dim)
            .map(|row| {
                row.iter()
                    .zip(descriptor)
                    .zip(&self.offset)
                    .map(|((a, x), m)| a * (x - m))
                    .sum()
            })
            .collect();
        pack_code_bytes(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hamming(a: &[u8], b: &[u8]) -> u32 {
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    }

    #[test]
    fn codes_follow_angles_and_the_seed() {
        let p = SignProjection::new(3, 256, 9);
        let a = p.code(&[1.0, 0.0, 0.0]);
        let near = p.code(&[0.95, 0.31, 0.0]);
        let ortho = p.code(&[0.0, 1.0, 0.0]);
        let opposite = p.code(&[-1.0, 0.0, 0.0]);
        assert_eq!(a.len(), 32);
        // SimHash: E[hamming] = bits * angle / pi: about 26, 128 and 256 here.
        let (dn, do_, dp) = (
            hamming(&a, &near),
            hamming(&a, &ortho),
            hamming(&a, &opposite),
        );
        assert!(
            dn < 60 && (90..170).contains(&do_) && dp == 256,
            "{dn} {do_} {dp}"
        );
        assert_eq!(
            p.code(&[1.0, 0.0, 0.0]),
            SignProjection::new(3, 256, 9).code(&[1.0, 0.0, 0.0])
        );
        assert_ne!(a, SignProjection::new(3, 256, 10).code(&[1.0, 0.0, 0.0]));
    }

    #[test]
    fn a_learned_projection_centres_then_projects() {
        // Bits: x - 1 > 0, y - 2 > 0, (x - 1) - (y - 2) > 0.
        let l = LearnedBinarisation {
            method: "by hand".into(),
            mean: vec![1.0, 2.0],
            matrix: vec![1.0, 0.0, 0.0, 1.0, 1.0, -1.0],
        };
        let p = SignProjection::learned(2, 3, &l).unwrap();
        // (3, 1): +2, -1, +3 -> bits 0 and 2. (0, 5): -1, +3, -4 -> bit 1.
        assert_eq!(p.code(&[3.0, 1.0]), vec![0b101]);
        assert_eq!(p.code(&[0.0, 5.0]), vec![0b010]);
        assert!(SignProjection::learned(3, 3, &l).is_none(), "wrong width");
        assert!(SignProjection::learned(2, 2, &l).is_none(), "wrong bits");
    }
}
