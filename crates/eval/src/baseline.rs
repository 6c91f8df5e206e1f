//! Reference levels and model-free baselines that every retrieval figure is reported
//! beside:
//!
//! - the **chance level**: a random ranking; its expected precision at any depth (and,
//!   approximately, its AP) is the mean fraction of relevant database items per query;
//! - the **always-majority level**: every query gets the same ranking, the database items
//!   that carry the most frequent label (or grade) first, in database order. In a skewed
//!   archive this scores high on precision without looking at the query;
//! - **LSH** (Charikar's sign random projections) over mean-centred vectors: raw pixels or
//!   backbone features, the standard model-free hashing baseline.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::codes::pack_signs;
use crate::evaluate::{Report, evaluate_cosine};
use crate::relevance::{Relevance, Truth};

/// The chance level: mean over queries of the fraction of relevant database items.
pub fn chance_precision(queries: &[Truth], database: &[Truth], rule: Relevance) -> f64 {
    if queries.is_empty() || database.is_empty() {
        return 0.0;
    }
    queries
        .iter()
        .map(|q| {
            database.iter().filter(|d| rule.is_relevant(q, d)).count() as f64
                / database.len() as f64
        })
        .sum::<f64>()
        / queries.len() as f64
}

/// The most frequent label (or grade) index in `database`, ties to the smallest index.
pub fn majority_label(database: &[Truth]) -> Option<u32> {
    let mut counts = std::collections::BTreeMap::<u32, usize>::new();
    for d in database {
        for &l in &d.labels {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .fold(None, |best: Option<(u32, usize)>, (l, c)| match best {
            Some((_, bc)) if bc >= c => best,
            _ => Some((l, c)),
        })
        .map(|(l, _)| l)
}

/// The always-majority retrieval scored with the full protocol.
pub fn majority_report(queries: &[Truth], database: &[Truth], rule: Relevance) -> Report {
    let m = majority_label(database);
    let has = |t: &Truth| m.is_some_and(|m| t.labels.contains(&m));
    // A 2-d embedding whose cosine is 1 for majority items and 0 for the rest: the
    // ranking is majority first, then database order (the tie rule).
    let db: Vec<Vec<f32>> = database
        .iter()
        .map(|d| {
            if has(d) {
                vec![1.0, 0.0]
            } else {
                vec![0.0, 1.0]
            }
        })
        .collect();
    let q: Vec<Vec<f32>> = queries.iter().map(|_| vec![1.0, 0.0]).collect();
    evaluate_cosine(&q, queries, &db, database, rule, false)
}

/// Sign-random-projection codes of `bits` bits for each vector, after subtracting the
/// mean of `fit` (the database), so that the hyperplanes pass through the data's centre.
pub fn lsh_codes(fit: &[Vec<f32>], vectors: &[Vec<f32>], bits: usize, seed: u64) -> Vec<Vec<u64>> {
    let Some(dim) = fit.first().map(Vec::len) else {
        return vec![Vec::new(); vectors.len()];
    };
    let mut mean = vec![0.0f64; dim];
    for v in fit {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += *x as f64 / fit.len() as f64;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let proj: Vec<Vec<f32>> = (0..bits)
        .map(|_| (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect())
        .collect();
    vectors
        .iter()
        .map(|v| {
            let h: Vec<f32> = proj
                .iter()
                .map(|p| {
                    p.iter()
                        .zip(v)
                        .zip(&mean)
                        .map(|((a, x), m)| a * (*x - *m as f32))
                        .sum()
                })
                .collect();
            pack_signs(&h)
        })
        .collect()
}

/// The reference levels reported beside a figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Levels {
    pub chance_precision: f64,
    pub majority_map_100: f64,
    pub majority_p_10: f64,
}

pub fn levels(queries: &[Truth], database: &[Truth], rule: Relevance) -> Levels {
    let maj = majority_report(queries, database, rule);
    Levels {
        chance_precision: chance_precision(queries, database, rule),
        majority_map_100: maj.map.get("100").copied().unwrap_or(0.0),
        majority_p_10: maj.precision.get("10").copied().unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_and_majority_hand_computed() {
        // Database labels: {0}, {0}, {1}, {0, 2}. Majority label 0 (3 of 4).
        let db = vec![
            Truth::labels(vec![0]),
            Truth::labels(vec![0]),
            Truth::labels(vec![1]),
            Truth::labels(vec![0, 2]),
        ];
        let q = vec![Truth::labels(vec![1]), Truth::labels(vec![2])];
        // Query {1}: 1 of 4 relevant; query {2}: 1 of 4. Chance 0.25.
        assert!((chance_precision(&q, &db, Relevance::SharesLabel) - 0.25).abs() < 1e-12);
        assert_eq!(majority_label(&db), Some(0));
        // Majority ranking: 0, 1, 3 (label 0), then 2.
        // Query {1}: relevant only at rank 4: AP = (1/4) / 1 = 0.25.
        // Query {2}: relevant (item 3) at rank 3: AP = 1/3.
        let r = majority_report(&q, &db, Relevance::SharesLabel);
        let want = (0.25 + 1.0 / 3.0) / 2.0;
        assert!(
            (r.map["100"] - want).abs() < 1e-9,
            "{} vs {want}",
            r.map["100"]
        );
    }

    #[test]
    fn lsh_separates_opposite_directions() {
        let fit = vec![
            vec![1.0, 0.0, 0.0],
            vec![-1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
        ];
        let codes = lsh_codes(
            &fit,
            &[
                vec![5.0, 0.0, 0.0],
                vec![5.0, 0.1, 0.0],
                vec![-5.0, 0.0, 0.0],
            ],
            64,
            1,
        );
        let d = |a: &Vec<u64>, b: &Vec<u64>| crate::codes::hamming(a, b);
        assert!(d(&codes[0], &codes[1]) < d(&codes[0], &codes[2]));
        assert!(
            d(&codes[0], &codes[2]) > 40,
            "opposite vectors should differ on most bits"
        );
        // Deterministic under the seed.
        assert_eq!(
            codes,
            lsh_codes(
                &fit,
                &[
                    vec![5.0, 0.0, 0.0],
                    vec![5.0, 0.1, 0.0],
                    vec![-5.0, 0.0, 0.0]
                ],
                64,
                1
            )
        );
    }
}
