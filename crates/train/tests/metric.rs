//! The fundus metric task learns: on a graded set whose grade is the number of small
//! lesions, a short training raises the test mAP@100 well above the untrained network's;
//! each loss trains; a single-grade set is refused.

use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use medret_data::{Dataset, Format, ImageSource, Record, Split};
use medret_models::Arch;
use medret_models::fundus_metric::Attention;
use medret_train::metric::{MetricLoss, MetricSettings, MetricTask, retrieval_report};
use medret_train::{
    EarlyStopping, OptimizerConfig, RunOptions, ScheduleConfig, Task, TrainConfig, train,
};

/// Grey 48x48 images, grade g = 0, 2 or 4 bright dots of radius 2 (three grades, so the
/// counting is learnable in a few epochs), on a background whose brightness varies from
/// image to image and with a bright bar of random length: the image's overall brightness,
/// which an untrained network's pooled features follow, says little about the grade.
fn dots(n: usize, grades: &[u8]) -> Dataset {
    let size = 48usize;
    let mut state = 99u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let g = grades[i % grades.len()];
        let centres: Vec<(f32, f32)> = (0..g)
            .map(|_| (6.0 + rnd() * 36.0, 6.0 + rnd() * 36.0))
            .collect();
        let (level, bar_y, bar_len) = (
            40.0 + rnd() * 80.0,
            (4.0 + rnd() * 40.0) as usize,
            (rnd() * 44.0) as usize,
        );
        let mut px = vec![0u8; size * size];
        for y in 0..size {
            for x in 0..size {
                let mut v = level + 20.0 * rnd();
                if y.abs_diff(bar_y) <= 2 && x < bar_len {
                    v += 70.0;
                }
                if centres
                    .iter()
                    .any(|&(cx, cy)| (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < 5.0)
                {
                    v += 120.0;
                }
                px[y * size + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
        images.push(px);
        labels.push(g);
    }
    let all: Arc<[u8]> = Arc::from(images.concat());
    let records = labels
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let mut r = Record::new(
                format!("d{i}"),
                ImageSource::Array {
                    file: "dots".into(),
                    key: "images".into(),
                    index: i,
                    height: size,
                    width: size,
                    channels: 1,
                    pixels: all.clone(),
                },
            );
            r.grade = Some(g);
            r.labels = vec![format!("DR{g}")];
            r.patient_id = format!("p{i}");
            r.split = Some(if i % 4 == 3 {
                Split::Test
            } else {
                Split::Train
            });
            r
        })
        .collect();
    Dataset {
        format: Format::Manifest,
        root: "dots".into(),
        label_names: (0..5).map(|g| format!("DR{g}")).collect(),
        records,
        skipped: Vec::new(),
    }
}

fn settings(loss: MetricLoss) -> MetricSettings {
    let mut s = MetricSettings::new(Arch::DenseNetTiny, 48, Attention::Mirror, loss);
    s.net.backbone.block_config = vec![2, 2];
    s.transform.augment = Default::default();
    s.transform.fundus_crop = false;
    s
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 24,
        lr: 3e-3,
        optimizer: OptimizerConfig::adamw(),
        schedule: ScheduleConfig::Constant,
        warmup_epochs: 0.0,
        grad_clip_norm: Some(5.0),
        seed: 5,
        early_stopping: EarlyStopping {
            metric: "map".into(),
            higher_is_better: true,
            patience: None,
            min_delta: 0.0,
        },
        ..Default::default()
    }
}

fn split(ds: &Dataset, test: bool) -> Vec<Record> {
    ds.records
        .iter()
        .filter(|r| (r.split == Some(Split::Test)) == test)
        .cloned()
        .collect()
}

fn run(task: &MetricTask, epochs: usize) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out: out.path().to_path_buf(),
        devices: vec![Device::flex()],
        resume: false,
        keep_checkpoints: Some(1),
        stop_after_epochs: None,
    };
    train(task, &cfg(epochs), &opts, &mut |_| {}).unwrap();
    out
}

