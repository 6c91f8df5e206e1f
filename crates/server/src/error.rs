//! Errors as HTTP answers: a status and a message, sent as `{"error": "..."}`. Bad input
//! is a 4xx that says what is wrong; a 500 means a fault of ours or of the store, and its
//! message names no patient data.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use medret_search::SearchError;
use medret_store::StoreError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "request failed");
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::UnknownModel(_) => StatusCode::NOT_FOUND,
            StoreError::Duplicate { .. } | StoreError::ModelConflict { .. } => StatusCode::CONFLICT,
            StoreError::InvalidCase(_) | StoreError::VectorSize { .. } => StatusCode::BAD_REQUEST,
            StoreError::Foreign { .. }
            | StoreError::TooNew { .. }
            | StoreError::Database { .. } => {
                // The detail goes to the log (it names the store, not patients); the
                // client learns only that the store failed.
                tracing::error!(error = %e, "store error");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the case store is unavailable; nothing was changed",
                );
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Store(s) => s.into(),
            SearchError::Data(d) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, d.to_string()),
            SearchError::Encode(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            SearchError::NotFound(m) => ApiError::not_found(m),
            SearchError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            // The store's location is the server's business, not the client's.
            SearchError::Model { model, message, .. } => {
                ApiError::new(StatusCode::CONFLICT, format!("model `{model}`: {message}"))
            }
            // A file the server itself failed to write or read (its upload folder):
            // logged with the path, answered without it.
            SearchError::File { .. } => {
                tracing::error!(error = %e, "server file error");
                ApiError::internal("the server could not store or read an image file")
            }
            SearchError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        ApiError::new(e.status(), format!("malformed upload: {}", e.body_text()))
    }
}

// Axum's own rejections answer in plain text; the API answers every error as JSON.
impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        ApiError::new(e.status(), format!("malformed upload: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("a worker failed: {e}"))
    }
}

impl From<medret_pacs::PacsError> for ApiError {
    fn from(e: medret_pacs::PacsError) -> Self {
        use medret_pacs::PacsError as P;
        match e {
            P::Search(s) => s.into(),
            P::Store(s) => s.into(),
            P::Data(d) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, d.to_string()),
            // The query names a study the PACS does not hold.
            P::NotFound(m) => ApiError::not_found(m),
            P::Config(m) => ApiError::internal(m),
            P::Http { status: 404, .. } => ApiError::not_found(e.to_string()),
            // The PACS failing or refusing medret is a gateway's failure, not the client's.
            P::Unreachable { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
            P::Unauthorized { .. } | P::Http { .. } | P::Protocol { .. } | P::File { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
        }
    }
}
