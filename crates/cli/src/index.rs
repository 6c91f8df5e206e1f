//! `medret index build|add|delete|info` and `medret search`: the case archive and exact
//! search over it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use medret_data::npy::read_f32_matrix;
use medret_models::kernels::Precision;
use medret_search::ingest::{
    VectorFile, ingest_items, ingest_with_model, items_from_files, select_split,
};
use medret_search::open::{is_url, open_store, shown};
use medret_search::query::{
    Hit, hex, open_model_encoder, parse_hex_code, search_case, search_image, search_vector,
};
use medret_store::{Archive, Metric, ModelKind};

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Create a model in the store and ingest every case of the manifest with its code or
    /// descriptor (one transaction: all or nothing).
    Build(IngestArgs),
    /// Ingest more cases into an existing model (one transaction).
    Add(IngestArgs),
    /// Delete cases (by case id) and their vectors for every model.
    Delete {
        #[arg(long)]
        store: PathBuf,
        /// Case ids as in the manifest (image ids).
        #[arg(required = true)]
        cases: Vec<String>,
    },
    /// Whether the store's rows, every model's vectors, the indexes rebuilt from them
    /// and the image files agree; lists missing and orphan files. Exits 0 only when
    /// consistent.
    Check {
        #[arg(long)]
        store: PathBuf,
        /// The folder of images the server wrote (default: `<store>.images` beside a
        /// SQLite store; needed for a PostgreSQL store whose cases were uploaded).
        #[arg(long)]
        upload_dir: Option<PathBuf>,
        /// Root for relative image paths (as `medret serve --image-root`).
        #[arg(long)]
        image_root: Option<PathBuf>,
        /// Remove orphan files from the upload folder and finish or undo interrupted
        /// uploads (never a file a case refers to).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Counts, models and size on disk.
    Info {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct IngestArgs {
    /// The store: a SQLite file (created if absent) or a postgresql:// URL.
    #[arg(long)]
    store: PathBuf,
    /// Model name.
    #[arg(long)]
    name: String,
    /// Packed codes: uint8 .npy of shape N x bits/8, rows in manifest order. Bit i of a
    /// code is bit i % 8 of byte i / 8.
    #[arg(
        long,
        conflicts_with_all = ["descriptors", "model_dir"],
        required_unless_present_any = ["descriptors", "model_dir"]
    )]
    codes: Option<PathBuf>,
    /// Descriptors: float32 .npy of shape N x d, rows in manifest order.
    #[arg(long, conflicts_with = "model_dir")]
    descriptors: Option<PathBuf>,
    /// A trained model folder (model.json, model.safetensors): encode the dataset's images
    /// with it and ingest, all or nothing. The store records the model, and queries by
    /// image are encoded by exactly this model.
    #[arg(long = "model")]
    model_dir: Option<PathBuf>,
    /// With --model: which split to index (default all).
    #[arg(long, value_enum, default_value = "all")]
    split: SplitArg,
    /// With --model: store the binarised descriptors (a descriptor model trained with
    /// --binary-bits) in a Hamming index instead of the float descriptors.
    #[arg(long, requires = "model_dir")]
    binary: bool,
    /// With --model, on `build`: flip test-time augmentation. Every image going in, and
    /// every image query later, is encoded with its left-right mirror and the two
    /// averaged (twice the encoding time). `add` follows what the archive was built with.
    /// Off by default: it helped the fundus model and not the chest ones (docs/usage.md).
    #[arg(long, requires = "model_dir")]
    flip_tta: bool,
    /// With --model: compute device (cpu, gpu:N or part of an adapter's name in a GPU build; see `medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// With --model: the convolutions' precision, f32 or bf16 (opt-in, CPU only: fast
    /// on CPUs with Intel AMX; codes agree with f32's on 99.5% of bits or more,
    /// docs/benchmarks.md).
    #[arg(long, default_value = "f32", requires = "model_dir")]
    precision: Precision,
    /// Descriptor comparison: cosine or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// The dataset the rows belong to (any format `medret data info` reads).
    #[command(flatten)]
    data: crate::engine_args::DataArg,
    /// Hash of the model's configuration and weights, stored with the model.
    #[arg(long, default_value = "")]
    config_hash: String,
}

/// A split of the dataset, or all of it.
#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
    All,
}

