//! # medret-models
//!
//! medret's networks on burn 0.22 (device chosen at run time; CPU through burn-flex):
//! DenseNet-121 exactly as torchvision builds it ([`densenet`]), with weights in and out
//! as safetensors under torchvision's names ([`weights`]) and a layer table
//! ([`summary`]); the chest method's fusion-hashing network ([`cxr_hash`]), C2L's
//! encoders ([`c2l`]), model cards ([`model_card`]) and the image encoder every front end
//! uses ([`encoder`]). Knows nothing of storage.

pub mod alloc;
pub mod arch;
pub mod c2l;
pub mod cxr_hash;
pub mod densenet;
pub mod device;
pub mod encoder;
pub mod features;
pub mod fundus_metric;
pub mod grad_cam;
pub mod host;
pub mod kernels;
pub mod model_card;
pub mod ops;
pub mod summary;
pub mod weights;

pub use arch::Arch;

pub use densenet::{DenseNet, DenseNetConfig};
pub use weights::{WeightsError, load_torchvision, save_torchvision};
