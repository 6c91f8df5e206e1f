//! Retrieval-side gains that need no training: average query expansion (αQE) and
//! database-side augmentation (DBA), as in Radenović, Tolias and Chum, "Fine-tuning CNN
//! image retrieval with no human annotation" (TPAMI 2019), section 5.
//!
//! Both work on the continuous vectors (descriptors, or the relaxed codes a hash model
//! stores beside its codes): a vector is replaced by the normalised sum of itself and its
//! `n` nearest neighbours, each weighted by `max(0, cos)^α`. A hash code is then the sign
//! of the expanded relaxed code, which is what the model's own binarisation does, so the
//! expanded code is the one a query "between" its neighbours would have had.
//!
//! What ranks the neighbours is the caller's: the same ranking the query itself gets
//! (Hamming then the relaxed codes, or cosine).

use serde::{Deserialize, Serialize};

use crate::codes::cosine;

/// `--qe N --dba N --qe-alpha A`; zero neighbours turn each off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expansion {
    /// Neighbours added to each query.
    pub qe: usize,
    /// Neighbours added to each database vector (computed within the database).
    pub dba: usize,
    /// Exponent of the cosine weights (Radenović et al. use 3).
    pub alpha: f32,
}

impl Default for Expansion {
    fn default() -> Self {
        Expansion {
            qe: 0,
            dba: 0,
            alpha: 3.0,
        }
    }
}

impl Expansion {
    pub fn is_off(&self) -> bool {
        self.qe == 0 && self.dba == 0
    }

    /// For reports: `"αQE n=2 α=3, DBA n=1"`, or `"none"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.dba > 0 {
            parts.push(format!("DBA n={} α={}", self.dba, self.alpha));
        }
        if self.qe > 0 {
            parts.push(format!("αQE n={} α={}", self.qe, self.alpha));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", then ")
        }
    }
}

/// `v` expanded with `neighbours` (nearest first; the first `n` are used): the sum of
/// `v / |v|` and each `d / |d|` weighted by `max(0, cos(v, d))^alpha`, rescaled to `v`'s
/// own length (so a relaxed code keeps the scale its tie-breaking distance was learned
/// at). A zero vector is returned unchanged.
pub fn alpha_expand<'a>(
    v: &[f32],
    neighbours: impl IntoIterator<Item = &'a [f32]>,
    n: usize,
    alpha: f32,
) -> Vec<f32> {
    let norm = |x: &[f32]| {
        x.iter()
            .map(|&a| (a as f64) * (a as f64))
            .sum::<f64>()
            .sqrt()
    };
    let nv = norm(v);
    if nv == 0.0 {
        return v.to_vec();
    }
    let mut sum: Vec<f64> = v.iter().map(|&a| a as f64 / nv).collect();
    for d in neighbours.into_iter().take(n) {
        let nd = norm(d);
        if nd == 0.0 {
            continue;
        }
        let w = (cosine(v, d).max(0.0) as f64).powf(alpha as f64);
        for (s, &x) in sum.iter_mut().zip(d) {
            *s += w * x as f64 / nd;
        }
    }
    let ns = sum.iter().map(|a| a * a).sum::<f64>().sqrt();
    if ns == 0.0 {
        return v.to_vec();
    }
    sum.iter().map(|&a| (a / ns * nv) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_expansion() {
        // v = (1, 0); neighbours (1, 1) at cos 1/sqrt 2 and (-1, 0) at cos -1.
        // alpha 2: weight 1/2 for the first, 0 for the second (negative cosine).
        // sum = (1, 0) + 0.5 (1/sqrt 2, 1/sqrt 2) = (1.35355, 0.35355), normalised,
        // times |v| = 1.
        let v = [1.0f32, 0.0];
        let n1 = [1.0f32, 1.0];
        let n2 = [-1.0f32, 0.0];
        let out = alpha_expand(&v, [&n1[..], &n2[..]], 2, 2.0);
        let (a, b) = (1.0 + 0.5 / 2f64.sqrt(), 0.5 / 2f64.sqrt());
        let l = (a * a + b * b).sqrt();
        assert!((out[0] as f64 - a / l).abs() < 1e-6, "{out:?}");
        assert!((out[1] as f64 - b / l).abs() < 1e-6, "{out:?}");
        // Only the first n neighbours count.
        let far = [0.0f32, 1.0];
        let one = alpha_expand(&v, [&n1[..], &far[..]], 1, 2.0);
        assert_eq!(one, out);
    }

    #[test]
    fn keeps_the_length_and_ignores_zero_vectors() {
        let v = [3.0f32, 4.0];
        let out = alpha_expand(&v, [&[4.0f32, 3.0][..], &[0.0, 0.0][..]], 5, 3.0);
        let len = (out[0] * out[0] + out[1] * out[1]).sqrt();
        assert!((len - 5.0).abs() < 1e-5, "{len}");
        // Pulled towards the neighbour, so between the two directions.
        assert!(out[0] / out[1] > 3.0 / 4.0 && out[0] / out[1] < 4.0 / 3.0);
        assert_eq!(alpha_expand(&[0.0, 0.0], [&v[..]], 1, 3.0), vec![0.0, 0.0]);
        // alpha 0 is plain average query expansion: equal weights.
        let avg = alpha_expand(&[1.0, 0.0], [&[0.0f32, 1.0][..]], 1, 0.0);
        assert!((avg[0] - avg[1]).abs() < 1e-6, "{avg:?}");
    }
}
