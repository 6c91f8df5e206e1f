//! Whether a set of binary codes uses its bits: a hashing model whose codes collapse onto
//! a few values ranks by "same code" only, and Hamming ranking degenerates into ties
//! ordered by whatever comes first.
//!
//! For `n` codes of `K` bits, with `c_k` the number of codes whose bit `k` is 1 and
//! `p_k = c_k / n`:
//! - `distinct`: how many different codes there are;
//! - `skewed_bits`: bits with `p_k` outside `[0.05, 0.95]` (nearly constant: they tell
//!   almost no two images apart); `constant_bits`: `p_k` exactly 0 or 1;
//! - `mean_pairwise_hamming`: the mean Hamming distance over the `n (n - 1) / 2` pairs,
//!   exactly `sum_k c_k (n - c_k) / (n (n - 1) / 2)` (each bit separates `c_k (n - c_k)`
//!   pairs); `K / 2` for independent balanced bits, 0 when every code is the same;
//! - `mean_bit_entropy`: the mean over bits of `H(p_k)` in bits (1 for a balanced bit);
//! - `code_entropy`: the entropy of the empirical distribution of whole codes, in bits
//!   (at most `log2 n`, reached when every code is distinct).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The bit-mean band outside which a bit counts as skewed.
pub const SKEW_BAND: (f64, f64) = (0.05, 0.95);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeHealth {
    pub codes: usize,
    pub bits: usize,
    pub distinct: usize,
    /// The largest number of codes that share one value.
    pub largest_group: usize,
    pub skewed_bits: usize,
    pub constant_bits: usize,
    pub mean_pairwise_hamming: f64,
    pub mean_bit_entropy: f64,
    pub code_entropy: f64,
}

impl CodeHealth {
    /// Healthy by the bar `docs/evaluation.md` sets: at least half the codes distinct and
    /// no constant bit.
    pub fn is_healthy(&self) -> bool {
        self.codes > 0 && 2 * self.distinct >= self.codes && self.constant_bits == 0
    }

    /// One line for logs and `index info`.
    pub fn summary(&self) -> String {
        format!(
            "{} distinct of {} codes (largest group {}), {} of {} bits outside [{}, {}] ({} constant), mean pairwise Hamming {:.2}, mean bit entropy {:.3}, code entropy {:.2} bits",
            self.distinct,
            self.codes,
            self.largest_group,
            self.skewed_bits,
            self.bits,
            SKEW_BAND.0,
            SKEW_BAND.1,
            self.constant_bits,
            self.mean_pairwise_hamming,
            self.mean_bit_entropy,
            self.code_entropy
        )
    }
}

fn entropy2(p: f64) -> f64 {
    let h = |x: f64| if x > 0.0 { -x * x.log2() } else { 0.0 };
    h(p) + h(1.0 - p)
}

