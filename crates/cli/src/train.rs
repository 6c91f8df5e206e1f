//! `medret train classify`: the training engine on image classification, with progress
//! bars, and a final report on the held-out test split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use medret_data::Split;
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
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Cosine,
    Step,
    Constant,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    data: DataArg,
    /// Architecture: densenet121 (the default, as in the paper) or tiny (tests, CPU demo).
    #[arg(long, default_value = "densenet121")]
    arch: String,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Output folder (created; must not hold checkpoints unless --resume).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimizerArg,
    /// Weight decay (decoupled for AdamW, L2 for SGD). Default 1e-2 (AdamW), 1e-4 (SGD).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Cosine: final learning rate.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    /// Step: decay every this many epochs...
    #[arg(long, default_value_t = 10)]
    step_epochs: usize,
    /// ...by this factor.
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    /// Linear warm-up, in epochs (may be fractional).
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[arg(long, default_value_t = 5.0)]
    clip_norm: f32,
    /// Validation metric for the best checkpoint and early stopping: auc, loss, kappa,
    /// accuracy.
    #[arg(long, default_value = "auc")]
    monitor: String,
    /// Stop after this many epochs without improvement of --monitor.
    #[arg(long)]
    patience: Option<usize>,
    /// Fraction of training patients held out for validation.
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Seeds initialisation, the validation split, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute device(s): cpu, or cuda:N in a GPU build; several (cuda:0,cuda:1) train
    /// data-parallel.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    device: Vec<String>,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Return after this many epochs (checkpointed) to resume later.
    #[arg(long)]
    stop_after_epochs: Option<usize>,
    /// Keep only the newest N epoch checkpoints.
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Turn augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DataArg {
    /// Dataset folder or file (as for `medret data info`).
    #[arg(long = "data")]
    path: PathBuf,
    /// Format; detected from the files when omitted.
    #[arg(long, value_enum)]
    format: Option<crate::FormatArg>,
    /// NIH label set: 8 or 14 findings.
    #[arg(long, default_value_t = 14)]
    labels: u8,
    /// Skip bad rows and unreadable images with a warning instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Classify(a) => classify(a),
    }
}

fn train_config(a: &ClassifyArgs) -> Result<TrainConfig> {
    let optimizer = match a.optimizer {
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
    let higher_is_better = match a.monitor.as_str() {
        "auc" | "kappa" | "accuracy" => true,
        "loss" => false,
        other => bail!("--monitor {other}: expected auc, loss, kappa or accuracy"),
    };
    Ok(TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        optimizer,
        schedule,
        warmup_epochs: a.warmup_epochs,
        grad_clip_norm: (a.clip_norm > 0.0).then_some(a.clip_norm),
        early_stopping: EarlyStopping {
            metric: a.monitor.clone(),
            higher_is_better,
            patience: a.patience,
            min_delta: 0.0,
        },
        seed: a.seed,
        log_every: 1,
    })
}

fn classify(a: &ClassifyArgs) -> Result<()> {
    let open = OpenArgs {
        path: a.data.path.clone(),
        format: a.data.format,
        labels: a.data.labels,
        skip_bad: a.data.skip_bad,
    };
    let ds = open.open()?;
    let cfg = train_config(a)?;
    let mut settings = ClassifySettings::for_dataset(&ds, &a.arch, a.size)?;
    settings.val_fraction = a.val_fraction;
    if a.no_augment {
        settings.transform.augment = Default::default();
    }
    let devices = a
        .device
        .iter()
        .map(|d| medret_models::device::parse_device(d).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
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

    let opts = RunOptions {
        out: a.out.clone(),
        devices: devices.clone(),
        resume: a.resume,
        keep_checkpoints: a.keep_checkpoints,
        stop_after_epochs: a.stop_after_epochs,
    };
    let mut bar = progress::bar(0, "epoch");
    let epochs = cfg.epochs;
    let outcome = train(&task, &cfg, &opts, &mut |e| match e {
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
                .filter(|(k, _)| k.as_str() != "auc_labels")
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
    })?;

    let weights = if outcome.best_weights.is_file() {
        outcome.best_weights.clone()
    } else {
        // No validation set: the last checkpoint is what there is.
        medret_train::checkpoint::latest(&a.out.join("checkpoints"))?
            .context("no checkpoint was written")?
            .join("model.safetensors")
    };
    let report = test_report(&task, &a.out, &weights, &test, &devices[0])?;
    std::fs::write(
        a.out.join("test_report.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("cannot write {}", a.out.join("test_report.json").display()))?;
    if a.json {
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