impl SplitArg {
    pub fn split(self) -> Option<medret_data::Split> {
        match self {
            SplitArg::Train => Some(medret_data::Split::Train),
            SplitArg::Test => Some(medret_data::Split::Test),
            SplitArg::All => None,
        }
    }
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long)]
    store: PathBuf,
    /// Model name.
    #[arg(long)]
    model: String,
    /// Query code as hex (bits/8 bytes, byte 0 first).
    #[arg(long, group = "query")]
    code: Option<String>,
    /// Query descriptor: a float32 .npy with d values.
    #[arg(long, group = "query")]
    descriptor_file: Option<PathBuf>,
    /// Query with a stored case's vector (the case itself is left out of the results).
    #[arg(long = "case", group = "query")]
    case_key: Option<String>,
    /// Query with an image (PNG, JPEG, DICOM), encoded by the model that built the archive.
    #[arg(long, group = "query")]
    image: Option<PathBuf>,
    /// Query with a study in the PACS (--pacs): its first image, or the one --series and
    /// --sop name, retrieved by WADO-RS.
    #[arg(long, group = "query", requires = "pacs")]
    study: Option<String>,
    /// With --study: the series.
    #[arg(long, requires = "study")]
    series: Option<String>,
    /// With --study: the instance (SOP Instance UID).
    #[arg(long, requires = "study")]
    sop: Option<String>,
    /// The PACS's DICOMweb root for --study, e.g. http://pacs:8042/dicom-web.
    #[arg(long, value_name = "URL")]
    pacs: Option<String>,
    /// With --pacs: a file holding `user:password` or `Bearer TOKEN` (else
    /// MEDRET_PACS_AUTH).
    #[arg(long, requires = "pacs")]
    auth_file: Option<PathBuf>,
    /// With --pacs: the PEM root certificates to trust for HTTPS.
    #[arg(long, requires = "pacs")]
    ca_file: Option<PathBuf>,
    /// With --study: store the results in the PACS as a Key Object Selection document
    /// in the query's study (STOW-RS), which viewers list beside it.
    #[arg(long, requires = "study")]
    kos: bool,
    /// With --image: write the query's saliency overlay with its crop box (query.png) and
    /// each result's overlay (rank-NN-CASE.png) into this folder.
    #[arg(long, requires = "image")]
    explain: Option<PathBuf>,
    /// With --image: the model folder, when it moved since the archive was built (it must
    /// still be the same model: weights and model.json are checked).
    #[arg(long = "model-dir", requires = "image")]
    model_dir: Option<PathBuf>,
    /// With --image: compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Codes only: every case within this Hamming distance instead of the top k.
    #[arg(long)]
    radius: Option<u32>,
    /// Float descriptors: the `exact` scan; an `hnsw` graph (approximate, and built on
    /// every call: minutes at 1M cases); or `auto`, the graph only above 100M stored floats
    /// (cases x dimension). The graph pays in a long-running server, not per command.
    #[arg(long, default_value = "exact")]
    float_index: medret_store::archive::FloatSearch,
    /// Show patient ids (masked by default).
    #[arg(long)]
    show_ids: bool,
    /// With --image or --study: average query expansion with the query's N nearest
    /// cases, their vectors weighted by cosine^--qe-alpha (0: off). Needs the hash
    /// layer's outputs or float descriptors in the archive.
    #[arg(long, default_value_t = 0, value_name = "N")]
    qe: usize,
    /// The exponent of --qe's cosine weights.
    #[arg(long, default_value_t = 3.0, value_name = "A")]
    qe_alpha: f32,
    #[arg(long)]
    json: bool,
}

impl SearchArgs {
    /// What an image query takes.
    fn query_options(&self) -> Result<medret_search::query::QueryOptions> {
        if self.qe > 0 && self.image.is_none() && self.study.is_none() {
            bail!("--qe applies to image queries (--image or --study)");
        }
        if !self.qe_alpha.is_finite() || self.qe_alpha < 0.0 {
            bail!("--qe-alpha must be a finite number of at least 0");
        }
        Ok(medret_search::query::QueryOptions {
            k: self.k,
            radius: self.radius,
            show_ids: self.show_ids,
            explain: self.explain.is_some(),
            qe: self.qe,
            qe_alpha: self.qe_alpha,
            ..Default::default()
        })
    }
}

