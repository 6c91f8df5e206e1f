//! # medret-server
//!
//! `medret serve`: one process that serves every model of one store over HTTP, with the
//! web page for the viewing station embedded in the binary. All retrieval goes through
//! `medret-search`; this crate only speaks HTTP:
//!
//! - [`api`]: the `/api/v1` JSON API (search by image, region, case or cases; case
//!   metadata, images and overlays; ingest and delete behind a bearer token; models);
//! - [`state`]: the models of the store, each loaded once (index and network) and shared;
//!   replicas on one PostgreSQL store follow each other through the store's generation
//!   counter;
//! - [`upload`]: uploads checked by their magic bytes and decoded with size limits;
//! - [`metrics`]: `/metrics` in Prometheus text format;
//! - [`openapi`]: the API contract, generated from the handlers, at `/api/v1/openapi.json`;
//! - [`web`]: the page and its assets.
//!
//! Safety beside patient data: writes need the token (compared in constant time), uploads
//! are limited (413 above the limit), patient ids are masked in responses unless
//! configured, DICOM headers never leave the server (only pixels are read), logs carry
//! routes and status codes, never identifiers or pixels, CORS is off (same-origin page
//! only), and a global concurrency limit bounds the work in flight.

pub mod api;
pub mod error;
pub mod fuzzing;
pub mod metrics;
pub mod openapi;
pub mod state;
pub mod upload;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use state::AppState;

/// Everything `medret serve` takes.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A SQLite file or a `postgresql://` URL.
    pub store: PathBuf,
    pub addr: SocketAddr,
    /// The bearer token that writes (ingest, delete) need; `None` disables writes.
    pub token: Option<String>,
    /// Refuse every write even with the token.
    pub read_only: bool,
    /// Largest request body accepted (uploads); larger ones get 413.
    pub max_upload_bytes: usize,
    /// Show patient ids in responses (masked by default).
    pub show_patient_ids: bool,
    /// Requests processed at once, server-wide; more wait their turn.
    pub concurrency: usize,
    /// A request taking longer gets 408. Its work stops at the next stage boundary
    /// (after decoding, after encoding, after the index search) and keeps its share of
    /// `concurrency` until it has.
    pub timeout: Duration,
    /// Where ingested images are kept (default: beside a SQLite store, `<store>.images`).
    pub upload_dir: Option<PathBuf>,
    /// Root for stored image paths that are relative.
    pub image_root: Option<PathBuf>,
    /// Compute device for the networks (`cpu`, `gpu:N` or part of an adapter's name in a GPU build).
    pub device: String,
    /// Largest image decoded, in pixels per frame (from the header, before decoding).
    pub max_pixels: u64,
    /// Memory that uploads being decoded may take at once, in MiB
    /// ([`upload::DecodeBudget`]).
    pub decode_budget_mib: u32,
    /// Show opaque case ids ([`medret_search::opaque`]) instead of the archive's own,
    /// which often carry patient or accession numbers; requests then name cases by
    /// them too.
    pub opaque_ids: bool,
    /// The PACS that `study_uid` searches fetch from and key objects go to.
    pub pacs: Option<PacsSettings>,
    /// A viewer link per result from the PACS: `{study}`, `{series}` and `{sop}` are
    /// replaced by the case's UIDs (e.g. OHIF's `https://viewer/?StudyInstanceUIDs={study}`).
    pub viewer_url: Option<String>,
}

/// Where the PACS is (see `medret-pacs`); the credentials stay in their file.
#[derive(Debug, Clone)]
pub struct PacsSettings {
    pub url: String,
    pub auth_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl ServeConfig {
    pub fn new(store: PathBuf) -> Self {
        ServeConfig {
            store,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            read_only: false,
            max_upload_bytes: 32 << 20,
            show_patient_ids: false,
            concurrency: 16,
            timeout: Duration::from_secs(120),
            upload_dir: None,
            image_root: None,
            device: "cpu".into(),
            max_pixels: upload::MAX_PIXELS,
            decode_budget_mib: 4096,
            opaque_ids: true,
            pacs: None,
            viewer_url: None,
        }
    }
}

/// The whole application: API, health, metrics and the page, with the limits applied.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_upload_bytes;
    let timeout = state.config.timeout;
    let concurrency = state.config.concurrency.max(1);
    Router::new()
        .merge(api::routes())
        .merge(web::routes())
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(concurrency))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(CompressionLayer::new())
        .layer(
            // Spans name the route template, never the path: case ids stay out of logs.
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .with_state(state)
}

/// Opens the store, loads its models and serves until ctrl-c or SIGTERM. Prints
/// `listening on http://ADDR` once the socket is bound (with port 0, the port chosen).
pub async fn serve(config: ServeConfig) -> Result<(), ApiError> {
    let state = tokio::task::spawn_blocking(move || AppState::open(config))
        .await
        .map_err(|e| ApiError::internal(format!("loading the store: {e}")))??;
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind(state.config.addr)
        .await
        .map_err(|e| ApiError::internal(format!("cannot listen on {}: {e}", state.config.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    println!(
        "listening on http://{addr} ({} models{})",
        state.model_count(),
        if state.writes_enabled() {
            ", writes with the token"
        } else {
            ", read-only"
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| ApiError::internal(format!("server: {e}")))?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
