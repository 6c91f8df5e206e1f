//! Approximate nearest neighbours over float descriptors with HNSW (Malkov and Yashunin),
//! through the `instant-distance` crate, for archives where the exact scan is too slow.
//! Its recall against the exact scan is measured, not assumed: see the tests and
//! `medret bench search-float --hnsw`.
//!
//! The graph is built once from all descriptors (the crate has no incremental insert);
//! the exact [`crate::FloatIndex`] remains the reference and the default.

use instant_distance::{Builder, HnswMap, Point, Search};

use crate::error::{IndexError, Result};
use crate::float::{FloatHit, Metric};

#[derive(Clone, Debug)]
struct Vector {
    v: Vec<f32>,
    metric: Metric,
}

impl Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        match self.metric {
            // Vectors are normalised on the way in.
            Metric::Cosine => 1.0 - self.v.iter().zip(&other.v).map(|(a, b)| a * b).sum::<f32>(),
            Metric::L2 => self
                .v
                .iter()
                .zip(&other.v)
                .map(|(a, b)| (a - b) * (a - b))
                .sum(),
        }
    }
}

/// An HNSW graph over descriptors, each with a case id.
pub struct HnswIndex {
    map: HnswMap<Vector, u64>,
    dim: usize,
    metric: Metric,
}

fn prepare(v: &[f32], dim: usize, metric: Metric) -> Result<Vector> {
    if v.len() != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::NonFinite);
    }
    let mut v = v.to_vec();
    if metric == Metric::Cosine {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
    }
    Ok(Vector { v, metric })
}

impl HnswIndex {
    /// Builds the graph. `ef_construction` and `ef_search` are the paper's parameters
    /// (larger: better recall, slower); `seed` makes the build reproducible.
    pub fn build(
        dim: usize,
        metric: Metric,
        items: &[(u64, Vec<f32>)],
        ef_construction: usize,
        ef_search: usize,
        seed: u64,
    ) -> Result<Self> {
        if dim == 0 {
            return Err(IndexError::Parameter(
                "descriptor dimension must be at least 1".into(),
            ));
        }
        let mut points = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        for (id, v) in items {
            points.push(prepare(v, dim, metric)?);
            ids.push(*id);
        }
        let map = Builder::default()
            .ef_construction(ef_construction)
            .ef_search(ef_search)
            .seed(seed)
            .build(points, ids);
        Ok(HnswIndex { map, dim, metric })
    }

    /// Approximate `k` nearest, ranked by (distance, id) among those found. `k` is capped
    /// by the build's `ef_search`.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<FloatHit>> {
        let q = prepare(query, self.dim, self.metric)?;
        let mut search = Search::default();
        let mut hits: Vec<FloatHit> = self
            .map
            .search(&q, &mut search)
            .take(k)
            .map(|item| FloatHit {
                distance: item.distance,
                id: *item.value,
            })
            .collect();
        hits.sort_unstable();
        Ok(hits)
    }
}

/// Fraction of the exact top-k ids that the approximate top-k found.
pub fn recall(exact: &[FloatHit], approx: &[FloatHit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact
        .iter()
        .filter(|e| approx.iter().any(|a| a.id == e.id))
        .count();
    found as f64 / exact.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FloatIndex;

    #[test]
    fn recall_at_10_against_the_exact_scan() {
        let (n, dim) = (3000usize, 32usize);
        let mut s = 5u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let items: Vec<(u64, Vec<f32>)> = (0..n as u64)
            .map(|id| (id, (0..dim).map(|_| rnd()).collect()))
            .collect();
        let mut exact = FloatIndex::new(dim, Metric::Cosine).unwrap();
        for (id, v) in &items {
            exact.add(*id, v).unwrap();
        }
        let hnsw = HnswIndex::build(dim, Metric::Cosine, &items, 100, 100, 1).unwrap();
        let mut total = 0.0;
        let queries = 50;
        for _ in 0..queries {
            let q: Vec<f32> = (0..dim).map(|_| rnd()).collect();
            let e = exact.search(&q, 10).unwrap();
            let a = hnsw.search(&q, 10).unwrap();
            assert_eq!(a.len(), 10);
            total += recall(&e, &a);
        }
        let r = total / queries as f64;
        assert!(r >= 0.9, "recall@10 {r}");
        assert_eq!(recall(&[], &[]), 1.0);
    }
}
