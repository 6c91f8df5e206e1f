//! `medret train classify`: the training engine on image classification, with progress
//! bars, and a final report on the held-out test split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use medret_data::Split;
use medret_models::Arch;
use medret_train::classify::{ClassifySettings, ClassifyTask};
use medret_train::{
    EarlyStopping, Event, OptimizerConfig, RunOptions, ScheduleConfig, TrainConfig, train,
};

use crate::OpenArgs;
use crate::progress;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train a DenseNet classifier: multi-label findings (BCE) on chest X-rays, DR grade
    /// (cross-entropy) on fundus photographs. Writes checkpoints every epoch, logs, the
    /// best weights (torchvision names) and a test-split report to --out.
    Classify(ClassifyArgs),
    /// Train the chest method: global network, saliency-guided crop, local network, fused
    /// features, hash layer (classification + quantization + bit-balance losses). Writes
    /// model.safetensors and model.json (what `encode`, `index build --model` and
    /// `search --image` read), checkpoints, logs and a test-split retrieval report.
    Hash(crate::hash::HashArgs),
    /// Train the fundus method: mirror attention over flipped views, GeM descriptors, the
    /// fine triplet loss on P x K batches over DR grades. Writes model.safetensors and
    /// model.json (float descriptors, searched by cosine), checkpoints, logs and a test
    /// report.
    Metric(crate::metric::MetricArgs),
}

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

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    data: DataArg,
    /// Architecture: densenet121 (the default, as in the paper) or densenet-tiny (tests,
    /// CPU demo).
    #[arg(long, default_value = "densenet121")]
    arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Output folder (created; must not hold checkpoints unless --resume).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Fraction of training patients held out for validation.
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Turn augmentation off.
    #[arg(long)]
    no_augment: bool,
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
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
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

pub fn run(cmd: &TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Classify(a) => classify(a),
        TrainCommand::Hash(a) => crate::hash::run(a),
        TrainCommand::Metric(a) => crate::metric::run(a),
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

const CLASSIFY_DEFAULTS: Defaults = Defaults {
    batch_size: 16,
    lr: 1e-3,
    optimizer: OptimizerArg::Adamw,
    monitor: "auc",
};

fn classify(a: &ClassifyArgs) -> Result<()> {
    let ds = a.data.open()?;
    let cfg = train_config(&a.engine, &CLASSIFY_DEFAULTS)?;
    let mut settings = ClassifySettings::for_dataset(&ds, a.arch.name(), a.size)?;
    settings.val_fraction = a.val_fraction;
    if a.no_augment {
        settings.transform.augment = Default::default();
    }
    let opts = run_options(&a.engine, &a.out)?;
    let task = ClassifyTask::new(&ds, settings, cfg.seed)?;
    let test: Vec<_> = ds
        .records
        .iter()
        .filter(|r| r.split == Some(Split::Test) && !r.is_unlabelled())
        .cloned()
        .collect();
    eprintln!(
        "training {} ({:?}, {} classes) on {} images, validating on {}, testing on {}",
        a.arch,
        task.settings.mode,
        task.settings.classes.len(),
        task.train.len(),
        task.val.len(),
        test.len()
    );
    let outcome = train_with_progress(&task, &cfg, &opts)?;
    let weights = final_weights(&outcome, &a.out)?;
    let report = test_report(&task, &a.out, &weights, &test, &opts.devices[0])?;
    std::fs::write(
        a.out.join("test_report.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("cannot write {}", a.out.join("test_report.json").display()))?;
    if a.engine.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "trained {} epochs ({} steps); best epoch {} ({} {:.4})",
            outcome.epochs,
            outcome.steps,
            outcome.best_epoch.map(|e| e + 1).unwrap_or(0),
            cfg.early_stopping.metric,
            outcome.best_value.unwrap_or(f64::NAN)
        );
        if let Some(m) = report.get("test").and_then(|t| t.as_object()) {
            let line: Vec<String> = m
                .iter()
                .filter(|(k, _)| k.as_str() != "auc_labels")
                .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            println!("test split ({} images): {}", test.len(), line.join(", "));
        }
        println!("weights: {}", weights.display());
    }
    Ok(())
}

fn test_report(
    task: &ClassifyTask,
    out: &Path,
    weights: &Path,
    test: &[medret_data::Record],
    device: &burn::prelude::Device,
) -> Result<serde_json::Value> {
    let (_, model) = medret_train::classify::load_trained(out, weights, device)?;
    if test.is_empty() {
        return Ok(serde_json::json!({"weights": weights, "test_images": 0}));
    }
    let probs = task.predict(&model, test, device, 32)?;
    let metrics = task.score(&probs, test);
    let per_class: serde_json::Map<String, serde_json::Value> = task
        .per_class_auc(&probs, test)
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.map_or(serde_json::Value::Null, serde_json::Value::from),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "weights": weights,
        "test_images": test.len(),
        "test": metrics,
        "test_auc_per_class": per_class,
    }))
}
