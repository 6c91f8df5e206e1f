//! `medret bench load` (a bounded load test against a running `medret serve`) and
//! `medret bench grow-store` (a large archive for it, made from a small one).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use medret_search::open::{open_store, shown};
use medret_store::{ModelKind, NewCase};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

#[derive(Args)]
pub struct LoadArgs {
    /// The server, e.g. http://127.0.0.1:8080 (loopback only: this is a load generator).
    #[arg(long)]
    url: String,
    /// Model to search.
    #[arg(long)]
    model: String,
    /// Query images: a folder of PNG/JPEG/DICOM files (searched recursively, up to 1000).
    #[arg(long)]
    images: PathBuf,
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Concurrent searching clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Results per search.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Ask for the query's explanation (saliency overlay and crop box).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    explain: bool,
    /// One ingest every this many milliseconds, in parallel with the searches (0: none).
    /// Needs --token-file.
    #[arg(long, default_value_t = 500)]
    ingest_every_ms: u64,
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GrowArgs {
    /// The store (SQLite file or postgresql:// URL).
    #[arg(long)]
    store: PathBuf,
    /// The model whose cases are replicated.
    #[arg(long)]
    model: String,
    /// Total cases wanted.
    #[arg(long)]
    to: usize,
    /// Per bit, the chance that a copy's code bit flips (codes); the noise's standard
    /// deviation (descriptors).
    #[arg(long, default_value_t = 0.1)]
    noise: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Adds noisy copies of a model's cases (same image, labels and metadata; keys
/// `<key>~syn<n>`) until the model holds `to` vectors: an archive at scale for the load
/// test, from one that was encoded for real. Ingested in transactions of 50,000.
pub fn grow(a: &GrowArgs) -> Result<()> {
    let mut store = open_store(&a.store)?;
    let info = store.model(&a.model)?;
    match info.kind {
        medret_store::ModelKind::Codes { .. } if !(0.0..=1.0).contains(&a.noise) => bail!(
            "--noise {}: for a code model it is the chance that a bit flips, from 0 to 1",
            a.noise
        ),
        _ if !(a.noise.is_finite() && a.noise >= 0.0) => bail!(
            "--noise {}: the noise's standard deviation must be a finite number, 0 or more",
            a.noise
        ),
        _ => {}
    }
    let base = store.vectors(&a.model)?;
    if base.is_empty() {
        bail!(
            "model `{}` of {} holds no vectors to replicate",
            a.model,
            shown(&a.store)
        );
    }
    let mut cases = Vec::with_capacity(base.len());
    for (id, v) in &base {
        let c = store.case(*id)?.context("a case vanished")?;
        cases.push((c, v.clone()));
    }
    let have = base.len();
    if a.to <= have {
        println!("model `{}` already holds {have} vectors", a.model);
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let normal = rand_distr::Normal::new(0.0f32, a.noise as f32)?;
    let t = Instant::now();
    let bar = indicatif::ProgressBar::new((a.to - have) as u64).with_message("growing");
    let mut n = have;
    let mut serial = 0usize;
    while n < a.to {
        let chunk = (a.to - n).min(50_000);
        let mut items = Vec::with_capacity(chunk);
        for _ in 0..chunk {
            let (c, v) = &cases[serial % cases.len()];
            serial += 1;
            let v = match info.kind {
                // Noise on the code's bits; relaxed outputs stored after it are kept.
                ModelKind::Codes { bits, .. } => v
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut b = *b;
                        for bit in 0..8 {
                            if i < bits / 8 && rng.random_bool(a.noise) {
                                b ^= 1 << bit;
                            }
                        }
                        b
                    })
                    .collect(),
                ModelKind::Descriptors { .. } => v
                    .chunks_exact(4)
                    .flat_map(|x| {
                        let f = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                        (f + rand_distr::Distribution::sample(&normal, &mut rng)).to_le_bytes()
                    })
                    .collect(),
            };
            items.push((
                NewCase {
                    key: format!("{}~syn{serial}", c.key),
                    path: c.path.clone(),
                    labels: c.labels.clone(),
                    grade: c.grade,
                    patient_id: c.patient_id.clone(),
                    study: c.study.clone(),
                },
                v,
            ));
        }
        store.ingest(&a.model, &items)?;
        n += chunk;
        bar.inc(chunk as u64);
    }
    bar.finish_and_clear();
    println!(
        "model `{}` of {} now holds {n} vectors ({} copies added in {:.1} s)",
        a.model,
        shown(&a.store),
        n - have,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn multipart(text: &[(&str, &str)], file: (&str, &[u8])) -> (String, Vec<u8>) {
    let b = "medretloadboundary";
    let mut body = Vec::new();
    for (k, v) in text {
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            file.0
        )
        .as_bytes(),
    );
    body.extend_from_slice(file.1);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

fn collect_images(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= 1000 {
            return;
        }
        if p.is_dir() {
            collect_images(&p, out);
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg", "dcm"].contains(&e.to_ascii_lowercase().as_str())
        }) {
            out.push(p);
        }
    }
}

#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    decode: Vec<f64>,
    encode: Vec<f64>,
    search: Vec<f64>,
    explain: Vec<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn load(a: &LoadArgs) -> Result<()> {
    let host = a
        .url
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !["127.0.0.1", "localhost", "[::1]"].contains(&host) {
        bail!("--url {}: the load test runs against loopback only", a.url);
    }
    let mut paths = Vec::new();
    collect_images(&a.images, &mut paths);
    if paths.is_empty() {
        bail!("{}: no PNG, JPEG or DICOM files", a.images.display());
    }
    let images: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        paths
            .iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                std::fs::read(p)
                    .map(|b| (name, b))
                    .with_context(|| format!("{}: cannot read", p.display()))
            })
            .collect::<Result<_>>()?,
    );
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("{}: cannot read the token file", f.display()))?
                .trim()
                .to_string(),
        ),
        None if a.ingest_every_ms > 0 => {
            bail!("ingests need --token-file (or --ingest-every-ms 0)")
        }
        None => None,
    };
    let before = index_size(&a.url, &a.model)?;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (images, samples, errors, first_error, next) = (
            images.clone(),
            samples.clone(),
            errors.clone(),
            first_error.clone(),
            next.clone(),
        );
        let (url, model, k, explain) = (
            format!("{}/api/v1/search", a.url),
            a.model.clone(),
            a.k.to_string(),
            a.explain.to_string(),
        );
        handles.push(std::thread::spawn(move || {
            let agent = agent();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % images.len();
                let (name, bytes) = &images[i];
                let (ct, body) = multipart(
                    &[("model", &model), ("k", &k), ("explain", &explain)],
                    (name, bytes),
                );
                let t = Instant::now();
                let res = agent.post(&url).header("content-type", &ct).send(&body[..]);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let parsed = res.map_err(|e| e.to_string()).and_then(|mut r| {
                    let status = r.status().as_u16();
                    let v: Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
                    if status == 200 {
                        Ok(v)
                    } else {
                        Err(format!("{status}: {}", v["error"]))
                    }
                });
                match parsed {
                    Ok(v) => {
                        let t = &v["timings_ms"];
                        let mut s = samples.lock().expect("samples");
                        s.total.push(ms);
                        s.decode.push(t["decode"].as_f64().unwrap_or(f64::NAN));
                        s.encode.push(t["encode"].as_f64().unwrap_or(f64::NAN));
                        s.search.push(t["search"].as_f64().unwrap_or(f64::NAN));
                        s.explain.push(t["explain"].as_f64().unwrap_or(f64::NAN));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().expect("error").get_or_insert(e);
                    }
                }
            }
        }));
    }
    // Ingests in parallel, each a committed case that must be there at the end.
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let ingest_errors = Arc::new(AtomicU64::new(0));
    let ingester = (a.ingest_every_ms > 0).then(|| {
        let (images, committed, ingest_errors, stop, first_error) = (
            images.clone(),
            committed.clone(),
            ingest_errors.clone(),
            stop.clone(),
            first_error.clone(),
        );
        let url = format!("{}/api/v1/cases", a.url);
        let model = a.model.clone();
        let token = token.clone().unwrap_or_default();
        let every = Duration::from_millis(a.ingest_every_ms);
        let run = format!(
            "{:x}",
            std::process::id() as u64 ^ t0.elapsed().as_nanos() as u64
        );
        std::thread::spawn(move || {
            let agent = agent();
            let mut n = 0usize;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let key = format!("load-{run}-{n}");
                let (name, bytes) = &images[n % images.len()];
                n += 1;
                let (ct, body) = multipart(
                    &[
                        ("model", &model),
                        ("case_id", &key),
                        ("labels", "load-test"),
                    ],
                    (name, bytes),
                );
                let res = agent
                    .post(&url)
                    .header("content-type", &ct)
                    .header("authorization", &format!("Bearer {token}"))
                    .send(&body[..]);
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        committed.lock().expect("committed").push(key)
                    }
                    Ok(r) => {
                        ingest_errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("error")
                            .get_or_insert(format!("ingest: {}", r.status()));
                    }
                    Err(e) => {
                        ingest_errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("error")
                            .get_or_insert(format!("ingest: {e}"));
                    }
                }
                std::thread::sleep(every);
            }
        })
    });
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = ingester {
        h.join()
            .map_err(|_| anyhow::anyhow!("the ingest thread panicked"))?;
    }
    let wall = t0.elapsed().as_secs_f64();
    // Every committed ingest must be there: by id, and in the index count.
    let committed = committed.lock().expect("committed").clone();
    let agent = agent();
    let mut lost = 0;
    for key in &committed {
        let r = agent.get(&format!("{}/api/v1/cases/{key}", a.url)).call();
        if !matches!(r, Ok(ref r) if r.status().as_u16() == 200) {
            lost += 1;
        }
    }
    let after = index_size(&a.url, &a.model)?;
    let mut s = samples.lock().expect("samples");
    let n = s.total.len();
    let report = json!({
        "model": a.model,
        "index_cases_before": before,
        "index_cases_after": after,
        "seconds": wall,
        "clients": a.clients,
        "explain": a.explain,
        "searches": n,
        "searches_per_second": n as f64 / wall,
        "latency_ms": {"p50": pct(&mut s.total, 0.5), "p99": pct(&mut s.total, 0.99)},
        "decode_ms": {"p50": pct(&mut s.decode, 0.5), "p99": pct(&mut s.decode, 0.99)},
        "encode_ms": {"p50": pct(&mut s.encode, 0.5), "p99": pct(&mut s.encode, 0.99)},
        "search_ms": {"p50": pct(&mut s.search, 0.5), "p99": pct(&mut s.search, 0.99)},
        "explain_ms": {"p50": pct(&mut s.explain, 0.5), "p99": pct(&mut s.explain, 0.99)},
        "search_errors": errors.load(Ordering::Relaxed),
        "ingests_committed": committed.len(),
        "ingest_errors": ingest_errors.load(Ordering::Relaxed),
        "committed_cases_lost": lost,
        "index_growth_matches": after == before + committed.len() as u64,
        "first_error": *first_error.lock().expect("error"),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let f = |k: &str| {
            format!(
                "{:.1} / {:.1}",
                report[k]["p50"].as_f64().unwrap_or(f64::NAN),
                report[k]["p99"].as_f64().unwrap_or(f64::NAN)
            )
        };
        println!(
            "{} cases, {} clients, {:.0} s: {n} searches, {:.1}/s; latency p50/p99 {} ms (decode {}, encode {}, search {}, explain {}); errors {}; ingests {} committed, {} failed, {} lost; index {} -> {}",
            before,
            a.clients,
            wall,
            n as f64 / wall,
            f("latency_ms"),
            f("decode_ms"),
            f("encode_ms"),
            f("search_ms"),
            f("explain_ms"),
            report["search_errors"],
            committed.len(),
            report["ingest_errors"],
            lost,
            before,
            after
        );
    }
    if report["search_errors"] != 0 || report["ingest_errors"] != 0 || lost > 0 {
        bail!(
            "the load test saw errors or lost cases (first: {})",
            report["first_error"]
        );
    }
    Ok(())
}

