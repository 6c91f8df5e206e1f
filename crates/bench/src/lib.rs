//! # medret-bench
//!
//! Measuring tools, not the product's logic: `medret bench` is a thin entry to them.
//!
//! - [`search`]: search speed on generated or given codes and descriptors, comparable
//!   with FAISS on the same machine;
//! - [`encode`]: encoding an archive from its files against the network alone;
//! - [`load`]: a bounded load test of a running `medret serve`, a store grown to a
//!   million cases for it, and the lag of a replica following another's writes.

pub mod encode;
pub mod load;
pub mod search;
