//! A finished run to a model folder: the weights to keep (the best epoch's, else the last
//! checkpoint's) copied to `model.safetensors`, and the task's model card written beside
//! them as `model.json` with their hash. What `encode`, `index build --model` and
//! `search --image` open.

use std::path::{Path, PathBuf};

use medret_models::model_card::{ModelCard, WEIGHTS_FILE};

use crate::engine::Outcome;
use crate::error::{Result, TrainError};

/// The best epoch's weights, or the last checkpoint's when nothing was validated.
pub fn final_weights(outcome: &Outcome, out: &Path) -> Result<PathBuf> {
    if outcome.best_weights.is_file() {
        return Ok(outcome.best_weights.clone());
    }
    let ckpt = out.join("checkpoints");
    Ok(crate::checkpoint::latest(&ckpt)?
        .ok_or_else(|| TrainError::Checkpoint {
            path: ckpt,
            message: "no checkpoint was written".into(),
        })?
        .join("model.safetensors"))
}

/// Copies the final weights to `out/model.safetensors` and writes `card` as
/// `out/model.json`; returns the card as written (with the weights' hash).
pub fn export_model(outcome: &Outcome, out: &Path, card: ModelCard) -> Result<ModelCard> {
    let weights = final_weights(outcome, out)?;
    let model = out.join(WEIGHTS_FILE);
    std::fs::copy(&weights, &model).map_err(crate::error::io_err(&model))?;
    card.write(out).map_err(|e| TrainError::Checkpoint {
        path: out.join("model.json"),
        message: e.to_string(),
    })
}
