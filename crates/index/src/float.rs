//! Exact top-k over float descriptors by cosine similarity or squared L2 distance.
//!
//! Cosine descriptors are normalised once at insertion, so a query costs one dot product
//! per item. The inner loop keeps eight independent accumulators, which the compiler turns
//! into SIMD lanes without `unsafe`. Each parallel chunk keeps its own bounded heap of the
//! best k; the heaps are merged at the end.
//!
//! Ranking: ascending distance (`1 - cosine`, or squared L2), then ascending case id.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use rayon::prelude::*;

use crate::error::{IndexError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    L2,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            _ => Err(format!("metric `{s}`: expected cosine or l2")),
        }
    }
}

/// One search result; `distance` is `1 - cosine` or the squared L2 distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatHit {
    pub distance: f32,
    pub id: u64,
}

impl Eq for FloatHit {}

impl Ord for FloatHit {
    fn cmp(&self, o: &Self) -> Ordering {
        self.distance
            .total_cmp(&o.distance)
            .then(self.id.cmp(&o.id))
    }
}

impl PartialOrd for FloatHit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

const CHUNK: usize = 4096;

#[derive(Debug, Clone)]
pub struct FloatIndex {
    dim: usize,
    metric: Metric,
    data: Vec<f32>,
    ids: Vec<u64>,
    position: HashMap<u64, usize>,
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

impl FloatIndex {
    pub fn new(dim: usize, metric: Metric) -> Result<Self> {
        if dim == 0 {
            return Err(IndexError::Parameter(
                "descriptor dimension must be at least 1".into(),
            ));
        }
        Ok(FloatIndex {
            dim,
            metric,
            data: Vec::new(),
            ids: Vec::new(),
            position: HashMap::new(),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.position.contains_key(&id)
    }

    fn prepare(&self, v: &[f32]) -> Result<Vec<f32>> {
        if v.len() != self.dim {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: v.len(),
            });
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::NonFinite);
        }
        let mut v = v.to_vec();
        if self.metric == Metric::Cosine {
            let n = dot(&v, &v).sqrt();
            // A zero vector stays zero: cosine 0 with everything.
            if n > 0.0 {
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        Ok(v)
    }

    pub fn add(&mut self, id: u64, descriptor: &[f32]) -> Result<()> {
        let v = self.prepare(descriptor)?;
        if self.position.contains_key(&id) {
            return Err(IndexError::DuplicateId(id));
        }
        self.position.insert(id, self.ids.len());
        self.ids.push(id);
        self.data.extend_from_slice(&v);
        Ok(())
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.position.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if p != last {
            let moved = self.ids[last];
            self.ids.swap(p, last);
            let d = self.dim;
            let (head, tail) = self.data.split_at_mut(last * d);
            head[p * d..(p + 1) * d].copy_from_slice(&tail[..d]);
            self.position.insert(moved, p);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
        true
    }

    fn distance(&self, q: &[f32], c: &[f32]) -> f32 {
        match self.metric {
            Metric::Cosine => 1.0 - dot(q, c),
            Metric::L2 => l2(q, c),
        }
    }

    /// Exact `k` nearest descriptors.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<FloatHit>> {
        let q = self.prepare(query)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.dim;
        let heaps: Vec<BinaryHeap<FloatHit>> = self
            .data
            .par_chunks(CHUNK * d)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut heap = BinaryHeap::with_capacity(k + 1);
                for (i, c) in chunk.chunks_exact(d).enumerate() {
                    let hit = FloatHit {
                        distance: self.distance(&q, c),
                        id: self.ids[ci * CHUNK + i],
                    };
                    if heap.len() < k {
                        heap.push(hit);
                    } else if hit < *heap.peek().expect("k > 0") {
                        heap.pop();
                        heap.push(hit);
                    }
                }
                heap
            })
            .collect();
        let mut all: Vec<FloatHit> = heaps.into_iter().flatten().collect();
        all.sort_unstable();
        all.truncate(k);
        Ok(all)
    }

    /// The reference for tests: every distance, sorted.
    pub fn naive_search(&self, query: &[f32], k: usize) -> Result<Vec<FloatHit>> {
        let q = self.prepare(query)?;
        let mut all: Vec<FloatHit> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| FloatHit {
                distance: self.distance(&q, &self.data[i * self.dim..(i + 1) * self.dim]),
                id,
            })
            .collect();
        all.sort_unstable();
        all.truncate(k);
        Ok(all)
    }
}
