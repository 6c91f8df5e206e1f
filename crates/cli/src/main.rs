//! `medret`: content-based medical image retrieval. A thin shell over the library crates:
//! it parses arguments, sets up logging and progress bars, and prints results.

mod ablate;
mod bench;
mod demo;
mod encode;
mod engine_args;
mod eval;
mod export;
mod hash;
mod index;
mod metric;
mod model;
mod pacs;
mod preset;
mod pretrain;
mod progress;
mod serve;
mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use medret_data::labels::NihLabelSet;
use medret_data::phantom::{CxrConfig, FundusConfig, write_cxr, write_fundus};
use medret_data::{Format, ReadOptions, open_dataset, summarise_with_progress};

#[derive(Parser)]
#[command(name = "medret", version, about = "Content-based medical image retrieval: chest X-ray hashing and fundus metric learning", long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug). Logs go to stderr and never hold patient ids.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Worker threads for parallel work (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job on embedded defaults: phantoms, C2L pretraining, both methods
    /// trained, one archive, explained searches, both evaluated with baselines, report.html.
    Demo(demo::DemoArgs),
    /// Generate synthetic phantoms in the real on-disk layouts.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Inspect datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Inspect network architectures.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Write each image's pooled backbone feature (1024-d for DenseNet-121) to a .npy file.
    Features(model::FeaturesArgs),
    /// Self-supervised pretraining on unlabelled images (C2L).
    #[command(subcommand)]
    Pretrain(pretrain::PretrainCommand),
    /// Train networks (checkpoints, resume, early stopping, logs).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Encode a dataset's images with a trained model: packed codes (or descriptors) and
    /// an ids file in the same order.
    Encode(encode::EncodeArgs),
    /// Score a trained model on a dataset (test split against training split by default):
    /// mAP@k, P@k, NDCG@k with bootstrap intervals, chance and always-majority levels,
    /// optional baselines, timings and a gallery, as report.json and report.html.
    Eval(eval::EvalArgs),
    /// Train and evaluate every variant of a method's switches over seeds (and code
    /// lengths): one table of means, sds and paired intervals against the full method.
    /// Resumes where it stopped.
    Ablate(ablate::AblateArgs),
    /// Speed benchmarks that print comparable figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The case archive: build, add to, delete from and describe a store.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// The most similar cases of the archive to an image, a code, a descriptor or a stored
    /// case.
    Search(index::SearchArgs),
    /// Serve the store over HTTP: the /api/v1 JSON API and the web page (docs/api.md).
    Serve(serve::ServeArgs),
    /// The compute devices: the CPU and every GPU adapter (index, name, type, backend,
    /// driver), in the order `--device gpu:N` counts them.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// The archive beside a PACS, through DICOMweb: `pacs sync` (docs/pacs.md).
    #[command(subcommand)]
    Pacs(pacs::PacsCommand),
    /// Print this command-line reference as Markdown: docs/cli.md is its output, and a
    /// test fails when the two differ.
    #[command(hide = true)]
    CliReference,
}

#[derive(Args, Clone)]
struct SynthArgs {
    /// Number of images.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Image side in pixels (square).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Random seed; the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of patients in the test split (patient-disjoint).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f32,
    /// Output folder (created if absent).
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON summary of what was written.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SynthCommand {
    /// Chest X-ray phantoms in the NIH ChestX-ray14 layout: Data_Entry_2017.csv,
    /// train_val_list.txt, test_list.txt, BBox_List_2017.csv, images/*.png, masks/*.png
    /// (mask pixel = 1 + index of the finding in the NIH order, 0 background).
    Cxr(SynthArgs),
    /// Fundus phantoms in the EyePACS layout: trainLabels.csv, retinopathy_solution.csv
    /// (test patients), images/*.jpeg, masks/*.png (1 MA, 2 HE, 3 EX, 4 SE, 5 NV).
    Fundus(SynthArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Nih,
    Eyepacs,
    Medmnist,
    Manifest,
    Dicom,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Nih => Format::Nih,
            FormatArg::Eyepacs => Format::Eyepacs,
            FormatArg::Medmnist => Format::Medmnist,
            FormatArg::Manifest => Format::Manifest,
            FormatArg::Dicom => Format::Dicom,
        }
    }
}

