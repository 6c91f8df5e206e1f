//! `medret eval`: score a trained model on a dataset's query split against its database
//! split, beside the chance and always-majority levels (and model-free baselines with
//! `--baselines`), and write `report.json` and a self-contained `report.html`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use medret_eval::report::Sampling;
use medret_search::evaluate::{EvalOptions, FlipTta, evaluate, write_report};

#[derive(Args)]
pub struct EvalArgs {
    /// A trained model folder (model.json, model.safetensors).
    #[arg(long = "model")]
    model_dir: PathBuf,
    #[command(flatten)]
    data: crate::engine_args::DataArg,
    /// The queries. `val` is the validation part of the training split that the model
    /// was selected on (its seed and fraction, from model.json), ranked against the rest
    /// of the training split: for choosing --qe/--dba without the test split.
    #[arg(long, value_enum, default_value = "test")]
    query_split: EvalSplit,
    /// The database the queries are ranked against.
    #[arg(long, value_enum, default_value = "train")]
    database_split: EvalSplit,
    /// Depths k of mAP@k, P@k and NDCG@k.
    #[arg(short, long, value_delimiter = ',', default_value = "10,50,100")]
    k: Vec<usize>,
    /// Also score the model-free baselines on the same splits: LSH and ITQ over raw
    /// pixels and over a random-init backbone's pooled features.
    #[arg(long)]
    baselines: bool,
    /// With --baselines, LSH and ITQ over this C2L backbone's pooled features too
    /// (`medret pretrain c2l`'s backbone.safetensors).
    #[arg(long, requires = "baselines")]
    c2l: Option<PathBuf>,
    /// Queries shown in the report's gallery, each with its top 5.
    #[arg(long, default_value_t = 8)]
    gallery: usize,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Average query expansion (αQE): each query's vector is summed with those of its N
    /// nearest database images, weighted by cosine^--qe-alpha (0: off).
    #[arg(long, default_value_t = 0)]
    qe: usize,
    /// Database-side augmentation: each database vector summed with its N nearest
    /// others, before ranking (0: off).
    #[arg(long, default_value_t = 0)]
    dba: usize,
    /// The exponent of the cosine weights of --qe and --dba.
    #[arg(long, default_value_t = 3.0)]
    qe_alpha: f32,
    /// Rank cases by the probability that the query shares one of their labels (the
    /// probability ranking principle), the code ranking kept within equal
    /// probabilities. The query's class probabilities come from the model's
    /// `classifier` (chest hash models) or from its nearest cases' labels
    /// (`neighbours`, any model).
    #[arg(long, value_enum)]
    relevance_first: Option<RelevanceArg>,
    /// Test-time augmentation: average each image's code (before binarising) or
    /// descriptor with its left-right mirror's, queries and database alike (`both`, the
    /// value when none is given), or the queries only (`queries`), which measures whether
    /// the query's side alone would do.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "both", value_name = "WHICH")]
    flip_tta: Option<FlipArg>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Compute device (cpu, gpu:N or part of an adapter's name in a GPU build; see `medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The convolutions' precision, f32 or bf16 (opt-in, CPU only; as `encode`'s): the
    /// retrieval figures of a bf16-encoded archive.
    #[arg(long, default_value = "f32")]
    precision: medret_models::kernels::Precision,
    /// Where report.json and report.html go.
    #[arg(long, default_value = "eval-report")]
    out: PathBuf,
    /// Print report.json to stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FlipArg {
    Queries,
    Both,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RelevanceArg {
    Classifier,
    Neighbours,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EvalSplit {
    Train,
    Val,
    Test,
}

impl From<EvalSplit> for medret_data::Split {
    fn from(s: EvalSplit) -> Self {
        match s {
            EvalSplit::Train => medret_data::Split::Train,
            EvalSplit::Val => medret_data::Split::Val,
            EvalSplit::Test => medret_data::Split::Test,
        }
    }
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let device = medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
    crate::encode::use_precision(a.precision, &device)?;
    let encoder = medret_models::encoder::Encoder::open(&a.model_dir, &device)
        .with_context(|| format!("cannot open the model {}", a.model_dir.display()))?;
    let ds = a.data.open()?;
    let opts = EvalOptions {
        query_split: a.query_split.into(),
        database_split: a.database_split.into(),
        ks: a.k.clone(),
        baselines: a.baselines,
        gallery: a.gallery,
        sampling: Sampling {
            resamples: a.resamples,
            seed: a.seed,
            ..Sampling::default()
        },
        batch: a.batch,
        c2l: a.c2l.clone(),
        expansion: medret_eval::expansion::Expansion {
            qe: a.qe,
            dba: a.dba,
            alpha: a.qe_alpha,
        },
        flip_tta: match a.flip_tta {
            None => FlipTta::Off,
            Some(FlipArg::Queries) => FlipTta::Queries,
            Some(FlipArg::Both) => FlipTta::Both,
        },
        relevance_first: a.relevance_first.map(|r| match r {
            RelevanceArg::Classifier => medret_search::evaluate::RelevanceFrom::Classifier,
            RelevanceArg::Neighbours => medret_search::evaluate::RelevanceFrom::Neighbours,
        }),
    };
    let name = a.data.path.display().to_string();
    let bar = crate::progress::bar(0, "evaluating");
    let (report, gallery) = evaluate(&encoder, &ds.records, &name, &opts, &device, &|stage| {
        bar.set_message(stage.to_string());
        bar.tick();
    })?;
    bar.finish_and_clear();
    let title = format!("medret evaluation: {} on {name}", a.model_dir.display());
    let (json, html) = write_report(&a.out, &report, gallery, &title)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &report.scores;
    println!(
        "{} queries against {} database images ({})",
        s.queries,
        s.database,
        report.protocol["relevance"].as_str().unwrap_or("")
    );
    println!(
        "{:<10} {:>8} {:>19} {:>8} {:>9}",
        "metric", "model", "95% interval", "chance", "majority"
    );
    for k in s.ordered_metrics() {
        let v = s.metrics[k];
        let [lo, hi] = s.intervals[k];
        println!(
            "{k:<10} {v:>8.4} [{lo:>7.4}, {hi:>7.4}] {:>8.4} {:>9.4}",
            s.chance[k], s.majority[k]
        );
    }
    println!(
        "mAP@all {:.4} (ties in database order), {:.4} expected over random orders of tied items",
        s.map_all, s.map_all_expected_over_ties
    );
    for (name, b) in &report.baselines {
        let key = format!("map@{}", a.k.iter().max().unwrap_or(&100));
        println!(
            "baseline {name}: {key} {:.4}",
            b.metrics.get(&key).copied().unwrap_or(f64::NAN)
        );
    }
    for (name, m) in report.binarised.iter().flatten() {
        let key = format!("map@{}", a.k.iter().max().unwrap_or(&100));
        println!(
            "descriptors binarised, {name}: {key} {:.4}",
            m.get(&key).copied().unwrap_or(f64::NAN)
        );
    }
    println!("report: {} and {}", html.display(), json.display());
    Ok(())
}
