//! The server's models: each store model loaded once (its index on its own store
//! connection, and the network that built it) and shared by every request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use medret_models::encoder::Encoder;
use medret_search::binding::ModelBinding;
use medret_search::open::{is_url, open_store, shown};
use medret_store::archive::FloatSearch;
use medret_store::{Archive, CaseStore, ModelInfo};

use crate::ServeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub type Store = Box<dyn CaseStore + Send>;

/// One store model as served.
pub struct Slot {
    pub info: ModelInfo,
    /// The index, on the slot's own store connection. Held for the search itself (index
    /// and case rows), never while a network runs.
    pub archive: Mutex<Archive<Store>>,
    /// The network that built the vectors, when the model was built from a model folder
    /// that is still there and unchanged. Without it the model answers searches by case
    /// only.
    pub encoder: Option<Arc<Encoder>>,
    /// Why there is no encoder.
    pub no_encoder: Option<String>,
    /// Float searches go through an HNSW graph (approximate).
    pub approximate: bool,
}

impl Slot {
    pub fn encoder(&self) -> Result<&Arc<Encoder>, ApiError> {
        self.encoder.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "model `{}` cannot encode images: {}",
                    self.info.name,
                    self.no_encoder.as_deref().unwrap_or("no model folder")
                ),
            )
        })
    }

    /// The archive, for one search or write. A request that panicked while holding it
    /// leaves the lock poisoned: the next holder takes it over and reloads the index from
    /// the store (the store is the truth; the index may have been left half-changed), so
    /// one failure never disables a model until restart.
    pub fn lock(&self) -> Result<std::sync::MutexGuard<'_, Archive<Store>>, ApiError> {
        Ok(self.archive.lock().unwrap_or_else(|poisoned| {
            self.archive.clear_poison();
            let mut archive = poisoned.into_inner();
            archive.mark_stale();
            tracing::warn!(
                model = %self.info.name,
                "a request failed while holding this model; its index is reloaded"
            );
            archive
        }))
    }

    /// Cases in the index, without waiting: `None` while a request holds the model.
    pub fn cases_now(&self) -> Option<usize> {
        match self.archive.try_lock() {
            Ok(a) => Some(a.len()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().len()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

pub struct AppState {
    pub config: ServeConfig,
    pub slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Models of the store that could not be loaded, with why: shown as unavailable in
    /// `/readyz` and `/api/v1/models`, retried on the next refresh, never fatal to the
    /// other models.
    pub unavailable: RwLock<BTreeMap<String, String>>,
    /// Permits for blocking work (decode, networks, searches). A permit moves into the
    /// blocking task and is released when that work ends, not when its request times
    /// out, so the limit holds for the work itself.
    pub work: Arc<tokio::sync::Semaphore>,
    /// Opaque case ids, when configured.
    pub opaque: Option<medret_search::opaque::OpaqueIds>,
    /// Memory for decoding uploads, shared by every request.
    pub decode_budget: crate::upload::DecodeBudget,
    pub metrics: Metrics,
    device: burn::prelude::Device,
    /// A connection for writes that concern every model (deletes) and for readiness.
    pub admin: Mutex<Store>,
    /// The PACS client, when configured.
    pub pacs: Option<medret_pacs::DicomWeb>,
}

impl AppState {
    /// Opens the store and loads every model in it.
    pub fn open(config: ServeConfig) -> Result<Self, ApiError> {
        if !is_url(&config.store) && !config.store.exists() {
            return Err(ApiError::not_found(format!(
                "{}: no such store",
                shown(&config.store)
            )));
        }
        let device =
            medret_models::device::parse_device(&config.device).map_err(ApiError::bad_request)?;
        let mut admin = open_store(&config.store)?;
        let upload_dir = upload_dir_of(&config);
        if config.token.is_some() && !config.read_only {
            check_upload_dir(&config, &upload_dir)?;
        }
        let swept = medret_search::ingest::sweep_uploads(&mut *admin, &upload_dir)?;
        if swept != Default::default() {
            tracing::info!(
                completed = swept.completed,
                removed = swept.removed,
                "upload folder: finished or undone what an interrupted ingest left"
            );
        }
        let config_budget = config.decode_budget_mib;
        let opaque = if config.opaque_ids {
            Some(medret_search::opaque::OpaqueIds::for_store(&mut *admin)?)
        } else {
            None
        };
        let work = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        let pacs = match &config.pacs {
            Some(p) => {
                let auth = medret_pacs::Auth::load(p.auth_file.as_deref())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(
                    medret_pacs::DicomWeb::new(
                        &p.url,
                        auth,
                        p.ca_file.as_deref(),
                        medret_pacs::dicomweb::Limits {
                            request: config.timeout,
                            retries: 2,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                )
            }
            None => None,
        };
        let state = AppState {
            config,
            slots: RwLock::new(BTreeMap::new()),
            unavailable: RwLock::new(BTreeMap::new()),
            work,
            decode_budget: crate::upload::DecodeBudget::new(config_budget),
            opaque,
            metrics: Metrics::default(),
            device,
            admin: Mutex::new(admin),
            pacs,
        };
        state.refresh_models()?;
        Ok(state)
    }

    pub fn writes_enabled(&self) -> bool {
        self.config.token.is_some() && !self.config.read_only
    }

    pub fn model_count(&self) -> usize {
        self.slots.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Loads models that appeared in the store since (another process built them) and
    /// drops those that vanished.
    pub fn refresh_models(&self) -> Result<(), ApiError> {
        let info = self.admin_store().info()?;
        let names: Vec<String> = info.models.iter().map(|(m, _)| m.name.clone()).collect();
        let missing: Vec<String> = {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .filter(|n| !slots.contains_key(*n))
                .cloned()
                .collect()
        };
        let mut loaded = Vec::new();
        let mut failed = BTreeMap::new();
        for name in missing {
            match self.load(&name) {
                Ok(slot) => loaded.push((name.clone(), Arc::new(slot))),
                Err(e) => {
                    tracing::error!(model = %name, error = %e.message, "model unavailable");
                    failed.insert(name, e.message);
                }
            }
        }
        *self.unavailable.write().unwrap_or_else(|p| p.into_inner()) = failed;
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots.retain(|n, _| names.contains(n));
        for (n, s) in loaded {
            slots.entry(n).or_insert(s);
        }
        Ok(())
    }

    fn load(&self, name: &str) -> Result<Slot, ApiError> {
        let store = open_store(&self.config.store)?;
        let archive = Archive::open_with(store, name, FloatSearch::Auto)?;
        let info = archive.model().clone();
        let approximate = archive.is_approximate();
        let (encoder, no_encoder) = match ModelBinding::from_config_hash(&info.config_hash) {
            None => (
                None,
                Some("its vectors were ingested from files".to_string()),
            ),
            Some(b) => match Encoder::open(&b.model_dir, &self.device) {
                Ok(e) => match b.check(&e.card, &b.model_dir, name, &shown(&self.config.store)) {
                    Ok(()) => (Some(Arc::new(e)), None),
                    Err(err) => (None, Some(err.to_string())),
                },
                Err(err) => (
                    None,
                    Some(format!("its model folder cannot be opened: {err}")),
                ),
            },
        };
        if let Some(why) = &no_encoder {
            tracing::warn!(model = name, reason = %why, "model serves searches by case only");
        }
        Ok(Slot {
            info,
            archive: Mutex::new(archive),
            encoder,
            no_encoder,
            approximate,
        })
    }

    /// The slot of `model`, loading it if the store gained it since.
    pub fn slot(&self, model: &str) -> Result<Arc<Slot>, ApiError> {
        if let Some(s) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
        {
            return Ok(s.clone());
        }
        self.refresh_models()?;
        if let Some(why) = self
            .unavailable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model `{model}` is unavailable: {why}"),
            ));
        }
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no model `{model}` in this store")))
    }

    pub fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// How responses name case `id` (key `key`): its opaque id, or its key.
    pub fn shown_id(&self, id: u64, key: &str) -> String {
        match &self.opaque {
            Some(o) => o.encode(id),
            None => key.to_string(),
        }
    }

    /// The admin store connection. A panic while it was held leaves nothing half-done in
    /// it (every write is one transaction), so a poisoned lock is simply taken over.
    pub fn admin_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.admin.lock().unwrap_or_else(|p| {
            self.admin.clear_poison();
            p.into_inner()
        })
    }

    /// The case a request names (by opaque id when those are on; an archive case id is
    /// then not accepted, so a client cannot probe for patient numbers).
    pub fn find_case(&self, given: &str) -> Result<medret_store::Case, ApiError> {
        let not_found = || ApiError::not_found(format!("no case `{given}`"));
        let mut store = self.admin_store();
        match &self.opaque {
            Some(o) => store.case(o.decode(given).ok_or_else(not_found)?)?,
            None => store.case_by_key(given)?,
        }
        .ok_or_else(not_found)
    }

    /// Where ingested images go.
    pub fn upload_dir(&self) -> PathBuf {
        upload_dir_of(&self.config)
    }

    /// A stored image path: an image the server wrote (`upload:<name>`) in the upload
    /// folder, any other path resolved against the image root when relative.
    pub fn image_path(&self, stored: &str) -> PathBuf {
        if let Some(name) = medret_search::ingest::uploaded_file_name(stored) {
            return self.upload_dir().join(name);
        }
        let p = Path::new(stored);
        match &self.config.image_root {
            Some(root) if p.is_relative() => root.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// Where ingested images go: `--upload-dir`, or beside a SQLite store `<store>.images`.
pub fn upload_dir_of(config: &ServeConfig) -> PathBuf {
    match &config.upload_dir {
        Some(d) => d.clone(),
        None if !is_url(&config.store) => {
            let mut p = config.store.clone().into_os_string();
            p.push(".images");
            PathBuf::from(p)
        }
        None => PathBuf::from("medret-images"),
    }
}

/// A server that takes writes must keep the images it writes where every replica reads
/// them: with a PostgreSQL store (replicas on several hosts) the folder must be given,
/// as an absolute path (a shared mount); and it must be writable now, not at the first
/// ingest.
fn check_upload_dir(config: &ServeConfig, dir: &Path) -> Result<(), ApiError> {
    if is_url(&config.store) && !config.upload_dir.as_ref().is_some_and(|d| d.is_absolute()) {
        return Err(ApiError::bad_request(
            "a server with writes on a PostgreSQL store needs --upload-dir, an absolute path that every replica shares (a network mount): the images it stores must be readable from each",
        ));
    }
    std::fs::create_dir_all(dir)
        .and_then(|_| tempfile::NamedTempFile::new_in(dir).map(drop))
        .map_err(|e| {
            ApiError::internal(format!(
                "the upload folder {} is not writable: {e}",
                dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medret_store::{ModelKind, NewCase, SqliteStore};

    /// A request that panics while holding a model must not disable it until restart:
    /// the next request takes the lock over and the index is reloaded from the store.
    #[test]
    fn a_poisoned_model_lock_is_taken_over_and_the_index_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let info = ModelInfo {
            name: "h".into(),
            kind: ModelKind::codes(8),
            config_hash: String::new(),
        };
        let case = |key: &str| NewCase {
            key: key.into(),
            path: String::new(),
            labels: vec![],
            grade: None,
            patient_id: String::new(),
            study: serde_json::Value::Null,
        };
        store
            .create_and_ingest(&info, &[(case("a"), vec![1]), (case("b"), vec![2])])
            .unwrap();
        let boxed: Store = Box::new(SqliteStore::open(&path).unwrap());
        let slot = Arc::new(Slot {
            info,
            archive: Mutex::new(Archive::open(boxed, "h").unwrap()),
            encoder: None,
            no_encoder: None,
            approximate: false,
        });
        let s = slot.clone();
        let panicked = std::thread::spawn(move || {
            let _held = s.archive.lock().unwrap();
            panic!("a request fails while holding the model");
        })
        .join();
        assert!(panicked.is_err() && slot.archive.is_poisoned());
        assert_eq!(slot.cases_now(), Some(2));
        let mut archive = slot.lock().expect("the lock is taken over, not an error");
        assert!(archive.is_stale(), "the index must be reloaded before use");
        assert!(archive.sync().unwrap());
        assert_eq!(archive.len(), 2);
        drop(archive);
        assert!(!slot.archive.is_poisoned());
    }
}
