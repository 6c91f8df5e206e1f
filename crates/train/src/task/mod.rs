//! The training tasks, each a [`crate::Task`] the engine runs: image classification
//! ([`classify`]), C2L self-supervised pretraining ([`c2l`]), the chest method's fusion
//! hashing ([`hash`]) and the fundus method's metric learning ([`metric`]). What they
//! share, a batch of images on the host, its shards and its tensor, is in [`batch`].

pub mod batch;
pub mod c2l;
pub mod classify;
pub mod hash;
pub mod metric;
