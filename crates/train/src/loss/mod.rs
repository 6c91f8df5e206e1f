//! The losses of medret's methods, one file each, each checked against hand-computed
//! values.

pub mod fine_triplet;
pub mod hash;
pub mod info_nce;
pub mod triplet;
