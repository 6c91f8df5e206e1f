//! `medret bench`: thin entries for the tools of `medret-bench` (search speed, load,
//! store growth, replica lag), and the model-side measures that need the CLI's dataset
//! arguments (crop boxes and saliency against lesions).

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Queries per second of the exact Hamming top-k scan over N random codes.
    Search(medret_bench::search::SearchArgs),
    /// Queries per second of the exact float top-k (inner product on normalised vectors,
    /// as FAISS `IndexFlatIP`) over N random descriptors.
    SearchFloat(medret_bench::search::FloatArgs),
    /// How often a chest model's crop box holds the lesion (lesion masks or NIH boxes),
    /// against random boxes of the same size.
    Crop(CropArgs),
    /// How much of a model's saliency (Grad-CAM, or where mirror attention falls) lands on
    /// lesion pixels (masks or boxes), against a random map.
    Saliency(CropArgs),
    /// Encoding an archive from its files (as `medret encode` and `index build --model`
    /// do: decoding and preprocessing overlapped with the network) against the network
    /// alone on the same images, prepared beforehand: images a second and their ratio.
    Encode(EncodeArgs),
    /// A bounded load test of a running `medret serve` (loopback only): concurrent image
    /// searches with ingests in parallel for a fixed time; throughput, p50/p99 latency by
    /// stage, errors, and a check that no committed ingest is lost.
    Load(medret_bench::load::LoadArgs),
    /// Grow a model's archive with noisy copies of its cases, to load-test at scale.
    GrowStore(medret_bench::load::GrowArgs),
    /// How long a replica takes to see another's write: two archives of one model on one
    /// store, one ingesting or deleting a case, the other following the change log; the
    /// full reload it replaces is timed beside it.
    Replica(medret_bench::load::ReplicaArgs),
}

#[derive(Args)]
pub struct CropArgs {
    /// A trained model folder.
    #[arg(long = "model")]
    model_dir: std::path::PathBuf,
    #[command(flatten)]
    data: crate::engine_args::DataArg,
    /// Which split to score.
    #[arg(long, value_enum, default_value = "test")]
    split: crate::index::SplitArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// A trained model folder.
    #[arg(long = "model")]
    model_dir: std::path::PathBuf,
    #[command(flatten)]
    data: crate::engine_args::DataArg,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// The first N images of the dataset (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// The convolutions' precision, f32 or bf16 (as `medret encode --precision`).
    #[arg(long, default_value = "f32")]
    precision: medret_models::kernels::Precision,
    #[arg(long)]
    json: bool,
}

fn encode(a: &EncodeArgs) -> Result<()> {
    let device = medret_models::device::parse_device("cpu").map_err(anyhow::Error::msg)?;
    crate::encode::use_precision(a.precision, &device)?;
    let encoder = medret_models::encoder::Encoder::open(&a.model_dir, &device)?;
    let ds = a.data.open()?;
    let n = a.limit.unwrap_or(ds.records.len()).min(ds.records.len());
    let r = medret_bench::encode::measure(&encoder, &ds.records[..n], a.batch)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} images, batch {}, {} threads: network alone {:.1} img/s, from files {:.1} img/s ({:.1} per thread), {:.0}% of the network's; decoding and preparing them once on one thread takes {:.1} s",
            r.images,
            r.batch,
            r.threads,
            r.network_images_per_s,
            r.pipeline_images_per_s,
            r.pipeline_images_per_s / r.threads as f64,
            100.0 * r.ratio,
            r.prepare_seconds_one_thread
        );
    }
    Ok(())
}

fn saliency(a: &CropArgs) -> Result<()> {
    let device = medret_models::device::parse_device("cpu").map_err(anyhow::Error::msg)?;
    let encoder = medret_models::encoder::Encoder::open(&a.model_dir, &device)?;
    let ds = a.data.open()?;
    let records = medret_search::ingest::select_split(&ds.records, a.split.split());
    let s = medret_search::explain::saliency_localisation(&encoder, &records)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{} images with lesions: saliency maximum on a lesion in {:.1}%, {:.1}% of the saliency mass on lesions; lesions cover {:.1}% of the image (a random map's expectation of both)",
            s.images,
            100.0 * s.pointing_hit_rate,
            100.0 * s.energy_in_lesions,
            100.0 * s.lesion_area_share
        );
    }
    Ok(())
}

fn crop(a: &CropArgs) -> Result<()> {
    let device = medret_models::device::parse_device("cpu").map_err(anyhow::Error::msg)?;
    let encoder = medret_models::encoder::Encoder::open(&a.model_dir, &device)?;
    let ds = a.data.open()?;
    let records = medret_search::ingest::select_split(&ds.records, a.split.split());
    let s = medret_search::explain::crop_localisation(&encoder, &records)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{} images with lesions: crop box holds the lesion centroid in {:.1}% (random box of the same size {:.1}%), {:.1}% of lesion pixels (random {:.1}%); boxes cover {:.1}% of the image; {} whole-image fallbacks",
            s.images,
            100.0 * s.centroid_hit_rate,
            100.0 * s.random_centroid_hit_rate,
            100.0 * s.lesion_fraction_in_box,
            100.0 * s.random_lesion_fraction_in_box,
            100.0 * s.box_area_fraction,
            s.whole_image_crops
        );
    }
    Ok(())
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Search(a) => medret_bench::search::search(a),
        BenchCommand::SearchFloat(a) => medret_bench::search::search_float(a),
        BenchCommand::Crop(a) => crop(a),
        BenchCommand::Saliency(a) => saliency(a),
        BenchCommand::Encode(a) => encode(a),
        BenchCommand::Load(a) => medret_bench::load::load(a),
        BenchCommand::GrowStore(a) => medret_bench::load::grow(a),
        BenchCommand::Replica(a) => medret_bench::load::replica(a),
    }
}
