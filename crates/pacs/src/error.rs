use thiserror::Error;

/// What can go wrong beside a PACS. No variant carries credentials: URLs are shown
/// without them, and response bodies are cut short.
#[derive(Debug, Error)]
pub enum PacsError {
    #[error("{url}: the PACS refused the credentials (HTTP {status}); check the auth file")]
    Unauthorized { url: String, status: u16 },
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: cannot reach the PACS: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    #[error("{0}")]
    Config(String),
    /// The PACS holds nothing that a query names.
    #[error("{0}")]
    NotFound(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Search(#[from] medret_search::error::SearchError),
    #[error(transparent)]
    Store(#[from] medret_store::StoreError),
    #[error(transparent)]
    Data(#[from] medret_data::DataError),
}

pub type Result<T> = std::result::Result<T, PacsError>;
