//! # medret-pacs
//!
//! medret beside a PACS, through the DICOMweb standard (PS3.18), so that any PACS that
//! speaks it works (tested against Orthanc):
//!
//! - [`dicomweb`]: the client: QIDO-RS (find instances), WADO-RS (retrieve them), STOW-RS
//!   (store), with credentials from a file or the environment (never a flag, never in a
//!   log or an error), rustls for HTTPS, timeouts, and retries with back-off on 5xx;
//! - [`sync`]: `medret pacs sync`: the archive follows the PACS, incrementally,
//!   idempotently and resumably;
//! - [`kos`]: the results as a DICOM Key Object Selection document, stored back into the
//!   PACS so that any viewer lists them beside the study.

pub mod dicomweb;
pub mod error;
pub mod kos;
pub mod query;
pub mod sync;

pub use dicomweb::{Auth, DicomWeb, Instance};
pub use error::{PacsError, Result};