#[test]
fn short_training_beats_the_untrained_network() {
    let ds = dots(180, &[0, 2, 4]);
    let task = MetricTask::new(&ds, settings(MetricLoss::FineTriplet), 5).unwrap();
    let dev = Device::flex();
    dev.seed(5);
    let untrained = task.init_model(&dev).valid();
    let map = |m: &medret_models::fundus_metric::FundusMetricNet| {
        let r = retrieval_report(&task, m, &split(&ds, false), &split(&ds, true), &dev).unwrap();
        (
            r["map@100"].as_f64().unwrap(),
            r["majority_map@100"].as_f64().unwrap(),
        )
    };
    let (before, majority) = map(&untrained);
    let out = run(&task, 8);
    let trained = medret_models::encoder::load_fundus_metric(
        &task.settings.net,
        &out.path().join("best.safetensors"),
        &dev,
    )
    .unwrap();
    let (after, _) = map(&trained);
    eprintln!("mAP@100 untrained {before:.3}, trained {after:.3}, always-majority {majority:.3}");
    assert!(
        after > before + 0.15,
        "trained {after:.3} vs untrained {before:.3}"
    );
    assert!(
        after > majority + 0.1,
        "trained {after:.3} vs always-majority {majority:.3}"
    );
}

#[test]
fn every_loss_and_the_plain_backbone_train() {
    let ds = dots(40, &[0, 2, 4]);
    for (loss, attention) in [
        (MetricLoss::Circle, Attention::Mirror),
        (MetricLoss::Triplet, Attention::None),
        (MetricLoss::FineTriplet, Attention::None),
    ] {
        let mut s = settings(loss);
        s.net.attention = attention;
        let task = MetricTask::new(&ds, s, 1).unwrap();
        let out = run(&task, 1);
        let losses = std::fs::read_to_string(out.path().join("log/epochs.csv")).unwrap();
        let l: f64 = losses
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        // A trained pair loss on a three-grade batch is positive (every anchor has both a
        // positive and a negative), and the weights it wrote give unit descriptors of the
        // configured width that tell images apart.
        assert!(l.is_finite() && l > 0.0, "{loss:?} {attention:?}: {l}");
        let dev = Device::flex();
        let model = medret_models::encoder::load_fundus_metric(
            &task.settings.net,
            &out.path().join("checkpoints/epoch-0001/model.safetensors"),
            &dev,
        )
        .unwrap();
        let d = task.describe(&model, &split(&ds, true), &dev).unwrap();
        let want = match attention {
            Attention::Mirror => 2 * task.settings.net.backbone.feature_dim(),
            Attention::None => task.settings.net.backbone.feature_dim(),
        };
        assert!(d.iter().all(|v| v.len() == want), "{loss:?} {attention:?}");
        for v in &d {
            let n: f32 = v.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
        assert!(d.windows(2).any(|w| w[0] != w[1]), "descriptors all equal");
    }
}

#[test]
fn single_grade_and_out_of_range_grades_are_refused() {
    let ds = dots(20, &[2]);
    let e = MetricTask::new(&ds, settings(MetricLoss::FineTriplet), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("at least two"), "{e}");
    let mut ds = dots(20, &[0, 2]);
    ds.records[0].grade = Some(7);
    ds.records[0].split = Some(Split::Train);
    let e = MetricTask::new(&ds, settings(MetricLoss::FineTriplet), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("outside 0-4"), "{e}");
    // Ungraded images are skipped and counted.
    let mut ds = dots(30, &[0, 2]);
    ds.records[1].grade = None;
    ds.records[1].split = Some(Split::Train);
    let t = MetricTask::new(&ds, settings(MetricLoss::FineTriplet), 1).unwrap();
    assert_eq!(t.ungraded, 1);
}