pub fn run_index(cmd: &IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build(a) | IndexCommand::Add(a) if a.model_dir.is_some() => {
            let build = matches!(cmd, IndexCommand::Build(_));
            let dir = a.model_dir.as_deref().expect("checked");
            let device =
                medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
            crate::encode::use_precision(a.precision, &device)?;
            let encoder = medret_models::encoder::Encoder::open(dir, &device)?;
            let ds = a.data.open()?;
            let records = select_split(&ds.records, a.split.split());
            let mut store = open_store(&a.store)?;
            let t = std::time::Instant::now();
            let bar = crate::progress::bar(records.len() as u64, "encoding");
            let ids = ingest_with_model(
                store.as_mut(),
                &shown(&a.store),
                &a.name,
                &encoder,
                &records,
                build,
                a.binary,
                a.flip_tta,
                16,
                &|n| bar.set_position(n as u64),
            )?;
            bar.finish_and_clear();
            println!(
                "{} {} cases into model `{}` of {} (encoded by {}) in {:.2} s",
                if build { "indexed" } else { "added" },
                ids.len(),
                a.name,
                shown(&a.store),
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        IndexCommand::Build(a) | IndexCommand::Add(a) => {
            let build = matches!(cmd, IndexCommand::Build(_));
            let file = match (&a.codes, &a.descriptors) {
                (Some(p), _) => VectorFile::Codes(p),
                (None, Some(p)) => VectorFile::Descriptors(p, a.metric),
                (None, None) => bail!("give --codes, --descriptors or --model"),
            };
            let (kind, items) = items_from_files(&a.data.open()?, &a.data.path, file)?;
            let mut store = open_store(&a.store)?;
            let t = std::time::Instant::now();
            let ids = ingest_items(
                store.as_mut(),
                &shown(&a.store),
                &a.name,
                kind,
                &a.config_hash,
                &items,
                build,
            )?;
            println!(
                "{} {} cases into model `{}` of {} in {:.2} s",
                if build { "indexed" } else { "added" },
                ids.len(),
                a.name,
                shown(&a.store),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        IndexCommand::Delete { store, cases } => {
            let mut s = open_store(store)?;
            let mut missing = Vec::new();
            for c in cases {
                if !s.delete(c)? {
                    missing.push(c.as_str());
                }
            }
            println!("deleted {} cases", cases.len() - missing.len());
            if !missing.is_empty() {
                bail!("not in the store: {}", missing.join(", "));
            }
            Ok(())
        }
        IndexCommand::Check {
            store,
            upload_dir,
            image_root,
            repair,
            json,
        } => {
            if !is_url(store) && !store.exists() {
                bail!("{}: no such store", shown(store));
            }
            let upload_dir = upload_dir.clone().or_else(|| {
                (!is_url(store)).then(|| {
                    let mut p = store.clone().into_os_string();
                    p.push(".images");
                    PathBuf::from(p)
                })
            });
            let files = medret_search::check::Files {
                upload_dir,
                image_root: image_root.clone(),
            };
            let mut opened = open_store(store)?;
            let report =
                medret_search::check::check(&mut opened, || open_store(store), &files, *repair)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for line in report.lines() {
                    println!("{line}");
                }
            }
            if !report.consistent {
                bail!("{}: the store is not consistent", shown(store));
            }
            Ok(())
        }
        IndexCommand::Info { store, json } => {
            if !is_url(store) && !store.exists() {
                bail!("{}: no such store", shown(store));
            }
            let mut opened = open_store(store)?;
            let info = opened.info()?;
            // How each code model's stored codes use their bits (collapsed codes make
            // Hamming search mostly ties).
            let health = medret_search::health::stored_code_health(opened.as_mut(), &info)?;
            if *json {
                let mut v = serde_json::to_value(&info)?;
                v["code_health"] = serde_json::to_value(&health)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{}: schema {}, {} cases, {:.1} MB on disk",
                    shown(store),
                    info.schema_version,
                    info.cases,
                    info.bytes_on_disk as f64 / 1e6
                );
                for (m, n) in &info.models {
                    println!(
                        "  model {}: {} vectors, {}",
                        m.name,
                        n,
                        serde_json::to_string(&m.kind)?
                    );
                    if let Some(h) = health.get(&m.name) {
                        println!(
                            "    codes: {}{}",
                            h.summary(),
                            if h.is_healthy() { "" } else { " (collapsed)" }
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

pub fn run_search(a: &SearchArgs) -> Result<()> {
    if !is_url(&a.store) && !a.store.exists() {
        bail!("{}: no such store", shown(&a.store));
    }
    let opts = a.query_options()?;
    let mut store = open_store(&a.store)?;
    let model = store.model(&a.model)?;
    let bytes = model.kind.vector_bytes();
    if let Some(image) = &a.image {
        let device = medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
        let encoder = open_model_encoder(
            store.as_mut(),
            &shown(&a.store),
            &a.model,
            a.model_dir.as_deref(),
            &device,
        )?;
        let mut archive = Archive::open_with(store, &a.model, a.float_index)?;
        let res = search_image(&mut archive, &encoder, image, &opts)?;
        let mut written = Vec::new();
        if let Some(dir) = &a.explain {
            written = medret_search::explain::write_explanations(
                dir,
                &encoder,
                &res.shown,
                &res.query,
                res.decoded.as_ref(),
                &res.hits,
                None,
            )?;
        }
        let crop = res.query.crop;
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "results": res.hits,
                    "query": {
                        "code": hex(model.kind.code_part(&res.vector).unwrap_or(&res.vector)),
                        "crop_box": crop,
                        "probabilities": encoder.card.class_names.iter().zip(&res.query.probabilities).map(|(c, p)| (c.clone(), *p)).collect::<std::collections::BTreeMap<_, _>>(),
                    },
                    "explanations": written,
                })
            );
        } else {
            print_hits(&res.hits);
            if let Some(b) = crop {
                println!(
                    "query crop box: x {} y {} w {} h {} (of {} px)",
                    b.x,
                    b.y,
                    b.w,
                    b.h,
                    encoder.size()
                );
            }
            for w in &written {
                println!("wrote {}", w.display());
            }
        }
        return Ok(());
    }
    if let Some(study) = &a.study {
        return search_pacs(a, store, study);
    }
    if let Some(key) = &a.case_key {
        let mut archive = Archive::open_with(store, &a.model, a.float_index)?;
        let hits = search_case(&mut archive, key, a.k, a.radius, a.show_ids)?;
        return print_results(&hits, a.json);
    }
    let query: Vec<u8> = match (&a.code, &a.descriptor_file) {
        (Some(h), _) => {
            if !matches!(model.kind, ModelKind::Codes { .. }) {
                bail!(
                    "model `{}` stores descriptors; query with --descriptor-file or --case",
                    a.model
                );
            }
            // The code alone: an archive that also stores relaxed outputs ranks its ties
            // by the code's signs.
            parse_hex_code(h, model.kind.code_bytes().unwrap_or(bytes))
                .map_err(|e| anyhow::anyhow!("--code: {e}"))?
        }
        (_, Some(f)) => {
            let (_, v) = read_f32_matrix(f)?;
            if v.len() * 4 != bytes {
                bail!(
                    "{}: {} values; model `{}` has dimension {}",
                    f.display(),
                    v.len(),
                    a.model,
                    bytes / 4
                );
            }
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        _ => bail!("give a query: --image, --study, --code, --descriptor-file or --case"),
    };
    let mut archive = Archive::open_with(store, &a.model, a.float_index)?;
    let hits = search_vector(&mut archive, &query, a.k, a.radius, a.show_ids)?;
    print_results(&hits, a.json)
}

/// `search --study`: the query fetched from the PACS, searched, and with --kos the results
/// stored back as a key object.
fn search_pacs(
    a: &SearchArgs,
    mut store: Box<dyn medret_store::CaseStore + Send>,
    study: &str,
) -> Result<()> {
    let client = crate::pacs::PacsArgs {
        url: a.pacs.clone().expect("clap requires --pacs"),
        auth_file: a.auth_file.clone(),
        ca_file: a.ca_file.clone(),
        timeout_s: 120,
    }
    .client()?;
    let device = medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let encoder = open_model_encoder(
        store.as_mut(),
        &shown(&a.store),
        &a.model,
        a.model_dir.as_deref(),
        &device,
    )?;
    let info = store.model(&a.model)?;
    let query = medret_pacs::query::resolve(&client, study, a.series.as_deref(), a.sop.as_deref())?;
    let file = client.retrieve(&query)?;
    let fetched = medret_pacs::sync::decode_retrieved(&query, &file)?;
    let opts = a.query_options()?;
    let encoded = medret_search::query::encode_query(&encoder, &info, fetched.image, &opts, false)?;
    let mut archive = Archive::open_with(store, &a.model, a.float_index)?;
    let res = medret_search::query::search_encoded(&mut archive, encoded, &opts)?;
    let mut kos = None;
    if a.kos {
        let similar = medret_pacs::query::hit_instances(&res.hits, &query);
        let sop = medret_pacs::query::store_key_object(
            &client,
            &query,
            &file,
            &similar,
            &format!("model {}", a.model),
        )?;
        kos = Some((sop, similar.len()));
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "query": {"study_uid": query.study, "series_uid": query.series, "sop_uid": query.sop},
                "results": res.hits,
                "kos": kos.as_ref().map(|(sop, n)| serde_json::json!({"sop_uid": sop, "references": n + 1})),
            })
        );
    } else {
        print_hits(&res.hits);
        if let Some((sop, n)) = kos {
            println!(
                "stored a key object ({sop}) referencing the query and {n} similar instance(s)"
            );
        }
    }
    Ok(())
}

fn print_results(hits: &[Hit], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::json!({ "results": hits }));
    } else {
        print_hits(hits);
    }
    Ok(())
}

fn print_hits(hits: &[Hit]) {
    for h in hits {
        let labels = match h.grade {
            Some(g) if h.labels.is_empty() => format!("grade {g}"),
            _ => h.labels.join("|"),
        };
        println!(
            "{:>3}  {:<24} distance {:<8} {}  patient {}  {}",
            h.rank, h.case_id, h.distance, labels, h.patient_id, h.path
        );
    }
}