fn index_size(url: &str, model: &str) -> Result<u64> {
    let mut r = agent()
        .get(&format!("{url}/api/v1/models"))
        .call()
        .with_context(|| format!("{url}: no server"))?;
    let v: Value = r.body_mut().read_json()?;
    v["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == model))
        .and_then(|m| m["cases"].as_u64())
        .with_context(|| format!("{url}: no model `{model}`"))
}

#[derive(Args)]
pub struct ReplicaArgs {
    /// The store: a SQLite file or a postgresql:// URL.
    #[arg(long)]
    store: PathBuf,
    /// The model both replicas serve.
    #[arg(long)]
    model: String,
    /// Writes timed (each an ingest of one case, then its delete).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

/// Two archives of one model on one store: the writer ingests (then deletes) one case,
/// and the replica's next sync is timed from the writer's commit; the replica's full
/// load (what every write cost a replica before the change log) is timed once.
pub fn replica(a: &ReplicaArgs) -> Result<()> {
    use medret_store::Archive;
    use medret_store::archive::FloatSearch;
    let t = Instant::now();
    let mut replica = Archive::open_with(open_store(&a.store)?, &a.model, FloatSearch::Auto)?;
    let full_load_s = t.elapsed().as_secs_f64();
    let mut writer = Archive::open_with(open_store(&a.store)?, &a.model, FloatSearch::Exact)?;
    let cases = replica.len();
    let template = {
        let s = writer.store();
        let (id, v) = s
            .vectors(&a.model)?
            .into_iter()
            .next()
            .context("the model holds no vectors")?;
        (s.case(id)?.context("a case vanished")?, v)
    };
    let (mut ingest_ms, mut delete_ms) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let key = format!("replica-bench-{}-{round}", std::process::id());
        let case = medret_store::NewCase {
            key: key.clone(),
            path: template.0.path.clone(),
            labels: template.0.labels.clone(),
            grade: template.0.grade,
            patient_id: String::new(),
            study: template.0.study.clone(),
        };
        writer.ingest(&[(case, template.1.clone())])?;
        let t = Instant::now();
        replica.sync()?;
        ingest_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if replica.len() != cases + 1 {
            bail!(
                "the replica holds {} cases after the ingest, not {}",
                replica.len(),
                cases + 1
            );
        }
        writer.delete(&key)?;
        let t = Instant::now();
        replica.sync()?;
        delete_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if replica.len() != cases {
            bail!(
                "the replica holds {} cases after the delete, not {cases}",
                replica.len()
            );
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (ingest_p50, ingest_max) = stats(&mut ingest_ms);
    let (delete_p50, delete_max) = stats(&mut delete_ms);
    let out = serde_json::json!({
        "cases": cases,
        "rounds": a.rounds,
        "replica_full_loads": replica.full_loads(),
        "full_load_ms": full_load_s * 1e3,
        "sync_after_ingest_ms": { "p50": ingest_p50, "max": ingest_max },
        "sync_after_delete_ms": { "p50": delete_p50, "max": delete_max },
        "full_load_over_sync_p50": full_load_s * 1e3 / ingest_p50.max(1e-9),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{cases} cases: a replica sees an ingest in {ingest_p50:.2} ms (max {ingest_max:.2}), a delete in {delete_p50:.2} ms (max {delete_max:.2}); a full reload takes {:.0} ms ({:.0}x); full loads: {}",
            full_load_s * 1e3,
            full_load_s * 1e3 / ingest_p50.max(1e-9),
            replica.full_loads()
        );
    }
    if replica.full_loads() != 1 {
        bail!("the replica reloaded every vector instead of following the change log");
    }
    Ok(())
}
