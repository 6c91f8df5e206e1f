//! # medret-data
//!
//! Everything medret knows about images before a model sees them:
//!
//! - readers for NIH ChestX-ray8/14 ([`nih`]), EyePACS ([`eyepacs`]), MedMNIST
//!   ([`medmnist`]), the generic manifest ([`manifest`]) and DICOM ([`dicom`]), all producing
//!   one [`Record`] type inside a [`Dataset`], opened through [`open_dataset`];
//! - the synthetic phantoms ([`phantom::cxr`], [`phantom::fundus`]) written in the real
//!   NIH and EyePACS layouts;
//! - one transform pipeline ([`transform`]) and a bounded-memory parallel loader
//!   ([`loader`]);
//! - dataset summaries ([`summary`]) and contact sheets ([`contact_sheet`]).
//!
//! This crate knows nothing of models or storage.

pub mod contact_sheet;
mod csv_util;
pub mod decode;
pub mod dicom;
pub mod error;
pub mod eyepacs;
#[doc(hidden)]
pub mod fuzzing;
pub mod image_buf;
pub mod labels;
pub mod loader;
pub mod manifest;
pub mod medmnist;
pub mod nih;
pub mod npy;
pub mod open;
pub mod overlay;
pub mod phantom;
pub mod record;
pub mod summary;
pub mod transform;

pub use error::{DataError, Result};
pub use image_buf::ImageF32;
pub use open::{detect_format, open_dataset};
pub use record::{BBox, Dataset, Eye, Format, ImageSource, MaskRef, ReadOptions, Record, Split};
pub use summary::{Summary, summarise, summarise_with_progress};
