//! `medret train hash`: the chest method end to end, from a dataset to a model folder
//! (`model.safetensors`, `model.json`) and a test-split retrieval report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use medret_data::Split;
use medret_models::Arch;
use medret_models::cxr_hash::cam_crop::Threshold;
use medret_models::cxr_hash::{Branches, SaliencyKind};
use medret_models::model_card::WEIGHTS_FILE;
use medret_train::export::export_model;
use medret_train::hash::{HashSchedule, HashSettings, HashTask, check_init, retrieval_report};

use crate::engine_args::{
    DataArg, Defaults, EngineArgs, OptimizerArg, run_options, train_config, train_with_progress,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum StagesArg {
    /// The global network first, then the local network and the fusion head (AG-CNN).
    Staged,
    /// Everything together from the first step.
    Joint,
}

#[derive(Args)]
pub struct HashArgs {
    #[command(flatten)]
    data: DataArg,
    /// Backbone of both networks: densenet121 (the default) or densenet-tiny (tests, demo).
    #[arg(long, default_value = "densenet121")]
    arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Code length: a multiple of 8 from 8 to 256 (16, 32, 48 and 64 in the paper).
    #[arg(long, default_value_t = 48)]
    bits: usize,
    /// Output folder: model.safetensors, model.json, checkpoints, logs, test_report.json.
    #[arg(long)]
    out: PathBuf,
    /// Backbone weights to start both networks from (features.*, torchvision names), e.g.
    /// `medret pretrain c2l`'s backbone.safetensors.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Which pooled features feed the hash head (ablation).
    #[arg(long, default_value = "fusion")]
    branches: Branches,
    /// The saliency map that drives the crop.
    #[arg(long, default_value = "grad-cam")]
    saliency: SaliencyKind,
    /// Crop threshold on the [0, 1] saliency map, or `otsu`.
    #[arg(long, default_value = "0.7")]
    crop_threshold: Threshold,
    /// Margin added around the crop, as a fraction of the image side.
    #[arg(long, default_value_t = 0.05)]
    crop_margin: f32,
    /// Minimum crop side, as a fraction of the image side.
    #[arg(long, default_value_t = 0.25)]
    crop_min_size: f32,
    /// What trains the hash head: `classify` (the paper's classifier after the hash
    /// layer), or the deep-hashing losses `dpsh` (pairwise likelihood) and `csq` (hash
    /// centres), on the same head and trainer.
    #[arg(long, default_value = "classify")]
    loss: medret_train::hash::HashLoss,
    /// How an epoch draws its images: `uniform` (each once), `balanced` (each class
    /// equally often, with replacement; an image with several labels counts as its
    /// rarest) or `sqrt` (in proportion to the square root of the class counts).
    #[arg(long, value_enum, default_value = "uniform")]
    sampling: SamplingArg,
    /// Weight of the quantization loss (0 turns it off).
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// Weight of the bit-balance loss (0 turns it off).
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Weight of the bit-decorrelation loss, which keeps whole classes from sharing one
    /// code (0 turns it off).
    #[arg(long, default_value_t = medret_train::hash::DEFAULT_DECORRELATION)]
    decorrelation: f64,
    /// Training stages (`--schedule` is the learning-rate schedule, shared by every
    /// training command).
    #[arg(long, value_enum, default_value = "joint")]
    stages: StagesArg,
    /// Staged: epochs of the global network alone (default a third of --epochs).
    #[arg(long)]
    global_epochs: Option<usize>,
    /// Width of the FC layer before the hash layer.
    #[arg(long, default_value_t = 512)]
    fc_dim: usize,
    /// Keep this fraction of the labelled training patients (seeded): for studying scarce
    /// labels, e.g. a C2L-initialised model against a random one.
    #[arg(long, default_value_t = 1.0)]
    label_fraction: f64,
    /// Fraction of training patients held out for validation (model selection).
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Turn augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// `cpu`: the recipe for a 2-core CPU and a few hundred labelled images
    /// (densenet-tiny, 96 px, 48 bits, 12 epochs, batch 32, lr 3e-3); any flag given
    /// explicitly overrides it. Without it, the paper's settings.
    #[arg(long, value_enum)]
    preset: Option<crate::engine_args::PresetArg>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SamplingArg {
    Uniform,
    Balanced,
    Sqrt,
}

const HASH_DEFAULTS: Defaults = Defaults {
    batch_size: 16,
    lr: 1e-3,
    optimizer: OptimizerArg::Adamw,
    monitor: medret_train::hash::HEALTHY_MAP,
};

pub fn settings(a: &HashArgs, ds: &medret_data::Dataset) -> Result<HashSettings> {
    let mut s = HashSettings::for_dataset(ds, a.arch, a.size, a.bits)?;
    s.net.branches = a.branches;
    s.net.saliency = a.saliency;
    s.net.crop.threshold = a.crop_threshold;
    s.net.crop.margin = a.crop_margin;
    s.net.crop.min_size = a.crop_min_size;
    s.net.fc_dim = a.fc_dim;
    s.alpha = a.alpha;
    s.loss = a.loss;
    s.sampling = match a.sampling {
        SamplingArg::Uniform => medret_train::sampler::Sampling::Uniform,
        SamplingArg::Balanced => medret_train::sampler::Sampling::Balanced,
        SamplingArg::Sqrt => medret_train::sampler::Sampling::Sqrt,
    };
    s.beta = a.beta;
    s.decorrelation = a.decorrelation;
    s.preset = a.preset.map(|p| p.name().to_string());
    s.val_fraction = a.val_fraction;
    anyhow::ensure!(
        a.label_fraction > 0.0 && a.label_fraction <= 1.0,
        "--label-fraction {}: expected a fraction in (0, 1]",
        a.label_fraction
    );
    s.label_fraction = a.label_fraction;
    s.schedule = match a.stages {
        StagesArg::Joint => HashSchedule::Joint,
        StagesArg::Staged => HashSchedule::Staged {
            global_epochs: a.global_epochs.unwrap_or(
                (a.engine.epochs / 3)
                    .max(1)
                    .min(a.engine.epochs.saturating_sub(1)),
            ),
        },
    };
    if a.no_augment {
        s.transform.augment = Default::default();
    }
    if let Some(init) = &a.init {
        s.init = Some(check_init(&s.net, init)?);
    }
    Ok(s)
}

pub fn run(a: &HashArgs) -> Result<()> {
    let ds = a.data.open()?;
    let settings = settings(a, &ds)?;
    let cfg = train_config(&a.engine, &HASH_DEFAULTS)?;
    let opts = run_options(&a.engine, &a.out)?;
    let task = HashTask::new(&ds, settings, cfg.seed)?;
    let database: Vec<_> = ds
        .records
        .iter()
        .filter(|r| r.split != Some(Split::Test) && !r.labels.is_empty())
        .cloned()
        .collect();
    let queries: Vec<_> = ds
        .records
        .iter()
        .filter(|r| r.split == Some(Split::Test) && !r.labels.is_empty())
        .cloned()
        .collect();
    eprintln!(
        "training {} fusion hashing ({} bits, {:?}, {} classes, {:?}) on {} images, validating on {}",
        a.arch,
        a.bits,
        task.settings.net.branches,
        task.settings.classes.len(),
        task.settings.mode,
        task.train.len(),
        task.val.len(),
    );
    let started = std::time::Instant::now();
    let outcome = train_with_progress(&task, &cfg, &opts)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let card = export_model(&outcome, &a.out, task.model_card(&cfg))?;
    let model_path = a.out.join(WEIGHTS_FILE);

    let device = &opts.devices[0];
    let model = medret_models::encoder::load_fusion_hash(&task.settings.net, &model_path, device)?;
    let mut report = if queries.is_empty() {
        serde_json::json!({"queries": 0})
    } else {
        retrieval_report(&task, &model, &database, &queries, device)?
    };
    if !queries.is_empty() {
        report["baselines"] =
            medret_train::hash::baseline_report(&task, &database, &queries, device, cfg.seed)?;
    }
    report["train_seconds"] = train_seconds.into();
    report["epochs"] = outcome.epochs.into();
    report["best_epoch"] = outcome.best_epoch.map(|e| e + 1).into();
    report["weights_sha256"] = card.weights_sha256.clone().into();
    let path = a.out.join("test_report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if a.engine.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "trained {} epochs in {:.0} s; best epoch {}",
            outcome.epochs,
            train_seconds,
            outcome.best_epoch.map(|e| e + 1).unwrap_or(0)
        );
        if !queries.is_empty() {
            let f = |k: &str| report[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "test -> train ({} queries, {} cases, {} bits): mAP@100 {:.4} (Hamming alone, ties by index: {:.4}), P@10 {:.4} (chance {:.4}, always-majority mAP@100 {:.4}, P@10 {:.4})",
                queries.len(),
                database.len(),
                a.bits,
                f("map@100"),
                f("map@100_hamming_only"),
                f("p@10"),
                f("chance_precision"),
                f("majority_map@100"),
                f("majority_p@10"),
            );
            if let Ok(h) = serde_json::from_value::<medret_eval::CodeHealth>(
                report["code_health"]["database"].clone(),
            ) {
                println!(
                    "code health of the database: {}{}",
                    h.summary(),
                    if h.is_healthy() {
                        ""
                    } else {
                        " -- COLLAPSED: fewer than half the codes distinct or a constant bit"
                    }
                );
            }
            let b = &report["baselines"];
            println!(
                "baselines, same bits and splits: raw-pixel LSH mAP@100 {:.4}, random-init DenseNet feature LSH mAP@100 {:.4}",
                b["raw_pixel_lsh"]["map@100"].as_f64().unwrap_or(f64::NAN),
                b["random_init_feature_lsh"]["map@100"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            );
        }
        println!("model: {}", a.out.display());
    }
    Ok(())
}
