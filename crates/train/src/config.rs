//! Every hyper-parameter of a run, serialised into each checkpoint so a run can be
//! reproduced or resumed exactly.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Validation figures by name (`loss`, `auc`, ...): what the engine monitors, the
/// checkpoints keep and the logs write.
pub type Metrics = std::collections::BTreeMap<String, f64>;

/// The optimiser. Defaults follow PyTorch, not burn: burn 0.22's AdamW defaults to
/// `eps = 1e-5` and SGD's momentum to `dampening = 0.1`, and we set both explicitly so a
/// recipe ported from a PyTorch paper means the same thing here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Decoupled weight decay (Loshchilov and Hutter).
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    /// SGD with (optionally Nesterov) momentum and L2 weight decay, PyTorch semantics
    /// (no dampening).
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    pub fn adamw() -> Self {
        OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }

    pub fn sgd() -> Self {
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        }
    }
}

/// The learning-rate schedule after warm-up, as a function of the step (see
/// [`crate::schedule`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleConfig {
    Constant,
    /// Cosine decay from the base rate to `min_lr` at the last step.
    Cosine {
        min_lr: f64,
    },
    /// Multiply by `gamma` every `every_epochs` epochs (counted from the end of warm-up).
    Step {
        every_epochs: usize,
        gamma: f64,
    },
}

/// Which validation figure decides "best" and early stopping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// A key of the task's validation metrics, e.g. `auc` or `loss`.
    pub metric: String,
    /// Larger is better (`auc`) or smaller is better (`loss`).
    pub higher_is_better: bool,
    /// Stop after this many epochs without improvement; `None` never stops early (the best
    /// epoch is still tracked).
    pub patience: Option<usize>,
    /// An improvement smaller than this does not count.
    pub min_delta: f64,
}

/// A training run's hyper-parameters. The task's own settings (architecture, input size,
/// loss) are in [`RunConfig::task`], kept as JSON so the engine stays task-agnostic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Base (peak) learning rate.
    pub lr: f64,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    /// Linear warm-up from 0 to `lr` over this many epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Clip the global L2 norm of all gradients to this value (PyTorch's
    /// `clip_grad_norm_`), not each tensor separately as burn's own clipping does.
    pub grad_clip_norm: Option<f32>,
    pub early_stopping: EarlyStopping,
    /// Seeds model initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Write a step row to the log every this many steps (1 = every step).
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 16,
            lr: 1e-3,
            optimizer: OptimizerConfig::adamw(),
            schedule: ScheduleConfig::Cosine { min_lr: 0.0 },
            warmup_epochs: 1.0,
            grad_clip_norm: Some(5.0),
            early_stopping: EarlyStopping {
                metric: "loss".into(),
                higher_is_better: false,
                patience: None,
                min_delta: 0.0,
            },
            seed: 0,
            log_every: 1,
        }
    }
}

impl TrainConfig {
    /// Rejects settings that would fail later or silently do nothing.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be positive, not {}", self.lr));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!(
                "warm-up must be >= 0 epochs, not {}",
                self.warmup_epochs
            ));
        }
        if let Some(c) = self.grad_clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("gradient clip norm must be positive, not {c}"));
        }
        match self.schedule {
            ScheduleConfig::Step {
                every_epochs: 0, ..
            } => {
                return bad("step schedule: every_epochs must be at least 1".into());
            }
            ScheduleConfig::Step { gamma, .. } if !(gamma > 0.0 && gamma.is_finite()) => {
                return bad(format!(
                    "step schedule: gamma must be positive, not {gamma}"
                ));
            }
            ScheduleConfig::Cosine { min_lr } if !(min_lr >= 0.0 && min_lr <= self.lr) => {
                return bad(format!(
                    "cosine schedule: min_lr {min_lr} must be in [0, lr]"
                ));
            }
            _ => {}
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1".into());
        }
        Ok(())
    }
}

/// What a checkpoint's `config.json` holds: the engine's settings, the task's settings and
/// the fingerprint of the data it trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    /// Task name (`classify`, ...).
    pub task_kind: String,
    pub task: serde_json::Value,
    /// See [`crate::fingerprint`].
    pub dataset_fingerprint: String,
    /// The medret version that wrote it.
    pub medret_version: String,
}
