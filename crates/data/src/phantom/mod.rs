//! Synthetic phantoms: the embedded default data. Deterministic from a seed (each image has
//! its own RNG stream, so thread scheduling does not matter) and written in the real NIH
//! and EyePACS layouts so the real readers are what everything downstream exercises.

pub mod cxr;
pub mod draw;
pub mod fundus;

pub use cxr::{CxrCase, CxrConfig, write_cxr};
pub use fundus::{FundusCase, FundusConfig, LesionCounts, grade_from_lesions, write_fundus};
