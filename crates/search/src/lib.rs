//! # medret-search
//!
//! The retrieval layer that every front end (the `medret` CLI, the server) calls, so that
//! none holds retrieval logic of its own:
//!
//! - [`open`]: a store by path or `postgresql://` URL;
//! - [`ingest`]: records to cases, and "encode with a trained model, then ingest" as one
//!   all-or-nothing step that records which model made the vectors ([`binding`]);
//! - [`query`]: an image file (PNG, JPEG, DICOM) to ranked hits with case metadata, the
//!   query encoded by exactly the model that built the archive;
//! - [`explain`]: the query's saliency overlay with its crop box, and the results';
//! - [`check`]: whether rows, vectors, indexes and image files agree (`index check`);
//! - [`opaque`]: case ids that carry no patient or accession number, for the server;
//! - [`health`]: how each code model's stored codes use their bits;
//! - [`evaluate`]: a model scored on a dataset's splits, with reference levels,
//!   baselines, timings and a gallery, as `report.json` and `report.html`.

pub mod binding;
pub mod check;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod health;
pub mod ingest;
pub mod opaque;
pub mod open;
pub mod query;

pub use error::{Result, SearchError};
