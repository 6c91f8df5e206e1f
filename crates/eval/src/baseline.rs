//! Reference levels and model-free baselines that every retrieval figure is reported
//! beside:
//!
//! - the **chance level**: a random ranking; its expected precision at any depth (and,
//!   approximately, its AP) is the mean fraction of relevant database items per query;
//! - the **always-majority level**: every query gets the same ranking, the database items
//!   that carry the most frequent label (or grade) first, in database order. In a skewed
//!   archive this scores high on precision without looking at the query;
//! - **LSH** (Charikar's sign random projections) over mean-centred vectors: raw pixels or
//!   backbone features, the standard model-free hashing baseline;
//! - **ITQ** (iterative quantization, Gong and Lazebnik, CVPR 2011): PCA to K dimensions,
//!   then the orthogonal rotation that minimises the quantization error `|B - V R|^2`,
//!   learned on the database, the standard unsupervised hashing baseline.

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

/// A fitted ITQ binarisation (Gong and Lazebnik, CVPR 2011): mean centring, PCA to `bits`
/// dimensions (the top eigenvectors of the covariance), a seeded random orthogonal start,
/// then alternations of `B = sign(V R)` and the orthogonal Procrustes step
/// `R = U_A U_B^T` from the SVD `B^T V = U_B S U_A^T`. The PCA and the rotation fold into
/// one `bits x dim` matrix, so coding a vector is one centred projection and its signs.
#[derive(Debug, Clone, PartialEq)]
pub struct Itq {
    pub mean: Vec<f32>,
    /// `bits x dim`, row-major: row `j` gives bit `j`.
    pub matrix: Vec<f32>,
    pub bits: usize,
    /// The quantization error `|B - V R|_F^2 / n` at the random start and after each
    /// iteration (non-increasing).
    pub errors: Vec<f64>,
}

impl Itq {
    /// Learns `bits` bits on `fit`; `None` when `bits` exceeds the dimension or the number
    /// of fitting vectors (PCA has no `bits` directions then).
    pub fn fit(fit: &[Vec<f32>], bits: usize, seed: u64, iters: usize) -> Option<Itq> {
        use nalgebra::{DMatrix, SymmetricEigen};
        let dim = fit.first()?.len();
        let n = fit.len();
        if bits == 0 || bits > dim || bits > n {
            return None;
        }
        let mut mean = vec![0.0f64; dim];
        for v in fit {
            mean.iter_mut()
                .zip(v)
                .for_each(|(m, x)| *m += *x as f64 / n as f64);
        }
        let x = DMatrix::from_fn(n, dim, |i, j| fit[i][j] as f64 - mean[j]);
        let cov = x.transpose() * &x / n as f64;
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let w = DMatrix::from_fn(dim, bits, |i, j| eig.eigenvectors[(i, order[j])]);
        let v = &x * &w;
        // A random orthogonal start: the Q of a seeded Gaussian matrix.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let g = DMatrix::from_fn(bits, bits, |_, _| {
            let z: f64 = StandardNormal.sample(&mut rng);
            z
        });
        let mut r = g.qr().q();
        let sign = |m: &DMatrix<f64>| m.map(|x| if x >= 0.0 { 1.0 } else { -1.0 });
        let error = |r: &DMatrix<f64>| {
            let vr = &v * r;
            (sign(&vr) - vr).norm_squared() / n as f64
        };
        let mut errors = Vec::with_capacity(iters + 1);
        errors.push(error(&r));
        for _ in 0..iters {
            let b = sign(&(&v * &r));
            let svd = (b.transpose() * &v).svd(true, true);
            let (ub, ua_t) = (svd.u?, svd.v_t?);
            r = ua_t.transpose() * ub.transpose();
            errors.push(error(&r));
        }
        let wr = w * r;
        Some(Itq {
            mean: mean.iter().map(|m| *m as f32).collect(),
            matrix: (0..bits)
                .flat_map(|j| (0..dim).map(move |i| (i, j)))
                .map(|(i, j)| wr[(i, j)] as f32)
                .collect(),
            bits,
            errors,
        })
    }

    /// The projected (continuous) values of one vector, before the signs.
    pub fn project(&self, v: &[f32]) -> Vec<f32> {
        let dim = self.mean.len();
        self.matrix
            .chunks(dim)
            .map(|row| {
                row.iter()
                    .zip(v)
                    .zip(&self.mean)
                    .map(|((a, x), m)| a * (x - m))
                    .sum()
            })
            .collect()
    }

    pub fn code(&self, v: &[f32]) -> Vec<u64> {
        pack_signs(&self.project(v))
    }
}

/// ITQ codes of `bits` bits for each vector, learned on `fit` (the database), with the
/// quantization errors of the fit ([`Itq`]); `None` when the fit is impossible.
pub fn itq_codes(
    fit: &[Vec<f32>],
    vectors: &[Vec<f32>],
    bits: usize,
    seed: u64,
    iters: usize,
) -> Option<(Vec<Vec<u64>>, Vec<f64>)> {
    let itq = Itq::fit(fit, bits, seed, iters)?;
    let codes = vectors.iter().map(|v| itq.code(v)).collect();
    Some((codes, itq.errors))
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
    fn itq_lowers_quantization_error_and_separates_clusters() {
        // Two clusters in 16 dimensions, 8 bits.
        let mut s = 3u64;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let centre: Vec<f32> = (0..16).map(|_| rnd() * 4.0).collect();
        let data: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let sgn = if i % 2 == 0 { 1.0 } else { -1.0 };
                centre.iter().map(|c| sgn * c + 0.3 * rnd()).collect()
            })
            .collect();
        let (codes, errors) = itq_codes(&data, &data, 8, 1, 30).unwrap();
        // Alternating minimisation never raises the objective (up to rounding).
        assert!(errors.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{errors:?}");
        assert!(errors.last().unwrap() < &(0.9 * errors[0]), "{errors:?}");
        // Same cluster: near codes; other cluster: far codes.
        let d = |a: usize, b: usize| crate::codes::hamming(&codes[a], &codes[b]);
        let within = (0..50).map(|i| d(2 * i, 2 * i + 2)).sum::<u32>();
        let across = (0..50).map(|i| d(2 * i, 2 * i + 1)).sum::<u32>();
        assert!(within * 4 < across, "within {within}, across {across}");
        // PCA directions times a rotation: the bits' projections are orthonormal, and a
        // vector's code is the signs of its centred projection.
        let itq = Itq::fit(&data, 8, 1, 30).unwrap();
        for a in 0..8 {
            for b in 0..8 {
                let dot: f32 = (0..16)
                    .map(|i| itq.matrix[a * 16 + i] * itq.matrix[b * 16 + i])
                    .sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-4, "rows {a} {b}: {dot}");
            }
        }
        assert_eq!(itq.code(&itq.mean), pack_signs(&[0.0; 8]));
        assert_eq!(data.iter().map(|v| itq.code(v)).collect::<Vec<_>>(), codes);
        // Reproducible; impossible settings say so.
        assert_eq!(itq_codes(&data, &data, 8, 1, 30).unwrap().0, codes);
        assert!(
            itq_codes(&data, &data, 17, 1, 5).is_none(),
            "more bits than dimensions"
        );
        assert!(
            itq_codes(&data[..4], &data, 8, 1, 5).is_none(),
            "more bits than vectors"
        );
    }

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
