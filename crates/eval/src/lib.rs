//! # medret-eval
//!
//! Retrieval metrics, independent of any model: packed binary codes and Hamming distance
//! ([`codes`]), ranking with a reproducible tie rule ([`ranking`]), relevance rules
//! ([`relevance`]), per-query metrics ([`metrics`]) and whole-protocol reports
//! ([`evaluate`]); classification metrics for training ([`classification`]: ROC AUC,
//! quadratic weighted kappa). Conventions are those of `docs/evaluation.md`.

pub mod ablation;
pub mod baseline;
pub mod classification;
pub mod code_health;
pub mod codes;
pub mod evaluate;
pub mod expansion;
pub mod html;
pub mod localisation;
pub mod metrics;
pub mod ranking;
pub mod relevance;
pub mod report;

pub use code_health::{CodeHealth, code_health};
pub use evaluate::{
    HammingSet, Protocol, Report, evaluate_cosine, evaluate_hamming, evaluate_hamming_refined,
};
pub use relevance::{Relevance, Truth};
