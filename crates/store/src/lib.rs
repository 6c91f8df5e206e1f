//! # medret-store
//!
//! The case archive: cases (image reference, labels or grade, patient id, study metadata),
//! models (name, kind, code bits or descriptor dimension, config hash) and each case's
//! code or descriptor per model. [`CaseStore`] is the interface; [`sqlite::SqliteStore`]
//! is the embedded default (one database file) and [`postgres::PgStore`] the shared one.
//!
//! Guarantees:
//! - an ingest of N cases is one transaction: all of them or none;
//! - a crash (even `kill -9`) at any point leaves a store that opens and holds exactly
//!   the committed ingests (write-ahead log, `synchronous = FULL`);
//! - deleting a case deletes its vectors for every model;
//! - every write is also recorded in a change log (generation, model, case, added or
//!   deleted), so a replica follows another's writes by reading what changed, not by
//!   reloading every vector;
//! - the schema is versioned and migrated forward on open; a store written by a newer
//!   medret, or a database of another application, is refused.
//!
//! Patient ids are stored (the archive needs them) but never logged.

pub mod archive;
pub mod error;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use serde::{Deserialize, Serialize};

pub use archive::{Archive, Found};
pub use error::{Result, StoreError};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What a model stores per case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// Packed binary codes of `bits` bits (`bits / 8` bytes, little-endian bit order:
    /// bit `i` is bit `i % 8` of byte `i / 8`). With `relaxed`, each code is followed by
    /// the `bits` float32 outputs of the hash layer it was cut from (little-endian), which
    /// order cases at equal Hamming distance (two-stage ranking: [`archive`]).
    Codes {
        bits: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relaxed: bool,
    },
    /// float32 descriptors of dimension `dim`, compared by `metric` (`cosine` or `l2`).
    Descriptors { dim: usize, metric: Metric },
}

/// The one descriptor metric type, the index's.
pub use medret_index::Metric;

impl ModelKind {
    /// Packed binary codes without relaxed outputs.
    pub fn codes(bits: usize) -> Self {
        ModelKind::Codes {
            bits,
            relaxed: false,
        }
    }

    /// Bytes of one stored vector.
    pub fn vector_bytes(&self) -> usize {
        match *self {
            ModelKind::Codes { bits, relaxed } => bits / 8 + if relaxed { bits * 4 } else { 0 },
            ModelKind::Descriptors { dim, .. } => dim * 4,
        }
    }

    /// Bytes of the packed code of a code model (`None` for descriptors).
    pub fn code_bytes(&self) -> Option<usize> {
        match *self {
            ModelKind::Codes { bits, .. } => Some(bits / 8),
            ModelKind::Descriptors { .. } => None,
        }
    }

    /// The packed code at the start of a stored vector of a code model (`None` for
    /// descriptors): what a user sees as "the code".
    pub fn code_part<'a>(&self, vector: &'a [u8]) -> Option<&'a [u8]> {
        vector.get(..self.code_bytes()?)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub kind: ModelKind,
    /// Hash of the model's configuration and weights, to tell retrained models apart.
    pub config_hash: String,
}

/// A case to ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCase {
    /// The archive's own case identifier (accession or image id); unique.
    pub key: String,
    /// Image reference (path or URI).
    pub path: String,
    pub labels: Vec<String>,
    pub grade: Option<u8>,
    pub patient_id: String,
    /// Study metadata (view, eye, age, ...), never DICOM headers wholesale.
    pub study: serde_json::Value,
}

/// A stored case, with the numeric id the indexes use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: u64,
    pub key: String,
    pub path: String,
    pub labels: Vec<String>,
    pub grade: Option<u8>,
    pub patient_id: String,
    pub study: serde_json::Value,
}

/// Counts and sizes for `medret index info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub schema_version: u32,
    pub cases: u64,
    pub models: Vec<(ModelInfo, u64)>,
    pub bytes_on_disk: u64,
}

