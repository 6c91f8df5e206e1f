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

    pub fn lock(&self) -> Result<std::sync::MutexGuard<'_, Archive<Store>>, ApiError> {
        self.archive
            .lock()
            .map_err(|_| ApiError::internal("an earlier request failed while holding this model"))
    }
}

pub struct AppState {
    pub config: ServeConfig,
    pub slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    pub metrics: Metrics,
    device: burn::prelude::Device,
    /// A connection for writes that concern every model (deletes) and for readiness.
    pub admin: Mutex<Store>,
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
        let admin = open_store(&config.store)?;
        let state = AppState {
            config,
            slots: RwLock::new(BTreeMap::new()),
            metrics: Metrics::default(),
            device,
            admin: Mutex::new(admin),
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
        let info = self
            .admin
            .lock()
            .map_err(|_| ApiError::internal("store connection poisoned"))?
            .info()?;
        let names: Vec<String> = info.models.iter().map(|(m, _)| m.name.clone()).collect();
        let missing: Vec<String> = {
            let slots = self.slots.read().expect("slots lock");
            names
                .iter()
                .filter(|n| !slots.contains_key(*n))
                .cloned()
                .collect()
        };
        let mut loaded = Vec::new();
        for name in missing {
            loaded.push((name.clone(), Arc::new(self.load(&name)?)));
        }
        let mut slots = self.slots.write().expect("slots lock");
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
        })
    }

    /// The slot of `model`, loading it if the store gained it since.
    pub fn slot(&self, model: &str) -> Result<Arc<Slot>, ApiError> {
        if let Some(s) = self.slots.read().expect("slots lock").get(model) {
            return Ok(s.clone());
        }
        self.refresh_models()?;
        self.slots
            .read()
            .expect("slots lock")
            .get(model)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no model `{model}` in this store")))
    }

    pub fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .expect("slots lock")
            .values()
            .cloned()
            .collect()
    }

    /// Where ingested images go.
    pub fn upload_dir(&self) -> PathBuf {
        match &self.config.upload_dir {
            Some(d) => d.clone(),
            None if !is_url(&self.config.store) => {
                let mut p = self.config.store.clone().into_os_string();
                p.push(".images");
                PathBuf::from(p)
            }
            None => PathBuf::from("medret-images"),
        }
    }

    /// A stored image path, resolved against the image root when relative.
    pub fn image_path(&self, stored: &str) -> PathBuf {
        let p = Path::new(stored);
        match &self.config.image_root {
            Some(root) if p.is_relative() => root.join(p),
            _ => p.to_path_buf(),
        }
    }
}