#[derive(Args)]
pub(crate) struct OpenArgs {
    /// Dataset folder or file (manifest.csv, Data_Entry_2017.csv, *.npz, *.dcm, folder).
    path: PathBuf,
    /// Format; detected from the files when omitted.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// NIH label set: 8 (ChestX-ray8) or 14 (ChestX-ray14) findings.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u8).range(8..=14))]
    labels: u8,
    /// Skip bad rows and unreadable images with a warning instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// DICOM: the frame read from each multi-frame file, from 1 (default: the first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    frame: u32,
}

impl OpenArgs {
    /// A dataset path with the default options (format detected, 14 NIH findings).
    pub(crate) fn for_path(path: &std::path::Path) -> Self {
        OpenArgs {
            path: path.to_path_buf(),
            format: None,
            labels: 14,
            skip_bad: false,
            frame: 1,
        }
    }

    fn open(&self) -> Result<medret_data::Dataset> {
        let nih = NihLabelSet::from_count(self.labels as usize)
            .with_context(|| format!("--labels must be 8 or 14, not {}", self.labels))?;
        let opts = ReadOptions {
            skip_bad: self.skip_bad,
            frame: self.frame - 1,
            nih_labels: Some(nih),
            ..Default::default()
        };
        Ok(open_dataset(
            &self.path,
            self.format.map(Into::into),
            &opts,
        )?)
    }
}

