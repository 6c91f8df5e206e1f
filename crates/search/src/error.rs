use std::path::PathBuf;

/// What can go wrong between an image and its results. Each names the file, the store or
/// the model at fault.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] medret_store::StoreError),
    #[error(transparent)]
    Encode(#[from] medret_models::encoder::EncodeError),
    #[error(transparent)]
    Data(#[from] medret_data::DataError),
    #[error("model `{model}` in {store}: {message}")]
    Model {
        model: String,
        store: String,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The write would overwrite something that exists (a case, a stored image).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;
