//! `medret demo`: the main job on embedded defaults. It generates both phantom sets, reads
//! them back through the real readers, summarises them, draws contact sheets, scores a
//! model-free retrieval baseline (raw-pixel thumbnails, cosine and 64-bit
//! sign-random-projection codes) with the evaluation protocol, and trains a small DenseNet
//! classifier on each set with the training engine (test-split AUC, and a Grad-CAM overlay
//! of one test image). The retrieval methods replace the baseline as they land.

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
    #[arg(long, default_value_t = 800)]
    n: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 192)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training epochs of the demo classifiers (0 skips training).
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Input side of the demo classifiers: small enough to train in seconds on a CPU.
const DEMO_INPUT: usize = 96;

/// The demo classifier's outcome on one phantom set.
#[derive(Serialize)]
struct TrainReport {
    run_dir: PathBuf,
    epochs: usize,
    seconds: f64,
    /// Test split: mean per-finding AUC (chest) or referable-DR AUC (fundus).
    test_auc: Option<f64>,
    test_metrics: medret_train::Metrics,
    grad_cam_overlay: Option<PathBuf>,
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
    classifier: Option<TrainReport>,
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
            bits: proj.len(),
        },
        &HammingSet {
            codes: &dc,
            truth: &dt,
            bits: proj.len(),
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
    let classifier = if args.epochs > 0 {
        Some(train_classifier(args, name, &ds)?)
    } else {
        None
    };
    Ok(SetReport {
        name: name.into(),
        generated,
        images_per_second: rate,
        summary,
        contact_sheet: sheet_path,
        chance_precision: chance,
        baseline_cosine: cos,
        baseline_hamming_64: ham,
        classifier,
    })
}

/// Trains the small DenseNet at 96 px with the engine's defaults, scores the test split
/// with the best weights and draws Grad-CAM over the first positive test image.
fn train_classifier(args: &DemoArgs, name: &str, ds: &Dataset) -> Result<TrainReport> {
    use burn::prelude::*;
    use medret_train::Task;
    use medret_train::classify::{ClassifySettings, ClassifyTask, load_trained};

    let run_dir = args.out.join(format!("{name}_classifier"));
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("cannot clear {}", run_dir.display()))?;
    }
    let settings = ClassifySettings::for_dataset(ds, "tiny", DEMO_INPUT)?;
    let task = ClassifyTask::new(ds, settings, args.seed)?;
    let cfg = medret_train::TrainConfig {
        epochs: args.epochs,
        batch_size: 32,
        lr: 3e-3,
        warmup_epochs: 0.5,
        seed: args.seed,
        early_stopping: medret_train::EarlyStopping {
            metric: "auc".into(),
            higher_is_better: true,
            patience: None,
            min_delta: 0.0,
        },
        ..Default::default()
    };
    let device = Device::flex();
    let opts = medret_train::RunOptions {
        out: run_dir.clone(),
        devices: vec![device.clone()],
        resume: false,
        keep_checkpoints: Some(1),
        stop_after_epochs: None,
    };
    let steps = task.steps_per_epoch(cfg.batch_size) * cfg.epochs;
    let bar = crate::progress::bar(steps as u64, &format!("{name} classifier"));
    let t = std::time::Instant::now();
    let outcome = medret_train::train(&task, &cfg, &opts, &mut |e| {
        if let medret_train::Event::Step(_) = e {
            bar.inc(1)
        }
    })?;
    bar.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();
    let weights = if outcome.best_weights.is_file() {
        outcome.best_weights.clone()
    } else {
        medret_train::checkpoint::latest(&run_dir.join("checkpoints"))?
            .context("no checkpoint was written")?
            .join("model.safetensors")
    };
    let (_, model) = load_trained(&run_dir, &weights, &device)?;
    let test: Vec<_> = ds
        .records
        .iter()
        .filter(|r| r.split == Some(Split::Test))
        .cloned()
        .collect();
    let probs = task.predict(&model, &test, &device, 32)?;
    let test_metrics = task.score(&probs, &test);

    // Explain the first test image with a finding (chest) or referable DR (fundus).
    let target = test.iter().find_map(|r| {
        let classes = &task.settings.classes;
        match r.grade {
            Some(g) if g >= 2 => Some((r, vec![g as usize])),
            Some(_) => None,
            None => {
                let t: Vec<usize> = r
                    .labels
                    .iter()
                    .filter_map(|l| classes.iter().position(|c| c == l))
                    .collect();
                (!t.is_empty()).then_some((r, t))
            }
        }
    });
    let grad_cam_overlay = match target {
        Some((r, classes)) => {
            let pipeline = medret_models::features::torchvision_pipeline(DEMO_INPUT);
            let img = pipeline.load(r, 0, 0)?;
            let x = Tensor::<4>::from_data(
                TensorData::new(img.data.clone(), [1, img.channels, img.height, img.width]),
                &device,
            );
            let cam = &medret_models::grad_cam::grad_cam(&model, x, &[classes])[0];
            // Overlay on the unnormalised picture, at the size the clinician sees.
            let shown = medret_data::transform::Pipeline::new(
                TransformConfig {
                    size: 256,
                    channels: Channels::Rgb,
                    fundus_crop: task.settings.transform.fundus_crop,
                    ..Default::default()
                },
                0,
            )
            .load(r, 0, 0)?;
            let map = medret_models::grad_cam::upsample_bilinear(
                &cam.data, cam.height, cam.width, 256, 256,
            );
            let png = medret_data::overlay::overlay(&shown, &map, 0.45)?;
            let path = args.out.join(format!("{name}_grad_cam.png"));
            png.save(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    Ok(TrainReport {
        run_dir,
        epochs: outcome.epochs,
        seconds,
        test_auc: test_metrics.get("auc").copied(),
        test_metrics,
        grad_cam_overlay,
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
        if let Some(c) = &s.classifier {
            println!(
                "  small DenseNet classifier ({} epochs, {:.1} s): test AUC {}",
                c.epochs,
                c.seconds,
                c.test_auc
                    .map(|a| format!("{a:.3}"))
                    .unwrap_or_else(|| "undefined".into())
            );
            if let Some(p) = &c.grad_cam_overlay {
                println!("  Grad-CAM of a test image: {}", p.display());
            }
        }
    }
    println!("report: {}", report_path.display());
    Ok(())
}
