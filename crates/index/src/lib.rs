//! # medret-index
//!
//! In-memory search indexes, independent of models and storage:
//!
//! - [`hamming`]: exact top-k and radius search over packed binary codes, with the
//!   hardware population count ([`popcount`], detected at run time, portable fallback) and
//!   a counting selection;
//! - [`multi_index`]: multi-index hashing, exact and sub-linear for large N;
//! - [`float`]: exact top-k over float descriptors by cosine or L2;
//! - [`hnsw`]: approximate float top-k for large N (HNSW, through `usearch`), saved and
//!   served memory-mapped.
//!
//! Every index ranks by ascending distance, then ascending case id, and updates in place
//! on add and remove.

pub mod error;
pub mod float;
pub mod hamming;
pub mod hnsw;
pub mod multi_index;
pub mod popcount;

pub use error::{IndexError, Result};
pub use float::{FloatHit, FloatIndex, Metric};
pub use hamming::{HammingIndex, Hit};
pub use hnsw::{HnswIndex, HnswParams, Storage};
pub use multi_index::MultiIndex;
