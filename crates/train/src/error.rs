use std::path::PathBuf;

/// Errors of the training engine. Each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("cannot resume from {path}: {message}")]
    Resume { path: PathBuf, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error(transparent)]
    Weights(#[from] medret_models::weights::WeightsError),
}

impl From<medret_data::DataError> for TrainError {
    fn from(e: medret_data::DataError) -> Self {
        TrainError::Data(e.to_string())
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
