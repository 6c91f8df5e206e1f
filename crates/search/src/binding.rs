//! Which trained model made a store model's vectors. Kept in the store's `config_hash`
//! field as JSON: the model folder and its `model.json`, whose `weights_sha256` and
//! `checksum` identify the model. A query image is encoded only by a model folder that
//! matches all of them; anything else is refused by name, since codes of another model are
//! meaningless against the archive.

use std::path::{Path, PathBuf};

use medret_models::model_card::ModelCard;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelBinding {
    pub model_dir: PathBuf,
    /// The card as it was; its `weights_sha256` and `checksum` identify the model.
    pub card: ModelCard,
    /// Built with flip test-time augmentation (`index build --flip-tta`): every image
    /// going in, and every image query, is encoded with its mirror and the two averaged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flip_tta: bool,
}

impl ModelBinding {
    pub fn new(dir: &Path, card: &ModelCard) -> Self {
        ModelBinding {
            model_dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            card: card.clone(),
            flip_tta: false,
        }
    }

    /// Whether the store model with `config_hash` was built with flip test-time
    /// augmentation (false for archives of vector files or built before it existed).
    pub fn flip_tta_of(config_hash: &str) -> bool {
        Self::from_config_hash(config_hash).is_some_and(|b| b.flip_tta)
    }

    /// The text stored in the model's `config_hash`.
    pub fn to_config_hash(&self) -> String {
        serde_json::to_string(self).expect("binding serialises")
    }

    /// The binding of a store model, if it was built from a model folder.
    pub fn from_config_hash(s: &str) -> Option<Self> {
        if !s.starts_with('{') {
            return None;
        }
        serde_json::from_str(s).ok()
    }

    /// Refuses `card` unless it is the card and weights that built the archive.
    pub fn check(&self, card: &ModelCard, dir: &Path, model: &str, store: &str) -> Result<()> {
        if card.weights_sha256 != self.card.weights_sha256 || card.checksum != self.card.checksum {
            return Err(SearchError::Model {
                model: model.into(),
                store: store.into(),
                message: format!(
                    "was built by the model in {} (weights SHA-256 {}), but {} holds weights {}: a query must be encoded by the model that built the archive",
                    self.model_dir.display(),
                    short(&self.card.weights_sha256),
                    dir.display(),
                    short(&card.weights_sha256)
                ),
            });
        }
        Ok(())
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}
