//! `medret pretrain c2l`: self-supervised pretraining of a backbone on any images the
//! readers open (labels ignored), written as `backbone.safetensors` for `--init`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medret_models::Arch;
use medret_train::c2l::{
    C2lSettings, C2lTask, export_backbone, knn_report, load_c2l, scaled_sizes,
};

use crate::engine_args::{
    DataArg, Defaults, EngineArgs, OptimizerArg, final_weights, run_options, train_config,
    train_with_progress,
};

#[derive(Subcommand)]
pub enum PretrainCommand {
    /// C2L (Comparing to Learn): MoCo-style contrastive learning with mixup. Writes
    /// backbone.safetensors (features.*, torchvision names), checkpoints and logs.
    C2l(C2lArgs),
}

#[derive(Args)]
pub struct C2lArgs {
    #[command(flatten)]
    data: DataArg,
    #[arg(long, default_value = "densenet121")]
    arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Output folder: backbone.safetensors, checkpoints, logs.
    #[arg(long)]
    out: PathBuf,
    /// Negative keys in the queue (scaled down below the number of images).
    #[arg(long, default_value_t = 16_384)]
    queue: usize,
    /// Projection width.
    #[arg(long, default_value_t = 128)]
    proj_dim: usize,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.07)]
    temperature: f64,
    /// EMA momentum of the key encoder.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Turn the mixup terms off (plain MoCo).
    #[arg(long)]
    no_mixup: bool,
    /// Groups the key batch is normalised in (one-device ShuffleBN); 1 turns it off.
    #[arg(long, default_value_t = 2)]
    shuffle_bn_groups: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

const C2L_DEFAULTS: Defaults = Defaults {
    batch_size: 128,
    lr: 0.03,
    optimizer: OptimizerArg::Sgd,
    monitor: "loss",
};

pub fn run(cmd: &PretrainCommand) -> Result<()> {
    match cmd {
        PretrainCommand::C2l(a) => c2l(a),
    }
}

fn c2l(a: &C2lArgs) -> Result<()> {
    let ds = a.data.open()?;
    let mut cfg = train_config(&a.engine, &C2L_DEFAULTS)?;
    let mut s = C2lSettings::new(a.arch, a.size);
    s.net.proj_dim = a.proj_dim;
    s.temperature = a.temperature;
    s.momentum = a.ema;
    s.mixup = !a.no_mixup;
    s.shuffle_bn_groups = a.shuffle_bn_groups;
    let usable = ds
        .records
        .iter()
        .filter(|r| r.split != Some(medret_data::Split::Test))
        .count();
    let (queue, batch) = scaled_sizes(usable, a.queue, cfg.batch_size);
    if queue != a.queue || batch != cfg.batch_size {
        let msg = format!(
            "{usable} images: queue {} -> {queue}, batch {} -> {batch} (the queue must hold fewer keys than there are images)",
            a.queue, cfg.batch_size
        );
        tracing::warn!("{msg}");
        eprintln!("{msg}");
    }
    s.net.queue = queue;
    cfg.batch_size = batch;
    let opts = run_options(&a.engine, &a.out)?;
    let task = C2lTask::new(&ds, s, cfg.seed)?;
    eprintln!(
        "C2L pretraining {} on {} images ({} steps an epoch)",
        a.arch,
        task.images.len(),
        medret_train::Task::steps_per_epoch(&task, cfg.batch_size)
    );
    let started = std::time::Instant::now();
    let outcome = train_with_progress(&task, &cfg, &opts)?;
    let weights = final_weights(&outcome, &a.out)?;
    let model = load_c2l(&task.settings, &weights, &opts.devices[0])?;
    let path = a.out.join("backbone.safetensors");
    export_backbone(&model, &task.settings.net.backbone, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Does the backbone retrieve better than a random one? Only where labels exist.
    let labelled = |test: bool| -> Vec<medret_data::Record> {
        ds.records
            .iter()
            .filter(|r| !r.is_unlabelled() && (r.split == Some(medret_data::Split::Test)) == test)
            .cloned()
            .collect()
    };
    let (database, queries) = (labelled(false), labelled(true));
    let knn = if database.is_empty() || queries.is_empty() {
        serde_json::Value::Null
    } else {
        let device = &opts.devices[0];
        let c2l = knn_report(&model.backbone(), &database, &queries, a.size, device)?;
        device.seed(cfg.seed);
        let random_net = medret_models::DenseNetConfig {
            num_classes: None,
            ..task.settings.net.backbone.clone()
        }
        .init(device);
        let random = knn_report(&random_net, &database, &queries, a.size, device)?;
        serde_json::json!({"c2l": c2l, "random_init": random})
    };
    let summary = serde_json::json!({
        "knn_test_to_train": knn,
        "backbone": path,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "seconds": started.elapsed().as_secs_f64(),
        "queue": queue,
        "batch_size": batch,
    });
    if a.engine.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "pretrained {} epochs in {:.0} s; backbone: {}",
            outcome.epochs,
            started.elapsed().as_secs_f64(),
            path.display()
        );
        if !knn.is_null() {
            let f = |k: &str, m: &str| knn[k][m].as_f64().unwrap_or(f64::NAN);
            println!(
                "kNN test -> train, pooled features: mAP@100 {:.4} (random init {:.4}; chance {:.4}, always-majority {:.4})",
                f("c2l", "map@100"),
                f("random_init", "map@100"),
                f("c2l", "chance_precision"),
                f("c2l", "majority_map@100"),
            );
        }
    }
    Ok(())
}