#[derive(Subcommand)]
enum DataCommand {
    /// Print counts (images, patients, per label or grade, per split) and problems.
    Info {
        #[command(flatten)]
        open: OpenArgs,
        /// Decode every image (in parallel) to find unreadable ones and count sizes.
        #[arg(long)]
        check_images: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write one image as medret decodes it (`--raw`: a DICOM frame's values after the
    /// modality LUT, before any window), to check an archive against another toolkit.
    Export(export::ExportArgs),
    /// Draw a contact sheet: a PNG grid of images with their labels.
    Sheet {
        #[command(flatten)]
        open: OpenArgs,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Number of images (evenly spaced through the dataset).
        #[arg(long, default_value_t = 36)]
        n: usize,
        /// Tiles per row.
        #[arg(long, default_value_t = 6)]
        cols: usize,
        /// Tile side in pixels.
        #[arg(long, default_value_t = 160)]
        tile: usize,
        /// Outline lesion masks in yellow.
        #[arg(long)]
        masks: bool,
    },
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDRET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

// See crates/models/src/alloc.rs for why not the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    medret_models::alloc::keep_freed_memory();
    let cli = Cli::parse_from(preset::expand(std::env::args_os().collect()));
    // Rust ignores SIGPIPE, so printing into a closed pipe (`medret ... | head`) panics.
    // A command-line tool should stop quietly instead, as `cat` does. The server keeps
    // ignoring it: a closed log pipe must not kill it mid-request.
    #[cfg(unix)]
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: restoring the default disposition of one signal, before any thread
        // of ours starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging(cli.verbose);
    if let Some(t) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
    {
        eprintln!("error: --threads {t}: {e}");
        return std::process::ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) fn synth_cxr(a: &SynthArgs) -> Result<Vec<medret_data::phantom::CxrCase>> {
    let cfg = CxrConfig {
        n: a.n,
        size: a.size,
        seed: a.seed,
        test_fraction: a.test_fraction,
        ..Default::default()
    };
    let bar = progress::bar(a.n as u64, "chest phantoms");
    let cases = write_cxr(&a.out, &cfg, &|| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(cases)
}

pub(crate) fn synth_fundus(a: &SynthArgs) -> Result<Vec<medret_data::phantom::FundusCase>> {
    let cfg = FundusConfig {
        n: a.n,
        size: a.size,
        seed: a.seed,
        test_fraction: a.test_fraction,
        ..Default::default()
    };
    let bar = progress::bar(a.n as u64, "fundus phantoms");
    let cases = write_fundus(&a.out, &cfg, &|| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(cases)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo(a) => demo::run(&a),
        Command::Model(m) => model::run_model(&m),
        Command::Features(a) => model::run_features(&a),
        Command::Pretrain(p) => pretrain::run(&p),
        Command::Train(t) => train::run(&t),
        Command::Encode(a) => encode::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Ablate(a) => ablate::run(&a),
        Command::Bench(b) => bench::run(&b),
        Command::Index(i) => index::run_index(&i),
        Command::Pacs(p) => pacs::run(&p),
        Command::Devices { json } => devices(json),
        Command::CliReference => {
            let options = clap_markdown::MarkdownOptions::new()
                .title("medret command-line reference".into())
                .show_footer(false);
            print!("{}", clap_markdown::help_markdown_custom::<Cli>(&options));
            Ok(())
        }
        Command::Search(a) => index::run_search(&a),
        Command::Serve(a) => serve::run(a),
        Command::Synth(s) => {
            let (a, kind, n, secs) = match &s {
                SynthCommand::Cxr(a) => {
                    let t = std::time::Instant::now();
                    let n = synth_cxr(a)?.len();
                    (a, "cxr", n, t.elapsed().as_secs_f64())
                }
                SynthCommand::Fundus(a) => {
                    let t = std::time::Instant::now();
                    let n = synth_fundus(a)?.len();
                    (a, "fundus", n, t.elapsed().as_secs_f64())
                }
            };
            let rate = n as f64 / secs.max(1e-9);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"kind": kind, "images": n, "out": a.out, "seconds": secs, "images_per_second": rate})
                );
            } else {
                println!(
                    "wrote {n} {kind} phantoms to {} in {secs:.2} s ({rate:.0} images/s)",
                    a.out.display()
                );
            }
            Ok(())
        }
        Command::Data(DataCommand::Info {
            open,
            check_images,
            json,
        }) => {
            let ds = open.open()?;
            let bar = progress::bar(
                if check_images {
                    ds.records.len() as u64
                } else {
                    0
                },
                "decoding",
            );
            let summary = summarise_with_progress(&ds, check_images, &|| bar.inc(1));
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(())
        }
        Command::Data(DataCommand::Export(a)) => export::run(&a),
        Command::Data(DataCommand::Sheet {
            open,
            out,
            n,
            cols,
            tile,
            masks,
        }) => {
            let ds = open.open()?;
            let picks = demo::evenly_spaced(ds.records.len(), n);
            let sheet = medret_data::contact_sheet::contact_sheet(&ds, &picks, cols, tile, masks)?;
            sheet
                .save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {} ({} images)", out.display(), picks.len());
            Ok(())
        }
    }
}

/// `medret devices`.
fn devices(json: bool) -> Result<()> {
    use medret_models::device::{GPU_BUILD, REBUILD, adapters};
    let list = adapters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "gpu_build": GPU_BUILD,
                "cpu": {"device": "cpu", "threads": rayon::current_num_threads()},
                "adapters": list,
            }))?
        );
        return Ok(());
    }
    println!(
        "cpu      burn-flex, {} threads",
        rayon::current_num_threads()
    );
    if !GPU_BUILD {
        println!("no GPU support in this build; {REBUILD}");
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "no Vulkan adapter found (is the GPU driver's Vulkan ICD installed? Mesa's lavapipe: apt install mesa-vulkan-drivers)"
        );
    }
    for a in &list {
        println!(
            "gpu:{:<4} {} ({}, {}, driver {} {}; largest buffer {} MiB) = {}",
            a.index,
            a.name,
            a.kind,
            a.backend,
            a.driver,
            a.driver_info,
            a.max_buffer_bytes >> 20,
            a.device
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks unique names, conflicting groups and defaults here, for every
        // subcommand, instead of at the first run of the one that is wrong.
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
