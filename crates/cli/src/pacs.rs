//! `medret pacs`: the archive beside a PACS, through DICOMweb (docs/pacs.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use medret_pacs::dicomweb::Limits;
use medret_pacs::sync::SyncOptions;
use medret_pacs::{Auth, DicomWeb};
use medret_search::open::{is_url, open_store, shown};
use medret_search::query::open_model_encoder;
use medret_store::Archive;

/// Where the PACS is and how to reach it.
#[derive(Args, Clone)]
pub struct PacsArgs {
    /// The PACS's DICOMweb root, e.g. http://pacs:8042/dicom-web (Orthanc).
    #[arg(long = "url", value_name = "URL")]
    pub url: String,
    /// A file holding `user:password` (HTTP basic) or `Bearer TOKEN`. Without it,
    /// MEDRET_PACS_AUTH is read; credentials are never a flag.
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// A PEM bundle of the root certificates to trust for HTTPS (a hospital's own CA);
    /// without it, the public roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

impl PacsArgs {
    pub fn client(&self) -> Result<DicomWeb> {
        let auth = Auth::load(self.auth_file.as_deref())?;
        Ok(DicomWeb::new(
            &self.url,
            auth,
            self.ca_file.as_deref(),
            Limits {
                request: std::time::Duration::from_secs(self.timeout_s.max(1)),
                ..Limits::default()
            },
        )?)
    }
}

#[derive(Subcommand)]
pub enum PacsCommand {
    /// Find the PACS's instances (QIDO-RS), retrieve the new ones (WADO-RS), encode them
    /// with the model and ingest them, keyed by SOP Instance UID: incremental,
    /// idempotent and resumable.
    Sync(SyncArgs),
}

#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pacs: PacsArgs,
    /// The store: a SQLite file or a postgresql:// URL.
    #[arg(long)]
    store: PathBuf,
    /// The model whose archive follows the PACS (built with `medret index build
    /// --model`, or created here from --model-dir).
    #[arg(long)]
    model: String,
    /// A trained model folder: creates the model in the store when it is not there yet.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Only studies from this date on (YYYYMMDD or YYYY-MM-DD).
    #[arg(long)]
    since: Option<String>,
    /// QIDO matching keys, e.g. `Modality=CR,DX` (one query per value); repeatable.
    #[arg(long = "filter", value_name = "KEY=V1,V2")]
    filters: Vec<String>,
    /// Where the archive's images are written (default: `<store>.images` beside a SQLite
    /// store; required for PostgreSQL, an absolute path every server reads).
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    /// Compute device (cpu, gpu:N or part of an adapter's name in a GPU build; see `medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &PacsCommand) -> Result<()> {
    match cmd {
        PacsCommand::Sync(a) => sync(a),
    }
}

/// `--since` as QIDO wants it.
fn since(s: &str) -> Result<String> {
    let d: String = s.chars().filter(|c| *c != '-').collect();
    if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--since {s}: expected YYYYMMDD or YYYY-MM-DD");
    }
    Ok(d)
}

pub fn upload_dir(store: &Path, given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None if !is_url(store) => {
            let mut p = store.to_path_buf().into_os_string();
            p.push(".images");
            Ok(PathBuf::from(p))
        }
        None => {
            bail!("a PostgreSQL store needs --upload-dir (an absolute path every server reads)")
        }
    }
}

fn sync(a: &SyncArgs) -> Result<()> {
    let mut opts = SyncOptions {
        since: a.since.as_deref().map(since).transpose()?,
        filters: Vec::new(),
    };
    for f in &a.filters {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("--filter {f}: expected KEY=VALUE[,VALUE...]"))?;
        let values: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if k.trim().is_empty() || values.is_empty() {
            bail!("--filter {f}: expected KEY=VALUE[,VALUE...]");
        }
        opts.filters.push((k.trim().to_string(), values));
    }
    let client = a.pacs.client()?;
    let device = medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let mut store = open_store(&a.store)?;
    let name = shown(&a.store);
    if store.model(&a.model).is_err() {
        let Some(dir) = &a.model_dir else {
            bail!(
                "model `{}` is not in {name}: build it with `medret index build --model`, or give --model-dir to create it",
                a.model
            );
        };
        let encoder = medret_models::encoder::Encoder::open(dir, &device)?;
        let kind = medret_search::ingest::archive_kind(&encoder, false)?;
        let binding = medret_search::binding::ModelBinding::new(&encoder.dir, &encoder.card);
        store.create_and_ingest(
            &medret_store::ModelInfo {
                name: a.model.clone(),
                kind,
                config_hash: binding.to_config_hash(),
            },
            &[],
        )?;
    }
    let encoder = open_model_encoder(
        store.as_mut(),
        &name,
        &a.model,
        a.model_dir.as_deref(),
        &device,
    )?;
    let kind = store.model(&a.model)?.kind;
    let dir = upload_dir(&a.store, a.upload_dir.as_deref())?;
    let mut archive = Archive::open(store, &a.model)?;
    let bar = crate::progress::bar(0, "syncing");
    let summary = medret_pacs::sync::sync(
        &client,
        &mut archive,
        kind,
        &encoder,
        &dir,
        &opts,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}
