//! Fusion hashing learns: on a three-class lesion set, a short training lifts the test
//! split's retrieval mAP well above the untrained network's and above the always-majority
//! level; every ablation variant trains and encodes.

mod common;

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use medret_data::{Record, Split};
use medret_models::Arch;
use medret_models::cxr_hash::{Branches, SaliencyKind};
use medret_train::hash::{HashSchedule, HashSettings, HashTask, retrieval_report};
use medret_train::{
    EarlyStopping, OptimizerConfig, RunOptions, ScheduleConfig, Task, TrainConfig, train,
};

fn settings(ds: &medret_data::Dataset) -> HashSettings {
    let mut s = HashSettings::for_dataset(ds, Arch::DenseNetTiny, 64, 16).unwrap();
    // One transition: 8x8 maps at 64 px, fine enough for the crop to matter.
    s.net.backbone.block_config = vec![3, 3];
    s.net.fc_dim = 64;
    s.transform.augment = Default::default();
    s
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 3e-3,
        optimizer: OptimizerConfig::adamw(),
        schedule: ScheduleConfig::Constant,
        warmup_epochs: 0.0,
        grad_clip_norm: Some(5.0),
        seed: 4,
        early_stopping: EarlyStopping {
            metric: "map".into(),
            higher_is_better: true,
            patience: None,
            min_delta: 0.0,
        },
        ..Default::default()
    }
}

fn run(task: &HashTask, epochs: usize, out: &Path) {
    let opts = RunOptions {
        out: out.to_path_buf(),
        devices: vec![Device::flex()],
        resume: false,
        keep_checkpoints: Some(1),
        stop_after_epochs: None,
    };
    train(task, &cfg(epochs), &opts, &mut |_| {}).unwrap();
}

fn split(ds: &medret_data::Dataset, test: bool) -> Vec<Record> {
    ds.records
        .iter()
        .filter(|r| (r.split == Some(Split::Test)) == test)
        .cloned()
        .collect()
}

fn map100(
    task: &HashTask,
    model: &medret_models::cxr_hash::FusionHashNet,
    ds: &medret_data::Dataset,
) -> (f64, f64) {
    let r = retrieval_report(
        task,
        model,
        &split(ds, false),
        &split(ds, true),
        &Device::flex(),
    )
    .unwrap();
    (
        r["map@100"].as_f64().unwrap(),
        r["majority_map@100"].as_f64().unwrap(),
    )
}

#[test]
fn short_training_beats_the_untrained_network() {
    let (ds, _) = common::blob_dataset(240, 3);
    let epochs = 8;
    let mut s = settings(&ds);
    s.schedule = HashSchedule::Staged { global_epochs: 3 };
    let task = HashTask::new(&ds, s, 4).unwrap();
    let dev = Device::flex();
    dev.seed(4);
    let untrained = task.init_model(&dev).valid();
    let (before, majority) = map100(&task, &untrained, &ds);

    let out = tempfile::tempdir().unwrap();
    run(&task, epochs, out.path());
    let model = medret_train::hash::load_fusion(
        task.init_model(&dev),
        &task.settings.net,
        &out.path().join("best.safetensors"),
    )
    .unwrap()
    .valid();
    let (after, _) = map100(&task, &model, &ds);
    eprintln!("mAP@100 untrained {before:.3}, trained {after:.3}, always-majority {majority:.3}");
    assert!(
        after > before + 0.2,
        "trained {after:.3} vs untrained {before:.3}"
    );
    assert!(
        after > majority + 0.1,
        "trained {after:.3} vs always-majority {majority:.3}"
    );
}

