//! `medret train classify`: the training engine on image classification, with progress
//! bars, and a final report on the held-out test split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medret_data::Split;
use medret_models::Arch;
use medret_train::classify::{ClassifySettings, ClassifyTask};

use crate::engine_args::{
    DataArg, Defaults, EngineArgs, OptimizerArg, final_weights, run_options, train_config,
    train_with_progress,
};

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

pub fn run(cmd: &TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Classify(a) => classify(a),
        TrainCommand::Hash(a) => crate::hash::run(a),
        TrainCommand::Metric(a) => crate::metric::run(a),
    }
}

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
