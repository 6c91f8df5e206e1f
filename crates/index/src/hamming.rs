//! Exact Hamming search over packed binary codes: top-k and radius, parallel over cores.
//!
//! Distances are small integers (at most the code length), so top-k uses a counting
//! selection instead of sorting N items or keeping a heap: one pass per block of codes
//! admits a code only if its distance is at most a threshold, and a histogram of the
//! admitted distances lowers the threshold as soon as k codes lie below it (see
//! `popcount::select`). The few admitted candidates are then ranked.
//!
//! Ranking rule, everywhere in medret's indexes: ascending distance, then ascending case
//! id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::popcount::{Kernel, distances, select};

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
        let k = k.min(n);
        // Blocks large enough that each block's own k-th distance is close to the global
        // one (a few per thread), and a threshold shared between blocks: a block starts
        // from the lowest threshold any finished block reached, which is safe because
        // that block holds k codes at or below it.
        let block = CHUNK.max(n.div_ceil(4 * rayon::current_num_threads()));
        let shared = AtomicU16::new(u16::MAX);
        let mut cands: Vec<Hit> = self
            .codes
            .par_chunks(block * w)
            .enumerate()
            .flat_map_iter(|(ci, c)| {
                let start = shared.load(Ordering::Relaxed);
                let (picked, t) = select(self.kernel, query, c, k, self.bits, start);
                if c.len() / w >= k {
                    shared.fetch_min(t, Ordering::Relaxed);
                }
                picked.into_iter().map(move |(d, i)| Hit {
                    distance: d as u32,
                    id: self.ids[ci * block + i as usize],
                })
            })
            .collect();
        if cands.len() > k {
            cands.select_nth_unstable(k - 1);
            cands.truncate(k);
        }
        cands.sort_unstable();
        Ok(cands)
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