/// An ablation variant: its name and how it changes the settings.
type Variant = (&'static str, Box<dyn Fn(&mut HashSettings)>);

/// Mean over columns of the standard deviation over rows of an `n x w` matrix.
fn spread(m: &[f32], w: usize) -> f64 {
    let rows: Vec<&[f32]> = m.chunks(w).collect();
    let n = rows.len() as f64;
    (0..w)
        .map(|j| {
            let mean = rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / n;
            (rows
                .iter()
                .map(|r| (f64::from(r[j]) - mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        })
        .sum::<f64>()
        / w as f64
}

/// Every ablation variant, and the full method beside them, trains 2 epochs and encodes
/// the whole set: outputs of the right shape, finite, relaxed codes and logits that vary
/// from image to image (a head that emits a constant, or codes left unfilled, do not),
/// and every variant's codes differ from the full method's and from each other's, so a
/// switch that is silently ignored fails. Training on the CPU is deterministic: an
/// ignored switch gives the very same codes.
#[test]
fn every_ablation_variant_trains_and_encodes() {
    let (ds, _) = common::blob_dataset(48, 3);
    let variants: Vec<Variant> = vec![
        ("full", Box::new(|_| {})),
        ("global", Box::new(|s| s.net.branches = Branches::Global)),
        ("local", Box::new(|s| s.net.branches = Branches::Local)),
        (
            "activation",
            Box::new(|s| s.net.saliency = SaliencyKind::Activation),
        ),
        (
            "no quantization, no balance, joint",
            Box::new(|s| {
                s.alpha = 0.0;
                s.beta = 0.0;
                s.schedule = HashSchedule::Joint;
            }),
        ),
    ];
    let records = &ds.records;
    let (n, bits, classes) = (records.len(), 16, ds.label_names.len());
    let mut codes: Vec<(&str, Vec<f32>)> = Vec::new();
    for (name, set) in variants {
        let mut s = settings(&ds);
        set(&mut s);
        let task = HashTask::new(&ds, s, 1).unwrap();
        let out = tempfile::tempdir().unwrap();
        run(&task, 2, out.path());
        let dev = Device::flex();
        let model = medret_train::hash::load_fusion(
            task.init_model(&dev),
            &task.settings.net,
            &out.path().join("checkpoints/epoch-0002/model.safetensors"),
        )
        .unwrap()
        .valid();
        // The global-only variant has no local network; every other one has.
        assert_eq!(model.local.is_some(), name != "global", "{name}");
        let (h, logits, global) = task.encode(&model, records, &dev, 8, false).unwrap();
        assert_eq!(h.len(), n * bits, "{name}");
        assert_eq!(logits.len(), n * classes, "{name}");
        assert_eq!(global.len(), n * classes, "{name}");
        assert!(h.iter().all(|v| v.is_finite() && v.abs() <= 1.0), "{name}");
        assert!(
            logits.iter().chain(&global).all(|v| v.is_finite()),
            "{name}"
        );
        // After 2 epochs the relaxed codes are still small (|h| at most 0.3; their signs
        // take 1 to 5 patterns over the 48 images, so signs alone cannot tell) and a bit's
        // standard deviation over the images is 0.0098 to 0.015, the head's logits' 0.007
        // to 0.012: 1e-3 leaves room, and a constant output is 0.
        let (hs, ls) = (spread(&h, bits), spread(&logits, classes));
        assert!(
            hs > 1e-3,
            "{name}: the codes hardly vary across images ({hs})"
        );
        assert!(
            ls > 1e-3,
            "{name}: the logits hardly vary across images ({ls})"
        );
        codes.push((name, h));
    }
    // Mean |difference| per code entry between two variants: 0.012 (without the
    // quantization and balance terms, against the full method) to 0.18; an ignored
    // switch gives exactly 0.
    for (i, (a, ha)) in codes.iter().enumerate() {
        for (b, hb) in &codes[..i] {
            let d = ha
                .iter()
                .zip(hb)
                .map(|(x, y)| f64::from((x - y).abs()))
                .sum::<f64>()
                / ha.len() as f64;
            assert!(
                d > 1e-3,
                "`{a}` encodes as `{b}` does (mean |difference| {d})"
            );
        }
    }
}

/// DPSH and CSQ train the same head in the same trainer and learn: 8 epochs lift test
/// mAP@100 well above the untrained network's.
#[test]
fn dpsh_and_csq_losses_learn() {
    use medret_train::hash::HashLoss;
    let (ds, _) = common::blob_dataset(240, 3);
    for loss in [HashLoss::Dpsh, HashLoss::Csq] {
        let mut s = settings(&ds);
        s.loss = loss;
        let task = HashTask::new(&ds, s, 4).unwrap();
        let dev = Device::flex();
        dev.seed(4);
        let (before, _) = map100(&task, &task.init_model(&dev).valid(), &ds);
        let out = tempfile::tempdir().unwrap();
        run(&task, 8, out.path());
        let model = medret_train::hash::load_fusion(
            task.init_model(&dev),
            &task.settings.net,
            &out.path().join("best.safetensors"),
        )
        .unwrap()
        .valid();
        let (after, majority) = map100(&task, &model, &ds);
        eprintln!(
            "{loss:?}: mAP@100 untrained {before:.3}, trained {after:.3}, always-majority {majority:.3}"
        );
        assert!(
            after > before + 0.2,
            "{loss:?}: trained {after:.3} vs untrained {before:.3}"
        );
    }
}

/// `--sampling balanced` reaches the batches: on a set where one class holds 80% of the
/// training images, an epoch's draws give each class about a third, where the uniform
/// epoch gives each image once.
#[test]
fn balanced_sampling_evens_out_the_classes_of_an_epoch() {
    let (mut ds, _) = common::blob_dataset(150, 3);
    // Keep every "No Finding" image and one in four of the others: 50 + 26 images, two
    // thirds one class (the others 13 each).
    ds.records.retain(|r| {
        let i: usize = r.id.trim_start_matches("blob").parse().unwrap();
        r.labels[0] == "No Finding" || (i / 3).is_multiple_of(4)
    });
    let counts = |task: &HashTask| {
        let mut per = vec![0usize; task.settings.classes.len()];
        let mut n = 0;
        for epoch in 0..4 {
            for b in task.batches(epoch, 16) {
                let b = b.unwrap();
                for i in &b.index {
                    per[*i as usize] += 1;
                }
                n += b.index.len();
            }
        }
        (per, n)
    };
    let mut s = settings(&ds);
    let uniform = HashTask::new(&ds, s.clone(), 3).unwrap();
    let (u, un) = counts(&uniform);
    assert_eq!(
        un,
        4 * uniform.train.len(),
        "uniform: every image once an epoch"
    );
    let top = *u.iter().max().unwrap() as f64 / un as f64;
    assert!(top > 0.55, "the set is skewed: {u:?}");
    s.sampling = medret_train::sampler::Sampling::Balanced;
    let balanced = HashTask::new(&ds, s, 3).unwrap();
    let (b, bn) = counts(&balanced);
    assert_eq!(bn, un, "as many draws as images");
    let present: Vec<usize> = b.iter().copied().filter(|&c| c > 0).collect();
    assert_eq!(present.len(), 3, "{b:?}");
    for c in &present {
        let share = *c as f64 / bn as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.1, "balanced: {b:?}");
    }
}
