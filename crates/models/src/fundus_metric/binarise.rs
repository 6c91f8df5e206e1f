//! Compact binary codes from float descriptors, for a Hamming index beside (or instead of)
//! the exact cosine scan: the signs of a seeded Gaussian random projection (Charikar's
//! SimHash, whose Hamming distance estimates the angle between descriptors). The
//! projection is regenerated from `(dim, bits, seed)`, which the model card stores, so it
//! needs no weights of its own.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::cxr_hash::hash_head::pack_code_bytes;

#[derive(Debug, Clone, PartialEq)]
pub struct SignProjection {
    pub dim: usize,
    pub bits: usize,
    /// `bits x dim`, row-major.
    matrix: Vec<f32>,
}

impl SignProjection {
    pub fn new(dim: usize, bits: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let matrix = (0..dim * bits)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        SignProjection { dim, bits, matrix }
    }

    /// Packed code bytes (bit `i` is bit `i % 8` of byte `i / 8`) of one descriptor.
    pub fn code(&self, descriptor: &[f32]) -> Vec<u8> {
        assert_eq!(descriptor.len(), self.dim, "descriptor width");
        let h: Vec<f32> = self
            .matrix
            .chunks(self.dim)
            .map(|row| row.iter().zip(descriptor).map(|(a, b)| a * b).sum())
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
}
