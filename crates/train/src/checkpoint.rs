//! Checkpoints: `checkpoints/epoch-NNNN/` holding `model.safetensors` (the task's weights,
//! torchvision names for DenseNet), `optimizer.bpk` (burn's optimiser state),
//! `state.json` (epoch, step, best so far) and `config.json` (every hyper-parameter, the
//! dataset fingerprint and the seed).
//!
//! A checkpoint is written into `epoch-NNNN.partial/` and renamed into place only when
//! complete, so a crash mid-write leaves the previous checkpoint as the newest one.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::config::Metrics;
use crate::config::RunConfig;
use crate::error::{Result, TrainError, io_err};

/// Progress through a run, saved with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// 0-based epoch with the best monitored metric, and its value.
    pub best_epoch: Option<usize>,
    pub best_value: Option<f64>,
    pub epochs_since_best: usize,
    pub last_metrics: Metrics,
}

/// A complete checkpoint on disk.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub state: TrainState,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let config: RunConfig = read_json(&dir.join("config.json"))?;
        let state: TrainState = read_json(&dir.join("state.json"))?;
        let ck = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            state,
        };
        for p in [ck.weights_path(), ck.optimizer_path()] {
            if !p.is_file() {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!("{} is missing", p.display()),
                });
            }
        }
        Ok(ck)
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join("optimizer.bpk")
    }

    /// Resuming is allowed when everything but the number of epochs (and the logging
    /// interval) is unchanged: more epochs may be asked for; other data or other
    /// hyper-parameters would make a different run.
    pub fn check_compatible(&self, run: &RunConfig) -> Result<()> {
        let err = |m: String| {
            Err(TrainError::Resume {
                path: self.dir.clone(),
                message: m,
            })
        };
        if self.config.dataset_fingerprint != run.dataset_fingerprint {
            return err(format!(
                "the data differ from the checkpoint's (fingerprint {} now, {} then)",
                short(&run.dataset_fingerprint),
                short(&self.config.dataset_fingerprint)
            ));
        }
        if self.config.task_kind != run.task_kind || self.config.task != run.task {
            return err(format!(
                "the task settings differ: checkpoint {}, now {}",
                self.config.task, run.task
            ));
        }
        let mut then = self.config.train.clone();
        let mut now = run.train.clone();
        then.epochs = 0;
        now.epochs = 0;
        then.log_every = 0;
        now.log_every = 0;
        if then != now {
            return err(format!(
                "the training settings differ: checkpoint {}, now {}",
                serde_json::to_string(&self.config.train).unwrap_or_default(),
                serde_json::to_string(&run.train).unwrap_or_default()
            ));
        }
        if self.state.epoch > run.train.epochs {
            return err(format!(
                "the checkpoint has already trained {} epochs, more than the {} asked for",
                self.state.epoch, run.train.epochs
            ));
        }
        Ok(())
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

fn epoch_dir_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Complete checkpoints, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the checkpoint for the epoch just completed (`state.epoch`).
pub fn save(
    root: &Path,
    run: &RunConfig,
    state: &TrainState,
    optim: &ModuleOptimizer,
    save_weights: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = epoch_dir_name(state.epoch);
    let dir = root.join(&name);
    let partial = root.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_err(&partial))?;
    save_weights(&partial.join("model.safetensors"))?;
    optim
        .save(partial.join("optimizer.bpk"))
        .map_err(|e| TrainError::Checkpoint {
            path: partial.join("optimizer.bpk"),
            message: e.to_string(),
        })?;
    write_json(&partial.join("state.json"), state)?;
    write_json(&partial.join("config.json"), run)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&partial, &dir).map_err(io_err(&dir))?;
    Ok(dir)
}

/// Removes all but the newest `keep` checkpoints.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    let n = all.len().saturating_sub(keep);
    for (_, p) in all.into_iter().take(n) {
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("configs serialise");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a valid file of this kind: {e}"),
    })
}
