//! What every training command shares: the engine's options (`EngineArgs`), the dataset
//! argument, presets, per-command defaults, and the loop with progress bars. `train`
//! (classify), `hash`, `metric` and `pretrain` take these from here rather than from each
//! other, so the command modules import no one in a circle.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use medret_train::{
    EarlyStopping, Event, OptimizerConfig, RunOptions, ScheduleConfig, TrainConfig, train,
};

use crate::OpenArgs;
use crate::progress;

/// `--preset` of `train hash` and `train metric` (expanded into flags before parsing:
/// crate::preset).
#[derive(Clone, Copy, ValueEnum)]
pub enum PresetArg {
    /// A 2-core CPU and a few hundred labelled images, within 30 minutes.
    Cpu,
}

impl PresetArg {
    pub fn name(self) -> &'static str {
        match self {
            PresetArg::Cpu => "cpu",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Step,
    Constant,
}

/// The training engine's options, shared by every training command.
#[derive(Args, Clone)]
pub struct EngineArgs {
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Mini-batch size (default 16; C2L: 128, scaled down to small datasets).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate after warm-up (default 1e-3; C2L: 0.03 with SGD).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimiser (default adamw; C2L: sgd).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Weight decay (decoupled for AdamW, L2 for SGD). Default 1e-2 (AdamW), 1e-4 (SGD).
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Cosine: final learning rate.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Step: decay every this many epochs...
    #[arg(long, default_value_t = 10)]
    pub step_epochs: usize,
    /// ...by this factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Linear warm-up, in epochs (may be fractional).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[arg(long, default_value_t = 5.0)]
    pub clip_norm: f32,
    /// Validation metric for the best checkpoint and early stopping (classify: auc, loss,
    /// kappa, accuracy; hash: healthy_map (the default: map, epochs with collapsed
    /// validation codes last), map, auc, loss).
    #[arg(long)]
    pub monitor: Option<String>,
    /// Stop after this many epochs without improvement of --monitor.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Seeds initialisation, the validation split, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device(s): cpu, or gpu:N in a GPU build (`medret devices`); several (gpu:0,gpu:1) train
    /// data-parallel.
    #[arg(
        long,
        visible_alias = "devices",
        default_value = "cpu",
        value_delimiter = ','
    )]
    pub device: Vec<String>,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Return after this many epochs (checkpointed) to resume later.
    #[arg(long)]
    pub stop_after_epochs: Option<usize>,
    /// Keep only the newest N epoch checkpoints.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct DataArg {
    /// Dataset folder or file (as for `medret data info`).
    #[arg(long = "data", visible_alias = "manifest")]
    pub path: PathBuf,
    /// Format; detected from the files when omitted.
    #[arg(long, value_enum)]
    pub format: Option<crate::FormatArg>,
    /// NIH label set: 8 or 14 findings.
    #[arg(long, default_value_t = 14)]
    pub labels: u8,
    /// Skip bad rows and unreadable images with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// DICOM: the frame read from each multi-frame file, from 1 (default: the first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub frame: u32,
}

impl DataArg {
    pub fn open(&self) -> Result<medret_data::Dataset> {
        OpenArgs {
            path: self.path.clone(),
            format: self.format,
            labels: self.labels,
            skip_bad: self.skip_bad,
            frame: self.frame,
        }
        .open()
    }
}

/// Per-command defaults of [`EngineArgs`].
pub struct Defaults {
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerArg,
    pub monitor: &'static str,
}

pub fn train_config(a: &EngineArgs, d: &Defaults) -> Result<TrainConfig> {
    let optimizer = match a.optimizer.unwrap_or(d.optimizer) {
        OptimizerArg::Adamw => OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay.unwrap_or(1e-2),
        },
        OptimizerArg::Sgd => OptimizerConfig::Sgd {
            momentum: a.momentum,
            nesterov: a.nesterov,
            weight_decay: a.weight_decay.unwrap_or(1e-4),
        },
    };
    let schedule = match a.schedule {
        ScheduleArg::Cosine => ScheduleConfig::Cosine { min_lr: a.min_lr },
        ScheduleArg::Step => ScheduleConfig::Step {
            every_epochs: a.step_epochs,
            gamma: a.gamma,
        },
        ScheduleArg::Constant => ScheduleConfig::Constant,
    };
    let monitor = a.monitor.clone().unwrap_or_else(|| d.monitor.to_string());
    let higher_is_better = match monitor.as_str() {
        "auc" | "kappa" | "accuracy" | "map" | "global_auc" | "healthy_map" => true,
        "loss" => false,
        other => bail!(
            "--monitor {other}: expected auc, map, healthy_map (hash), loss, kappa or accuracy"
        ),
    };
    Ok(TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size.unwrap_or(d.batch_size),
        lr: a.lr.unwrap_or(d.lr),
        optimizer,
        schedule,
        warmup_epochs: a.warmup_epochs,
        grad_clip_norm: (a.clip_norm > 0.0).then_some(a.clip_norm),
        early_stopping: EarlyStopping {
            metric: monitor,
            higher_is_better,
            patience: a.patience,
            min_delta: 0.0,
        },
        seed: a.seed,
        log_every: 1,
    })
}

pub fn devices(a: &EngineArgs) -> Result<Vec<burn::prelude::Device>> {
    a.device
        .iter()
        .map(|d| medret_models::device::parse_device(d).map_err(anyhow::Error::msg))
        .collect()
}

pub fn run_options(a: &EngineArgs, out: &Path) -> Result<RunOptions> {
    Ok(RunOptions {
        out: out.to_path_buf(),
        devices: devices(a)?,
        resume: a.resume,
        keep_checkpoints: a.keep_checkpoints,
        stop_after_epochs: a.stop_after_epochs,
    })
}

/// Runs the engine with a progress bar per epoch and a line per epoch on stderr.
pub fn train_with_progress<T: medret_train::Task>(
    task: &T,
    cfg: &TrainConfig,
    opts: &RunOptions,
) -> Result<medret_train::Outcome> {
    let mut bar = progress::bar(0, "epoch");
    let epochs = cfg.epochs;
    Ok(train(task, cfg, opts, &mut |e| match e {
        Event::EpochStart { epoch, steps } => {
            bar = progress::bar(steps as u64, &format!("epoch {}/{epochs}", epoch + 1));
        }
        Event::Step(s) => {
            bar.set_message(format!("loss {:.4}", s.loss));
            bar.inc(1);
        }
        Event::Epoch(r) => {
            bar.finish_and_clear();
            let metrics: Vec<String> = r
                .metrics
                .iter()
                .filter(|(k, v)| k.as_str() != "auc_labels" && v.is_finite())
                .map(|(k, v)| format!("val {k} {v:.4}"))
                .collect();
            eprintln!(
                "epoch {:>3}: train loss {:.4}, {}{} ({:.1} s)",
                r.epoch + 1,
                r.train_loss,
                metrics.join(", "),
                if r.best { " *" } else { "" },
                r.seconds
            );
        }
        Event::Stopped { reason } => eprintln!("{reason}"),
    })?)
}

pub use medret_train::export::final_weights;
