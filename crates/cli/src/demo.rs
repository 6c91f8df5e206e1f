//! `medret demo`: the main job end to end on embedded defaults, through the same commands
//! a user runs (parsed and dispatched in process, so the demo cannot drift from them):
//! chest and fundus phantoms; brief C2L pretraining on the chest phantoms; the chest
//! fusion-hashing model from that backbone; the fundus mirror-attention model with the
//! fine triplet loss; one archive holding both; a sample search per method with its
//! explanations; `medret eval` of both with the model-free baselines; and `report.html`
//! linking everything, with a five-line summary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser};

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "medret-demo")]
    out: PathBuf,
    /// Images per phantom set. At 400 the chest model does not beat raw-pixel LSH (too
    /// few training images for 15 multi-label classes); at 800 it does.
    #[arg(long, default_value_t = 800)]
    n: usize,
    /// Side of the generated images in pixels.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Input side of the models.
    #[arg(long, default_value_t = 96)]
    input: usize,
    /// Training epochs of both models.
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// C2L pretraining epochs (0 skips it: the chest model starts from random weights).
    #[arg(long, default_value_t = 6)]
    pretrain_epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Indices `0..len` spread evenly, at most `n` of them.
pub fn evenly_spaced(len: usize, n: usize) -> Vec<usize> {
    if n == 0 || len == 0 {
        return Vec::new();
    }
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Runs one `medret` command line in process.
pub(crate) fn medret(args: &[String]) -> Result<()> {
    let argv = std::iter::once("medret".to_string()).chain(args.iter().cloned());
    let cli = crate::Cli::try_parse_from(argv)
        .with_context(|| format!("demo step `medret {}`", args.join(" ")))?;
    crate::run(cli.command).with_context(|| format!("demo step `medret {}`", args.join(" ")))
}

fn step(title: &str, args: Vec<String>) -> Result<f64> {
    println!("== {title}\n   medret {}", args.join(" "));
    let t = Instant::now();
    medret(&args)?;
    Ok(t.elapsed().as_secs_f64())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The first test-split image of a phantom set (the chest layout lists them in
/// `test_list.txt`; the fundus layout in `retinopathy_solution.csv`).
fn first_test_image(data: &Path) -> Result<PathBuf> {
    let ds = crate::OpenArgs::for_path(data).open()?;
    let r = ds
        .records
        .iter()
        .find(|r| r.split == Some(medret_data::Split::Test))
        .with_context(|| format!("{}: no test image", data.display()))?;
    match &r.source {
        medret_data::ImageSource::File(f) => Ok(f.clone()),
        _ => anyhow::bail!("{}: the test image is not a file", data.display()),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// `map@K 0.381 [0.35, 0.41]` with the levels and baselines beside it.
fn headline(r: &serde_json::Value, k: &str) -> String {
    let s = &r["scores"];
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.3}"));
    let b = &r["baselines"];
    format!(
        "{k} {} [{}, {}]; raw-pixel LSH {}, random-init feature LSH {}; chance {}, always-majority {}",
        f(&s["metrics"][k]),
        f(&s["intervals"][k][0]),
        f(&s["intervals"][k][1]),
        f(&b["raw-pixel LSH"]["metrics"][k]),
        f(&b["random-init feature LSH"]["metrics"][k]),
        f(&s["chance"][k]),
        f(&s["majority"][k]),
    )
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let o = &a.out;
    std::fs::create_dir_all(o).with_context(|| format!("cannot create {}", o.display()))?;
    let start = Instant::now();
    let (n, size, input, seed) = (
        a.n.to_string(),
        a.size.to_string(),
        a.input.to_string(),
        a.seed.to_string(),
    );
    let epochs = a.epochs.to_string();
    let (cxr, fundus) = (o.join("cxr"), o.join("fundus"));
    let (c2l, hash, metric) = (o.join("c2l"), o.join("cxr-hash"), o.join("fundus-metric"));
    let store = o.join("archive.db");
    let mut timings = serde_json::Map::new();
    let mut time = |name: &str, s: f64| {
        timings.insert(name.into(), serde_json::json!(s));
    };

    for (kind, dir, s) in [("cxr", &cxr, 11u64), ("fundus", &fundus, 12)] {
        let t = step(
            &format!("{kind} phantoms"),
            vec![
                "synth".into(),
                kind.into(),
                "--n".into(),
                n.clone(),
                "--size".into(),
                size.clone(),
                "--seed".into(),
                (a.seed + s).to_string(),
                "--out".into(),
                p(dir),
            ],
        )?;
        time(&format!("synth_{kind}_s"), t);
    }
    let mut hash_args = strings(&["train", "hash", "--data"]);
    hash_args.extend([p(&cxr)]);
    hash_args.extend(strings(&[
        "--arch",
        "densenet-tiny",
        "--bits",
        "48",
        "--batch-size",
        "32",
        "--lr",
        "3e-3",
        // Phantoms share a few label sets, so past the second epoch fewer than half of
        // the training codes are distinct and the health guard of `--monitor
        // healthy_map` would keep the second epoch: the demo selects by validation mAP.
        "--monitor",
        "map",
    ]));
    hash_args.extend([
        "--size".into(),
        input.clone(),
        "--epochs".into(),
        epochs.clone(),
    ]);
    hash_args.extend(["--seed".into(), seed.clone(), "--out".into(), p(&hash)]);
    if a.pretrain_epochs > 0 {
        let t = step(
            "C2L self-supervised pretraining on the chest phantoms (labels unused)",
            vec![
                "pretrain".into(),
                "c2l".into(),
                "--data".into(),
                p(&cxr),
                "--arch".into(),
                "densenet-tiny".into(),
                "--size".into(),
                input.clone(),
                "--batch-size".into(),
                "32".into(),
                "--epochs".into(),
                a.pretrain_epochs.to_string(),
                "--seed".into(),
                seed.clone(),
                "--out".into(),
                p(&c2l),
            ],
        )?;
        time("pretrain_c2l_s", t);
        hash_args.extend(["--init".into(), p(&c2l.join("backbone.safetensors"))]);
    }
    let t = step(
        "chest: saliency-guided global/local fusion hashing, 48 bits",
        hash_args,
    )?;
    time("train_hash_s", t);
    let t = step(
        "fundus: mirror attention + fine triplet loss",
        vec![
            "train".into(),
            "metric".into(),
            "--data".into(),
            p(&fundus),
            "--arch".into(),
            "densenet-tiny".into(),
            "--size".into(),
            input.clone(),
            "--attention".into(),
            "mirror".into(),
            "--loss".into(),
            "fine-triplet".into(),
            "--batch-size".into(),
            "20".into(),
            "--lr".into(),
            "1e-3".into(),
            "--epochs".into(),
            epochs.clone(),
            "--seed".into(),
            seed.clone(),
            "--out".into(),
            p(&metric),
        ],
    )?;
    time("train_metric_s", t);

    let _ = std::fs::remove_file(&store);
    for (name, model, data) in [("cxr", &hash, &cxr), ("fundus", &metric, &fundus)] {
        let t = step(
            &format!("archive: the {name} training split, encoded by its model"),
            vec![
                "index".into(),
                "build".into(),
                "--store".into(),
                p(&store),
                "--name".into(),
                name.into(),
                "--model".into(),
                p(model),
                "--data".into(),
                p(data),
                "--split".into(),
                "train".into(),
            ],
        )?;
        time(&format!("index_{name}_s"), t);
    }
    let mut explained = Vec::new();
    for (name, data) in [("cxr", &cxr), ("fundus", &fundus)] {
        let image = first_test_image(data)?;
        let dir = o.join(format!("explain-{name}"));
        let t = step(
            &format!("search: the {name} archive with a test image, explained"),
            vec![
                "search".into(),
                "--store".into(),
                p(&store),
                "--model".into(),
                name.into(),
                "--image".into(),
                p(&image),
                "-k".into(),
                "5".into(),
                "--explain".into(),
                p(&dir),
            ],
        )?;
        time(&format!("search_{name}_s"), t);
        explained.push(dir);
    }
    let mut reports = Vec::new();
    for (name, model, data) in [("cxr", &hash, &cxr), ("fundus", &metric, &fundus)] {
        let dir = o.join(format!("eval-{name}"));
        let t = step(
            &format!("evaluation: {name}, test split against the archive's training split"),
            vec![
                "eval".into(),
                "--model".into(),
                p(model),
                "--data".into(),
                p(data),
                "--baselines".into(),
                "-k".into(),
                "10,100".into(),
                "--gallery".into(),
                "6".into(),
                "--seed".into(),
                seed.clone(),
                "--out".into(),
                p(&dir),
            ],
        )?;
        time(&format!("eval_{name}_s"), t);
        reports.push(read_json(&dir.join("report.json"))?);
    }
    let total = start.elapsed().as_secs_f64();
    let cases: u64 = reports
        .iter()
        .map(|r| r["scores"]["database"].as_u64().unwrap_or(0))
        .sum();
    let summary = [
        format!(
            "chest (held-out phantoms): {}",
            headline(&reports[0], "map@100")
        ),
        format!(
            "fundus (held-out phantoms): {}",
            headline(&reports[1], "map@10")
        ),
        format!(
            "archive {}: {cases} cases under two models (`cxr`: 48-bit codes, `fundus`: descriptors)",
            store.display()
        ),
        format!(
            "explanations: {} and {}",
            explained[0].display(),
            explained[1].display()
        ),
        format!(
            "report: {} ({total:.0} s in all)",
            o.join("report.html").display()
        ),
    ];
    write_index(o, &summary, &reports)?;
    let json = serde_json::json!({
        "summary": summary,
        "seconds": timings,
        "total_seconds": total,
        "settings": {"n": a.n, "size": a.size, "input": a.input, "epochs": a.epochs, "pretrain_epochs": a.pretrain_epochs, "seed": a.seed},
        "cxr": reports[0]["scores"],
        "fundus": reports[1]["scores"],
    });
    std::fs::write(o.join("report.json"), serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", o.join("report.json").display()))?;
    println!("\n== summary");
    for line in &summary {
        println!("{line}");
    }
    Ok(())
}

/// What each part of the demo is, for its report page.
const PARTS: [(&str, &str, &str); 2] = [
    (
        "cxr",
        "Chest X-rays: fusion hashing with C2L pretraining",
        "Guan et al., Comput. Methods Programs Biomed. 222 (2022). A small DenseNet pretrained \
         self-supervised with C2L on the chest phantoms; a global network whose Grad-CAM map crops \
         a local region for a local network; global and local features fused into a 48-bit hash \
         layer trained with classification, quantization and bit-balance losses. Cases are ranked \
         by Hamming distance, ties by the relaxed codes; a case is relevant when it shares a \
         finding with the query.",
    ),
    (
        "fundus",
        "Fundus photographs: mirror attention with the fine triplet loss",
        "Biomed. Signal Process. Control (2023), 104277. A small DenseNet with mirror attention \
         (the left-right and vertical mirror halves of each image attend to each other, raising \
         small scattered lesions) and GeM pooling, trained with the fine triplet loss on P x K \
         batches of DR grades. Cases are ranked by cosine distance between descriptors; a case \
         is relevant when it has the query's grade.",
    ),
];

/// One evaluation's headline table and PR curve, from its `report.json`.
fn headline_table(r: &serde_json::Value) -> Result<String> {
    use medret_eval::report::Scores;
    let s: Scores = serde_json::from_value(r["scores"].clone()).context("an evaluation report")?;
    let base: std::collections::BTreeMap<String, Scores> =
        serde_json::from_value(r["baselines"].clone()).unwrap_or_default();
    medret_eval::html::headline(&s, &base).map_err(anyhow::Error::msg)
}

/// `report.html`: the summary, then each method named and described, with its headline
/// table, its precision-recall curve, a link to its full report and its sample search.
fn write_index(o: &Path, summary: &[String], reports: &[serde_json::Value]) -> Result<()> {
    use medret_eval::html::esc;
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>medret demo</title>\
<style>body{font-family:sans-serif;margin:2em;max-width:1000px}li{margin:.4em 0}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style></head><body>\
<h1>medret demo</h1><p>Both methods trained on synthetic phantoms, one archive, an explained search of each, \
and each evaluated on held-out phantoms (queries) against the archive's training split, beside model-free \
baselines and reference levels.</p><ul>",
    );
    for line in summary {
        h.push_str(&format!("<li>{}</li>", esc(line)));
    }
    h.push_str("</ul>");
    for ((name, title, about), r) in PARTS.iter().zip(reports) {
        h.push_str(&format!(
            "<h2>{}</h2><p>{}</p><p>{} queries against {} database images. \
             <a href=\"eval-{name}/report.html\">Full evaluation</a> (intervals, baselines, timings, gallery).</p>",
            esc(title),
            esc(about),
            r["scores"]["queries"],
            r["scores"]["database"]
        ));
        h.push_str(&headline_table(r)?);
        let dir = o.join(format!("explain-{name}"));
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.ends_with(".png"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        h.push_str("<h3>A search, explained</h3><p>");
        for f in files {
            h.push_str(&format!(
                "<a href=\"explain-{name}/{0}\"><img src=\"explain-{name}/{0}\" alt=\"{0}\" width=\"160\"></a> ",
                esc(&f)
            ));
        }
        h.push_str("</p>");
    }
    h.push_str("</body></html>\n");
    let path = o.join("report.html");
    std::fs::write(&path, h).with_context(|| format!("cannot write {}", path.display()))
}
