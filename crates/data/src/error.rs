//! One error type for every reader, so callers can tell the user which file, which row and
//! what is wrong without knowing which format they opened.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading or writing medical image data.
///
/// Every variant names the file; row-level variants also name the 1-based line of the
/// CSV file (the header is line 1), so a user can open the file at the right place.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing column `{column}` (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}, line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}, line {line}: unknown label `{label}` (known: {known})")]
    UnknownLabel {
        path: PathBuf,
        line: u64,
        label: String,
        known: String,
    },
    #[error("{path}, line {line}: image `{image}` is listed but absent")]
    MissingImage {
        path: PathBuf,
        line: u64,
        image: PathBuf,
    },
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: DICOM: {message}")]
    Dicom { path: PathBuf, message: String },
    #[error("{path}: NPZ: {message}")]
    Npz { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// Result alias for the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn row(path: impl AsRef<Path>, line: u64, message: impl Into<String>) -> Self {
        DataError::Row {
            path: path.as_ref().to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn image(path: impl AsRef<Path>, message: impl ToString) -> Self {
        DataError::Image {
            path: path.as_ref().to_path_buf(),
            message: message.to_string(),
        }
    }

    pub(crate) fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DataError::Io { path, .. }
            | DataError::MissingColumn { path, .. }
            | DataError::Row { path, .. }
            | DataError::UnknownLabel { path, .. }
            | DataError::MissingImage { path, .. }
            | DataError::Image { path, .. }
            | DataError::Dicom { path, .. }
            | DataError::Npz { path, .. }
            | DataError::Format { path, .. } => path,
        }
    }
}
