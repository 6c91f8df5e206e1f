//! Exact Hamming search over packed binary codes: top-k and radius, parallel over cores.
//!
//! Distances are small integers (at most the code length), so top-k uses a counting
//! selection instead of sorting N items: one pass computes the distances and a histogram,
//! the histogram gives the distance `t` at which the k-th result lies, and a second pass
//! keeps the items closer than `t` plus the smallest ids at exactly `t`.
//!
//! Ranking rule, everywhere in medret's indexes: ascending distance, then ascending case
//! id.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::popcount::{Kernel, distances};

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    pub distance: u32,
    pub id: u64,
}

/// Items per parallel task: large enough to amortise scheduling, small enough that the
/// distance buffer stays in L2.
const CHUNK: usize = 1 << 14;

/// An in-memory Hamming index: codes of `bits` bits (a multiple of 8, at most 1024) packed
/// in `u64` words, each with a case id.
#[derive(Debug, Clone)]
pub struct HammingIndex {
    bits: usize,
    words: usize,
    codes: Vec<u64>,
    ids: Vec<u64>,
    position: HashMap<u64, usize>,
    kernel: Kernel,
}

impl HammingIndex {
    pub fn new(bits: usize) -> Result<Self> {
        if bits == 0 || !bits.is_multiple_of(8) || bits > 1024 {
            return Err(IndexError::BitLength(bits));
        }
        Ok(HammingIndex {
            bits,
            words: bits.div_ceil(64),
            codes: Vec::new(),
            ids: Vec::new(),
            position: HashMap::new(),
            kernel: Kernel::detect(),
        })
    }

    /// Forces a kernel (tests and benchmarks compare them).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    pub fn words(&self) -> usize {
        self.words
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Storage position of `id`.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.position.get(&id).copied()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.position.contains_key(&id)
    }

    /// The packed code of `id`.
    pub fn code(&self, id: u64) -> Option<&[u64]> {
        self.position
            .get(&id)
            .map(|&p| &self.codes[p * self.words..(p + 1) * self.words])
    }

    /// Ids in storage order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Codes in storage order, `len() * words()` words.
    pub fn raw_codes(&self) -> &[u64] {
        &self.codes
    }

    fn check_code(&self, code: &[u64]) -> Result<()> {
        if code.len() != self.words {
            return Err(IndexError::CodeLength {
                expected: self.bits,
                got: code.len() * 64,
            });
        }
        // Bits past the code length must be zero, or distances would count them.
        let spare = self.words * 64 - self.bits;
        if spare > 0 && code[self.words - 1] >> (64 - spare) != 0 {
            return Err(IndexError::CodeLength {
                expected: self.bits,
                got: self.words * 64,
            });
        }
        Ok(())
    }

    /// Adds a code; an id already present is an error (nothing changes).
    pub fn add(&mut self, id: u64, code: &[u64]) -> Result<()> {
        self.check_code(code)?;
        if self.position.contains_key(&id) {
            return Err(IndexError::DuplicateId(id));
        }
        self.position.insert(id, self.ids.len());
        self.ids.push(id);
        self.codes.extend_from_slice(code);
        Ok(())
    }

    /// Removes `id` (moving the last code into its place); false if absent.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.position.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if p != last {
            let moved = self.ids[last];
            self.ids.swap(p, last);
            let w = self.words;
            for i in 0..w {
                self.codes.swap(p * w + i, last * w + i);
            }
            self.position.insert(moved, p);
        }
        self.ids.pop();
        self.codes.truncate(last * self.words);
        true
    }

    /// Exact `k` nearest codes, ranked by (distance, id).
    pub fn search(&self, query: &[u64], k: usize) -> Result<Vec<Hit>> {
        self.check_code(query)?;
        let n = self.len();
        if k == 0 || n == 0 {
            return Ok(Vec::new());
        }
        let w = self.words;
        let levels = self.bits + 1;
        // Pass 1: distances and a histogram, per chunk in parallel.
        let mut dist = vec![0u16; n];
        let hist = dist
            .par_chunks_mut(CHUNK)
            .zip(self.codes.par_chunks(CHUNK * w))
            .map(|(d, c)| {
                distances(self.kernel, query, c, d);
                // Four interleaved histograms: random codes pile up around half the code
                // length, and one histogram would stall on back-to-back increments of
                // the same counter.
                let mut h4 = vec![0u32; 4 * levels];
                let mut quads = d.chunks_exact(4);
                for q in &mut quads {
                    h4[q[0] as usize] += 1;
                    h4[levels + q[1] as usize] += 1;
                    h4[2 * levels + q[2] as usize] += 1;
                    h4[3 * levels + q[3] as usize] += 1;
                }
                for &x in quads.remainder() {
                    h4[x as usize] += 1;
                }
                (0..levels)
                    .map(|i| h4[i] + h4[levels + i] + h4[2 * levels + i] + h4[3 * levels + i])
                    .collect::<Vec<u32>>()
            })
            .reduce(
                || vec![0u32; levels],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        // The threshold: the smallest t with at least k items at distance <= t.
        let k = k.min(n);
        let (mut t, mut cumulative) = (0usize, 0usize);
        loop {
            cumulative += hist[t] as usize;
            if cumulative >= k || t + 1 == levels {
                break;
            }
            t += 1;
        }
        // Items strictly closer than t all make it; at t only the smallest ids do.
        let t16 = t as u16;
        let picked: Vec<Vec<Hit>> = dist
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(ci, d)| {
                let ids = &self.ids[ci * CHUNK..ci * CHUNK + d.len()];
                let mut v = Vec::new();
                for (&x, &id) in d.iter().zip(ids) {
                    if x <= t16 {
                        v.push(Hit {
                            distance: x as u32,
                            id,
                        });
                    }
                }
                v
            })
            .collect();
        let (mut hits, mut at_t): (Vec<Hit>, Vec<Hit>) = picked
            .into_iter()
            .flatten()
            .partition(|h| h.distance < t as u32);
        let need = k - hits.len();
        if at_t.len() > need {
            at_t.select_nth_unstable_by_key(need, |h| h.id);
            at_t.truncate(need);
        }
        hits.extend(at_t);
        hits.sort_unstable();
        Ok(hits)
    }

    /// Every code within distance `radius` (inclusive), ranked by (distance, id).
    pub fn radius(&self, query: &[u64], radius: u32) -> Result<Vec<Hit>> {
        self.check_code(query)?;
        let w = self.words;
        let mut hits: Vec<Hit> = self
            .codes
            .par_chunks(CHUNK * w)
            .enumerate()
            .flat_map_iter(|(ci, c)| {
                let mut d = vec![0u16; c.len() / w];
                distances(self.kernel, query, c, &mut d);
                d.into_iter()
                    .enumerate()
                    .filter(move |(_, x)| (*x as u32) <= radius)
                    .map(move |(i, x)| Hit {
                        distance: x as u32,
                        id: self.ids[ci * CHUNK + i],
                    })
            })
            .collect();
        hits.sort_unstable();
        Ok(hits)
    }
}

/// The reference: every distance, sorted. For tests of the fast paths.
pub fn naive_search(index: &HammingIndex, query: &[u64], k: usize) -> Vec<Hit> {
    let w = index.words();
    let mut all: Vec<Hit> = index
        .ids()
        .iter()
        .enumerate()
        .map(|(i, &id)| Hit {
            distance: index.raw_codes()[i * w..(i + 1) * w]
                .iter()
                .zip(query)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum(),
            id,
        })
        .collect();
    all.sort_unstable();
    all.truncate(k);
    all
}
