//! # medret-bench
//!
//! Measuring tools, not the product's logic: `medret bench` is a thin entry to them.
//!
//! - [`search`]: search speed on generated or given codes and descriptors, comparable
//!   with FAISS on the same machine;
//! - [`load`]: a bounded load test of a running `medret serve`, a store grown to a
//!   million cases for it, and the lag of a replica following another's writes.

pub mod load;
pub mod search;
