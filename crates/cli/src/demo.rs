//! `medret demo`: the main job on embedded defaults. For now (before the models land) it
//! generates both phantom sets, reads them back through the real readers, summarises them,
//! draws contact sheets, and scores a model-free retrieval baseline (raw-pixel thumbnails,
//! cosine and 64-bit sign-random-projection codes) with the evaluation protocol, so every
//! stage after the model already runs end to end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use medret_data::transform::{Channels, Pipeline, TransformConfig};
use medret_data::{Dataset, ReadOptions, Split, open_dataset, summarise};
use medret_eval::codes::pack_signs;
use medret_eval::{HammingSet, Relevance, Report, Truth, evaluate_cosine, evaluate_hamming};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::SynthArgs;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (phantoms, contact sheets, report.json).
    #[arg(long, default_value = "medret-demo")]
    out: PathBuf,
    /// Images per phantom set.
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 192)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Indices `0..len` spread evenly, at most `n` of them.
pub fn evenly_spaced(len: usize, n: usize) -> Vec<usize> {
    if len == 0 || n == 0 {
        return Vec::new();
    }
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

#[derive(Serialize)]
struct SetReport {
    name: String,
    generated: usize,
    images_per_second: f64,
    summary: medret_data::Summary,
    contact_sheet: PathBuf,
    /// Mean fraction of the database relevant to a query: the precision of a random ranking.
    chance_precision: f64,
    baseline_cosine: Report,
    baseline_hamming_64: Report,
}

fn truth(ds: &Dataset, graded: bool) -> Vec<Truth> {
    ds.records
        .iter()
        .map(|r| {
            if graded {
                Truth::grade(r.grade.unwrap_or(0))
            } else {
                Truth::labels(
                    r.labels
                        .iter()
                        .filter_map(|l| ds.label_names.iter().position(|n| n == l))
                        .map(|i| i as u32)
                        .collect(),
                )
            }
        })
        .collect()
}

/// Raw-pixel thumbnails (16x16), centred by the database mean.
fn thumbnails(ds: &Dataset, channels: Channels) -> Result<Vec<Vec<f32>>> {
    let cfg = TransformConfig {
        size: 16,
        channels,
        fundus_crop: channels == Channels::Rgb,
        ..Default::default()
    };
    let p = Pipeline::new(cfg, 0);
    let v: Vec<Vec<f32>> = ds
        .records
        .par_iter()
        .enumerate()
        .map(|(i, r)| p.load(r, 0, i as u64).map(|im| im.data))
        .collect::<Result<_, _>>()?;
    Ok(v)
}

fn baseline(ds: &Dataset, graded: bool, seed: u64) -> Result<(f64, Report, Report)> {
    let thumbs = thumbnails(
        ds,
        if graded {
            Channels::Rgb
        } else {
            Channels::Grey
        },
    )?;
    let t = truth(ds, graded);
    let (mut q, mut qt, mut d, mut dt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, r) in ds.records.iter().enumerate() {
        if r.is_unlabelled() {
            continue;
        }
        if r.split == Some(Split::Test) {
            q.push(thumbs[i].clone());
            qt.push(t[i].clone());
        } else {
            d.push(thumbs[i].clone());
            dt.push(t[i].clone());
        }
    }
    anyhow::ensure!(
        !q.is_empty() && !d.is_empty(),
        "demo needs both test and train images"
    );
    let dim = d[0].len();
    let mut mean = vec![0.0f32; dim];
    for v in &d {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += x / d.len() as f32;
        }
    }
    for v in q.iter_mut().chain(d.iter_mut()) {
        for (x, m) in v.iter_mut().zip(&mean) {
            *x -= m;
        }
    }
    let rule = if graded {
        Relevance::SameGrade
    } else {
        Relevance::SharesLabel
    };
    let cos = evaluate_cosine(&q, &qt, &d, &dt, rule, false);
    // Sign random projections (Charikar's LSH for cosine) as a model-free hashing baseline.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let proj: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect())
        .collect();
    let code = |v: &Vec<f32>| {
        let h: Vec<f32> = proj
            .iter()
            .map(|p| p.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect();
        pack_signs(&h)
    };
    let qc: Vec<Vec<u64>> = q.iter().map(code).collect();
    let dc: Vec<Vec<u64>> = d.iter().map(code).collect();
    let ham = evaluate_hamming(
        &HammingSet {
            codes: &qc,
            truth: &qt,
        },
        &HammingSet {
            codes: &dc,
            truth: &dt,
        },
        rule,
        false,
    );
    let chance = qt
        .iter()
        .map(|a| dt.iter().filter(|b| rule.is_relevant(a, b)).count() as f64 / dt.len() as f64)
        .sum::<f64>()
        / qt.len() as f64;
    Ok((chance, cos, ham))
}

fn one_set(args: &DemoArgs, name: &str, dir: &Path) -> Result<SetReport> {
    let synth = SynthArgs {
        n: args.n,
        size: args.size,
        seed: args.seed,
        test_fraction: 0.2,
        out: dir.to_path_buf(),
        json: false,
    };
    let t = std::time::Instant::now();
    let generated = if name == "cxr" {
        crate::synth_cxr(&synth)?.len()
    } else {
        crate::synth_fundus(&synth)?.len()
    };
    let rate = generated as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let ds = open_dataset(dir, None, &ReadOptions::default())
        .with_context(|| format!("reading back {}", dir.display()))?;
    anyhow::ensure!(
        ds.records.len() == generated,
        "read back {} of {generated} images",
        ds.records.len()
    );
    let summary = summarise(&ds, true);
    let sheet_path = args.out.join(format!("{name}_contact_sheet.png"));
    let sheet = medret_data::contact_sheet::contact_sheet(
        &ds,
        &evenly_spaced(ds.records.len(), 24),
        6,
        128,
        true,
    )?;
    sheet
        .save(&sheet_path)
        .with_context(|| format!("cannot write {}", sheet_path.display()))?;
    let (chance, cos, ham) = baseline(&ds, name == "fundus", args.seed)?;
    Ok(SetReport {
        name: name.into(),
        generated,
        images_per_second: rate,
        summary,
        contact_sheet: sheet_path,
        chance_precision: chance,
        baseline_cosine: cos,
        baseline_hamming_64: ham,
    })
}

pub fn run(args: &DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let sets = vec![
        one_set(args, "cxr", &args.out.join("cxr"))?,
        one_set(args, "fundus", &args.out.join("fundus"))?,
    ];
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&sets)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(());
    }
    for s in &sets {
        println!(
            "== {} phantoms: {} generated ({:.0} images/s)",
            s.name, s.generated, s.images_per_second
        );
        print!("{}", s.summary);
        println!("  contact sheet: {}", s.contact_sheet.display());
        let c = &s.baseline_cosine;
        let h = &s.baseline_hamming_64;
        println!(
            "  raw-pixel baseline, test -> train ({}; {}):",
            c.protocol.relevance_rule, c.protocol.tie_rule
        );
        println!("    chance precision          {:.3}", s.chance_precision);
        println!(
            "    cosine:      mAP@100 {:.3}  mAP@all {:.3}  P@10 {:.3}  NDCG@10 {:.3}",
            c.map["100"], c.map["all"], c.precision["10"], c.ndcg["10"]
        );
        println!(
            "    64-bit LSH:  mAP@100 {:.3}  mAP@all {:.3}  P@10 {:.3}  P@H<=2 {:.3}  mAP@all over random tie orders {:.3}",
            h.map["100"],
            h.map["all"],
            h.precision["10"],
            h.precision_hamming_radius_2.unwrap_or(0.0),
            h.map_all_expected_over_ties
        );
    }
    println!("report: {}", report_path.display());
    Ok(())
}
