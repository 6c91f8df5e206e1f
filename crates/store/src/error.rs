use std::path::PathBuf;

/// Store errors; each names the store file and the problem. Nothing is written when one is
/// returned from a mutating call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a medret store ({reason})")]
    Foreign { path: PathBuf, reason: String },
    #[error(
        "{path}: schema version {found} was written by a newer medret (this one reads up to {supported})"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("no model named `{0}` in the store")]
    UnknownModel(String),
    #[error("model `{name}` already exists with another definition ({existing})")]
    ModelConflict { name: String, existing: String },
    #[error("model `{model}`: {message}")]
    VectorSize { model: String, message: String },
    #[error("case `{key}` already has a vector for model `{model}`")]
    Duplicate { key: String, model: String },
    #[error("invalid case: {0}")]
    InvalidCase(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
