//! # medret-models
//!
//! medret's networks on burn 0.22 (device chosen at run time; CPU through burn-flex):
//! DenseNet-121 exactly as torchvision builds it ([`densenet`]), with weights in and out
//! as safetensors under torchvision's names ([`weights`]) and a layer table
//! ([`summary`]). Knows nothing of storage.

pub mod densenet;
pub mod device;
pub mod features;
pub mod grad_cam;
pub mod summary;
pub mod weights;

pub use densenet::{DenseNet, DenseNetConfig};
pub use weights::{WeightsError, load_torchvision, save_torchvision};