/// The health of `codes` (packed as [`crate::codes::pack_signs`] packs them), `bits` long.
pub fn code_health(codes: &[Vec<u64>], bits: usize) -> CodeHealth {
    let n = codes.len();
    let mut ones = vec![0usize; bits];
    let mut groups: HashMap<&[u64], usize> = HashMap::new();
    for c in codes {
        for (k, count) in ones.iter_mut().enumerate() {
            if let Some(w) = c.get(k / 64) {
                *count += ((w >> (k % 64)) & 1) as usize;
            }
        }
        *groups.entry(c.as_slice()).or_default() += 1;
    }
    let (mut skewed, mut constant, mut separated, mut entropy) = (0, 0, 0f64, 0f64);
    for &c in &ones {
        let p = if n == 0 { 0.0 } else { c as f64 / n as f64 };
        if !(SKEW_BAND.0..=SKEW_BAND.1).contains(&p) {
            skewed += 1;
        }
        if c == 0 || c == n {
            constant += 1;
        }
        separated += (c * (n - c)) as f64;
        entropy += entropy2(p);
    }
    let pairs = (n * n.saturating_sub(1)) as f64 / 2.0;
    let code_entropy = groups
        .values()
        .map(|&g| {
            let p = g as f64 / n as f64;
            -p * p.log2()
        })
        .sum::<f64>()
        .max(0.0);
    CodeHealth {
        codes: n,
        bits,
        distinct: groups.len(),
        largest_group: groups.values().copied().max().unwrap_or(0),
        skewed_bits: skewed,
        constant_bits: constant,
        mean_pairwise_hamming: if pairs > 0.0 { separated / pairs } else { 0.0 },
        mean_bit_entropy: if bits == 0 {
            0.0
        } else {
            entropy / bits as f64
        },
        code_entropy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{hamming, pack_bits};

    fn codes(rows: &[&str]) -> Vec<Vec<u64>> {
        rows.iter()
            .map(|r| pack_bits(&r.chars().map(|c| c == '1').collect::<Vec<_>>()))
            .collect()
    }

    #[test]
    fn hand_computed_four_codes() {
        // Bits: k0 = 1,1,1,1 (constant); k1 = 1,0,1,0 (balanced); k2 = 0,0,0,1 (p 0.25).
        let c = codes(&["110", "100", "110", "101"]);
        let h = code_health(&c, 3);
        assert_eq!(h.distinct, 3);
        assert_eq!(h.largest_group, 2);
        assert_eq!(h.constant_bits, 1);
        assert_eq!(h.skewed_bits, 1);
        // Pairs separated: k1 2 * 2 = 4, k2 1 * 3 = 3; 6 pairs.
        assert!((h.mean_pairwise_hamming - 7.0 / 6.0).abs() < 1e-12);
        // H(0) + H(0.5) + H(0.25) = 0 + 1 + 0.811278.
        assert!((h.mean_bit_entropy - (1.0 + 0.811_278_124_459_132_8) / 3.0).abs() < 1e-9);
        // Code distribution 2/4, 1/4, 1/4: 1.5 bits.
        assert!((h.code_entropy - 1.5).abs() < 1e-12);
        assert!(!h.is_healthy());
    }

    #[test]
    fn collapsed_and_spread_sets() {
        let same = codes(&["1010"; 10]);
        let h = code_health(&same, 4);
        assert_eq!((h.distinct, h.constant_bits, h.skewed_bits), (1, 4, 4));
        assert_eq!(h.mean_pairwise_hamming, 0.0);
        assert_eq!(h.code_entropy, 0.0);
        assert!(!h.is_healthy());
        let all: Vec<String> = (0..16).map(|i| format!("{i:04b}")).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let h = code_health(&codes(&refs), 4);
        assert_eq!((h.distinct, h.constant_bits, h.skewed_bits), (16, 0, 0));
        assert!((h.mean_bit_entropy - 1.0).abs() < 1e-12);
        assert!((h.code_entropy - 4.0).abs() < 1e-12);
        assert!(h.is_healthy());
    }

    #[test]
    fn mean_pairwise_hamming_equals_the_brute_force_mean() {
        // 70-bit codes (two words) from a fixed generator.
        let mut state = 7u64;
        let c: Vec<Vec<u64>> = (0..37)
            .map(|_| {
                (0..2)
                    .map(|w| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if w == 1 { state & 0x3f } else { state }
                    })
                    .collect()
            })
            .collect();
        let (mut sum, mut pairs) = (0u64, 0u64);
        for i in 0..c.len() {
            for j in i + 1..c.len() {
                sum += hamming(&c[i], &c[j]) as u64;
                pairs += 1;
            }
        }
        let h = code_health(&c, 70);
        assert!((h.mean_pairwise_hamming - sum as f64 / pairs as f64).abs() < 1e-9);
    }

    #[test]
    fn empty_and_single_sets_do_not_divide_by_zero() {
        let h = code_health(&[], 8);
        assert_eq!((h.codes, h.distinct), (0, 0));
        assert!(h.mean_pairwise_hamming == 0.0 && h.code_entropy == 0.0);
        let h = code_health(&codes(&["1"]), 1);
        assert_eq!(h.distinct, 1);
        assert!(h.mean_pairwise_hamming.is_finite() && h.code_entropy == 0.0);
    }
}