/// The archive interface, implemented for SQLite and PostgreSQL. Every method takes
/// `&mut self` because a database connection is used one statement at a time.
pub trait CaseStore {
    /// Registers a model; registering the same model again is a no-op, a different
    /// definition under the same name is an error.
    fn add_model(&mut self, model: &ModelInfo) -> Result<()>;
    fn model(&mut self, name: &str) -> Result<ModelInfo>;
    /// Adds cases with their vectors for `model`, all or nothing. A case whose key exists
    /// already is reused (its metadata is kept); a vector that exists already for that
    /// model is an error that rolls the whole ingest back. Returns the case ids in input
    /// order.
    fn ingest(&mut self, model: &str, items: &[(NewCase, Vec<u8>)]) -> Result<Vec<u64>>;
    /// Registers `model` (which must not exist yet) and ingests `items` into it in one
    /// transaction: a failed or interrupted ingest leaves neither the model nor any case.
    fn create_and_ingest(
        &mut self,
        model: &ModelInfo,
        items: &[(NewCase, Vec<u8>)],
    ) -> Result<Vec<u64>>;
    /// Deletes a case and its vectors for every model; false if absent.
    fn delete(&mut self, key: &str) -> Result<bool>;
    fn case(&mut self, id: u64) -> Result<Option<Case>>;
    fn case_by_key(&mut self, key: &str) -> Result<Option<Case>>;
    /// Every vector of `model`, by case id (ascending).
    fn vectors(&mut self, model: &str) -> Result<Vec<(u64, Vec<u8>)>>;
    /// One case's vector for `model`.
    fn vector(&mut self, model: &str, id: u64) -> Result<Option<Vec<u8>>>;
    /// A counter that every committed write (model, ingest, delete) raises, whoever made
    /// it: a process holding an in-memory index compares it to tell whether another
    /// process (another server on the same PostgreSQL store) changed the archive.
    fn generation(&mut self) -> Result<u64>;
    fn info(&mut self) -> Result<StoreInfo>;
    /// Every stored image path that starts with `prefix` (for the images the server
    /// wrote: `upload:`).
    fn paths_with_prefix(&mut self, prefix: &str) -> Result<std::collections::BTreeSet<String>>;
    /// The changes to `model`'s vectors committed after generation `after` up to and
    /// including `up_to`, in commit order, from the store's change log: what a replica
    /// applies instead of reloading every vector. `None` when the log no longer reaches
    /// back to `after` (it keeps the last [`CHANGE_LOG_GENERATIONS`] writes).
    fn changes(&mut self, model: &str, after: u64, up_to: u64) -> Result<Option<Vec<Change>>>;
    /// Every case's id and stored image path, by id (for `medret index check`).
    fn case_paths(&mut self) -> Result<Vec<(u64, String)>>;
    /// A store-wide setting made when the store was created (`opaque_key`: the secret
    /// behind opaque case ids, random per store, shared by every replica).
    fn setting(&mut self, name: &str) -> Result<Option<String>>;
}

/// Writes the change log keeps: a replica further behind reloads its index.
pub const CHANGE_LOG_GENERATIONS: u64 = 10_000;

/// One entry of the change log ([`CaseStore::changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub generation: u64,
    pub case_id: u64,
    /// The case's vector now, for a case added (`None`: deleted, or added and deleted
    /// since). Applying the entries in order, each as "remove, then add if `Some`",
    /// gives the store's state whatever the replica had applied already.
    pub vector: Option<Vec<u8>>,
}

/// A boxed store is a store, so commands can pick SQLite or PostgreSQL at run time.
impl<T: CaseStore + ?Sized> CaseStore for Box<T> {
    fn add_model(&mut self, model: &ModelInfo) -> Result<()> {
        (**self).add_model(model)
    }
    fn model(&mut self, name: &str) -> Result<ModelInfo> {
        (**self).model(name)
    }
    fn ingest(&mut self, model: &str, items: &[(NewCase, Vec<u8>)]) -> Result<Vec<u64>> {
        (**self).ingest(model, items)
    }
    fn create_and_ingest(
        &mut self,
        model: &ModelInfo,
        items: &[(NewCase, Vec<u8>)],
    ) -> Result<Vec<u64>> {
        (**self).create_and_ingest(model, items)
    }
    fn delete(&mut self, key: &str) -> Result<bool> {
        (**self).delete(key)
    }
    fn vector(&mut self, model: &str, id: u64) -> Result<Option<Vec<u8>>> {
        (**self).vector(model, id)
    }
    fn generation(&mut self) -> Result<u64> {
        (**self).generation()
    }
    fn case(&mut self, id: u64) -> Result<Option<Case>> {
        (**self).case(id)
    }
    fn case_by_key(&mut self, key: &str) -> Result<Option<Case>> {
        (**self).case_by_key(key)
    }
    fn vectors(&mut self, model: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        (**self).vectors(model)
    }
    fn info(&mut self) -> Result<StoreInfo> {
        (**self).info()
    }
    fn paths_with_prefix(&mut self, prefix: &str) -> Result<std::collections::BTreeSet<String>> {
        (**self).paths_with_prefix(prefix)
    }
    fn changes(&mut self, model: &str, after: u64, up_to: u64) -> Result<Option<Vec<Change>>> {
        (**self).changes(model, after, up_to)
    }
    fn case_paths(&mut self) -> Result<Vec<(u64, String)>> {
        (**self).case_paths()
    }
    fn setting(&mut self, name: &str) -> Result<Option<String>> {
        (**self).setting(name)
    }
}
