//! `medret train metric`: the fundus method, from a graded dataset to a model folder
//! (`model.safetensors`, `model.json` with float descriptors) and a test-split report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use medret_data::Split;
use medret_models::Arch;
use medret_models::fundus_metric::Attention;
use medret_models::model_card::WEIGHTS_FILE;
use medret_train::export::export_model;
use medret_train::metric::{
    Binarisation, MetricLoss, MetricSettings, MetricTask, check_init, learn_binarisation,
    retrieval_report,
};

use crate::engine_args::{
    DataArg, Defaults, EngineArgs, OptimizerArg, run_options, train_config, train_with_progress,
};

#[derive(Args)]
pub struct MetricArgs {
    #[command(flatten)]
    data: DataArg,
    /// Backbone: densenet121 (the default) or densenet-tiny (tests, demo).
    #[arg(long, default_value = "densenet121")]
    arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Project the descriptor to this width (default: no projection, 2 x the backbone's
    /// channels with mirror attention).
    #[arg(long)]
    dim: Option<usize>,
    /// `mirror`: three views and the mirror-attention blocks; `none`: the plain backbone
    /// with GeM (the ablation).
    #[arg(long, default_value = "mirror")]
    attention: Attention,
    /// fine-triplet (relevance-weighted circle form), circle, or triplet (batch-hard).
    #[arg(long, default_value = "fine-triplet")]
    loss: MetricLoss,
    /// Margin m (circle and fine triplet 0.25; triplet uses it as its margin too).
    #[arg(long, default_value_t = 0.25)]
    margin: f64,
    /// Scale gamma of the circle and fine triplet losses (`--gamma` is the step schedule's
    /// decay, shared by every training command).
    #[arg(long, default_value_t = 32.0)]
    scale: f64,
    /// Weight of a grade cross-entropy head (0: none).
    #[arg(long, default_value_t = 0.0)]
    cls_weight: f64,
    /// Also binarise descriptors to this many bits (a multiple of 8 up to 1024), for a
    /// compact Hamming index (`index build --binary`).
    #[arg(long)]
    binary_bits: Option<usize>,
    /// How --binary-bits codes are made: `itq` (learned after training on the training
    /// descriptors: PCA then the rotation of least quantization error, Gong and Lazebnik
    /// 2011) or `random` (signs of a seeded Gaussian projection, SimHash).
    #[arg(long, value_enum, default_value = "itq")]
    binarise: Binarise,
    /// Backbone weights to start from (features.*, torchvision names), e.g. C2L's.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    #[arg(long)]
    no_augment: bool,
    /// `cpu`: the recipe for a 2-core CPU and a few hundred labelled images
    /// (densenet-tiny, 96 px, 12 epochs, batch 20, lr 1e-3); any flag given explicitly
    /// overrides it. Without it, the paper's settings.
    #[arg(long, value_enum)]
    preset: Option<crate::engine_args::PresetArg>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Binarise {
    Itq,
    Random,
}

const METRIC_DEFAULTS: Defaults = Defaults {
    batch_size: 20,
    lr: 1e-3,
    optimizer: OptimizerArg::Adamw,
    monitor: "map",
};

pub fn run(a: &MetricArgs) -> Result<()> {
    let ds = a.data.open()?;
    let mut s = MetricSettings::new(a.arch, a.size, a.attention, a.loss);
    s.preset = a.preset.map(|p| p.name().to_string());
    s.net.dim = a.dim;
    s.margin = a.margin;
    s.gamma = a.scale;
    s.cls_weight = a.cls_weight;
    if a.cls_weight > 0.0 {
        s.net.classes = Some(medret_train::classify::GRADES);
    }
    s.val_fraction = a.val_fraction;
    if let Some(b) = a.binary_bits {
        anyhow::ensure!(
            b > 0 && b.is_multiple_of(8) && b <= 1024,
            "--binary-bits {b}: codes are a multiple of 8 from 8 to 1024 bits"
        );
    }
    s.net.binary_bits = a.binary_bits;
    s.net.binary_seed = a.engine.seed;
    if a.no_augment {
        s.transform.augment = Default::default();
    }
    if let Some(init) = &a.init {
        s.init = Some(check_init(&s.net, init)?);
    }
    let cfg = train_config(&a.engine, &METRIC_DEFAULTS)?;
    let opts = run_options(&a.engine, &a.out)?;
    let task = MetricTask::new(&ds, s, cfg.seed)?;
    if task.ungraded > 0 {
        eprintln!("skipped {} ungraded images", task.ungraded);
    }
    let part = |test: bool| -> Vec<_> {
        ds.records
            .iter()
            .filter(|r| (r.split == Some(Split::Test)) == test && r.grade.is_some())
            .cloned()
            .collect()
    };
    let (database, queries) = (part(false), part(true));
    eprintln!(
        "training {} metric model ({:?} attention, {:?} loss) on {} images, validating on {}",
        a.arch,
        a.attention,
        a.loss,
        task.train.len(),
        task.val.len()
    );
    let started = std::time::Instant::now();
    let outcome = train_with_progress(&task, &cfg, &opts)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let card = export_model(&outcome, &a.out, task.model_card(&cfg))?;
    let model_path = a.out.join(WEIGHTS_FILE);
    let dim = task.settings.net.descriptor_dim();
    let device = &opts.devices[0];
    let card = match (a.binary_bits, a.binarise) {
        (Some(bits), Binarise::Itq) => {
            match learn_binarisation(card, &task.train, bits, cfg.seed, &a.out, device)? {
                Binarisation::Itq {
                    card,
                    descriptors,
                    error_before,
                    error_after,
                } => {
                    eprintln!(
                        "ITQ binarisation: {bits} bits fitted on {descriptors} training descriptors, quantization error {error_before:.3} -> {error_after:.3}"
                    );
                    card
                }
                Binarisation::Random {
                    card,
                    descriptors,
                    dim,
                } => {
                    eprintln!(
                        "ITQ needs at least {bits} training images and descriptor dimensions ({descriptors} images, {dim} dimensions): binarising with the seeded random projection instead"
                    );
                    card
                }
            }
        }
        _ => card,
    };
    let model =
        medret_models::encoder::load_fundus_metric(&task.settings.net, &model_path, device)?;
    let mut report = if queries.is_empty() {
        serde_json::json!({"queries": 0})
    } else {
        retrieval_report(&task, &model, &database, &queries, device)?
    };
    report["train_seconds"] = train_seconds.into();
    report["epochs"] = outcome.epochs.into();
    report["best_epoch"] = outcome.best_epoch.map(|e| e + 1).into();
    report["weights_sha256"] = card.weights_sha256.clone().into();
    report["ungraded_skipped_in_training"] = task.ungraded.into();
    let path = a.out.join("test_report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if a.engine.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("trained {} epochs in {train_seconds:.0} s", outcome.epochs);
        if !queries.is_empty() {
            let f = |k: &str| report[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "test -> train ({} queries, {} cases, {dim}-d): mAP@10 {:.4}, mAP@100 {:.4}, P@10 {:.4}, NDCG@10 {:.4} (chance {:.4}, always-majority mAP@100 {:.4}, P@10 {:.4})",
                report["queries"],
                report["database"],
                f("map@10"),
                f("map@100"),
                f("p@10"),
                f("ndcg@10"),
                f("chance_precision"),
                f("majority_map@100"),
                f("majority_p@10"),
            );
        }
        println!("model: {}", a.out.display());
    }
    Ok(())
}
