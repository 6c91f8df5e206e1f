//! `medret serve`: the HTTP API and the web page over one store (see `docs/api.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// The store: a SQLite file or a postgresql:// URL.
    #[arg(long)]
    store: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// A file holding the bearer token that ingest and delete need. Without it the
    /// server is read-only.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Refuse every write, token or not.
    #[arg(long)]
    read_only: bool,
    /// Largest upload in MB (larger requests get 413).
    #[arg(long, default_value_t = 32)]
    max_upload_mb: usize,
    /// Show patient ids in responses (masked by default).
    #[arg(long)]
    show_patient_ids: bool,
    /// Requests in progress at once, server-wide.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds before a request is answered 408.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Where ingested images are kept (default: `<store>.images` beside a SQLite store).
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    /// Root for stored image paths that are relative.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Compute device (cpu, gpu:N or part of an adapter's name in a GPU build; see `medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Largest image accepted, in pixels per frame, checked from the header before any
    /// pixel is decoded (larger uploads get 413). Default 8192 x 8192.
    #[arg(long, default_value_t = medret_server::upload::MAX_PIXELS)]
    max_pixels: u64,
    /// Name cases by opaque ids (`c` and 32 hex digits, one per case, fixed per store)
    /// in every response and request, never by the archive's own case ids, which often
    /// hold patient or accession numbers. `--opaque-ids false` shows the archive's ids.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    opaque_ids: bool,
    /// Memory that uploads being decoded may take at once, in MiB: each upload reserves
    /// 40 bytes per pixel from its header before decoding and waits its turn when the
    /// budget is taken (one larger than the budget gets 413).
    #[arg(long, default_value_t = 4096)]
    decode_budget_mib: u32,
    /// The PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web): searches may then give
    /// `study_uid` instead of an image, and `export=kos` stores the results there.
    #[arg(long, value_name = "URL")]
    pacs: Option<String>,
    /// With --pacs: a file holding `user:password` or `Bearer TOKEN` (else
    /// MEDRET_PACS_AUTH).
    #[arg(long, requires = "pacs")]
    pacs_auth_file: Option<PathBuf>,
    /// With --pacs: the PEM root certificates to trust for HTTPS.
    #[arg(long, requires = "pacs")]
    pacs_ca_file: Option<PathBuf>,
    /// A viewer link for each result synced from the PACS: `{study}`, `{series}` and
    /// `{sop}` are replaced by its UIDs, e.g. `https://ohif/viewer?StudyInstanceUIDs={study}`.
    #[arg(long, value_name = "TEMPLATE")]
    viewer_url: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    // A server's peaks are single large uploads, not a training loop that reuses them.
    medret_models::alloc::return_freed_memory();
    let token = match &a.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("{}: cannot read the token file", f.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                bail!("{}: the token must be at least 16 characters", f.display());
            }
            Some(t)
        }
        None => None,
    };
    if a.max_upload_mb == 0 {
        bail!("--max-upload-mb must be at least 1");
    }
    let mut cfg = medret_server::ServeConfig::new(a.store);
    cfg.addr = a.addr;
    cfg.token = token;
    cfg.read_only = a.read_only;
    cfg.max_upload_bytes = a.max_upload_mb << 20;
    cfg.show_patient_ids = a.show_patient_ids;
    cfg.concurrency = a.concurrency;
    cfg.timeout = Duration::from_secs(a.timeout_s.max(1));
    cfg.upload_dir = a.upload_dir;
    cfg.image_root = a.image_root;
    cfg.device = a.device;
    if a.max_pixels == 0 {
        bail!("--max-pixels must be at least 1");
    }
    cfg.max_pixels = a.max_pixels;
    cfg.opaque_ids = a.opaque_ids;
    if a.decode_budget_mib == 0 {
        bail!("--decode-budget-mib must be at least 1");
    }
    cfg.decode_budget_mib = a.decode_budget_mib;
    cfg.pacs = a.pacs.map(|url| medret_server::PacsSettings {
        url,
        auth_file: a.pacs_auth_file,
        ca_file: a.pacs_ca_file,
    });
    if let Some(t) = &a.viewer_url
        && !(t.starts_with("https://") || t.starts_with("http://"))
    {
        bail!("--viewer-url must start with http:// or https://");
    }
    cfg.viewer_url = a.viewer_url;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(medret_server::serve(cfg))
        .map_err(|e| anyhow::anyhow!("{}", e.message))
}
