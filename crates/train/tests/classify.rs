//! The classification task on data whose answer is known: the phantoms (loss goes down)
//! and a blob-detection set with known lesion positions (Grad-CAM of the trained model
//! points at the lesion).

mod common;

use std::path::Path;

use burn::prelude::*;
use medret_data::phantom::{CxrConfig, FundusConfig, write_cxr, write_fundus};
use medret_data::{Dataset, ReadOptions, Record, Split, open_dataset};
use medret_models::DenseNetConfig;
use medret_models::grad_cam::grad_cam;
use medret_train::classify::{ClassifyMode, ClassifySettings, ClassifyTask};
use medret_train::{OptimizerConfig, RunOptions, ScheduleConfig, TrainConfig, train};

fn quick_cfg(epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr,
        optimizer: OptimizerConfig::adamw(),
        schedule: ScheduleConfig::Constant,
        warmup_epochs: 0.0,
        grad_clip_norm: Some(5.0),
        seed: 1,
        ..Default::default()
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        devices: vec![Device::flex()],
        resume: false,
        keep_checkpoints: Some(2),
        stop_after_epochs: None,
    }
}

/// Mean training loss per epoch from `log/epochs.csv`.
fn epoch_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("log/epochs.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

fn train_on(ds: &Dataset, epochs: usize) -> (Vec<f64>, tempfile::TempDir, ClassifyTask) {
    let mut settings = ClassifySettings::for_dataset(ds, "tiny", 32).unwrap();
    settings.transform.augment = Default::default();
    settings.val_fraction = 0.2;
    let task = ClassifyTask::new(ds, settings, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    train(
        &task,
        &quick_cfg(epochs, 3e-3),
        &opts(out.path()),
        &mut |_| {},
    )
    .unwrap();
    (epoch_losses(out.path()), out, task)
}

#[test]
fn training_lowers_the_loss_on_chest_phantoms() {
    let data = tempfile::tempdir().unwrap();
    let cfg = CxrConfig {
        n: 40,
        size: 64,
        seed: 5,
        ..Default::default()
    };
    write_cxr(data.path(), &cfg, &|| {}).unwrap();
    let ds = open_dataset(data.path(), None, &ReadOptions::default()).unwrap();
    let (losses, out, task) = train_on(&ds, 6);
    assert_eq!(task.settings.mode, ClassifyMode::MultiLabel);
    assert_eq!(task.settings.classes.len(), 14, "No Finding is not a class");
    // BCE starts near ln 2 = 0.69 and must fall well below it.
    assert!(
        losses[5] < 0.8 * losses[0],
        "training did not lower the loss: {losses:?}"
    );
    // keep_checkpoints = 2 pruned the older ones.
    let cks = medret_train::checkpoint::list(&out.path().join("checkpoints")).unwrap();
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![5, 6]);
    // The weights use torchvision's names, so PyTorch can read them back.
    let header = medret_models::weights::read_header(&cks[1].1.join("model.safetensors")).unwrap();
    assert!(header.contains_key("features.denseblock1.denselayer1.norm1.running_mean"));
    assert_eq!(
        header["classifier.weight"].1,
        vec![14, task.settings.net.feature_dim()]
    );
}

#[test]
fn training_lowers_the_loss_on_fundus_grades() {
    let data = tempfile::tempdir().unwrap();
    let cfg = FundusConfig {
        n: 40,
        size: 64,
        seed: 5,
        ..Default::default()
    };
    write_fundus(data.path(), &cfg, &|| {}).unwrap();
    let ds = open_dataset(data.path(), None, &ReadOptions::default()).unwrap();
    let (losses, out, task) = train_on(&ds, 8);
    assert_eq!(task.settings.mode, ClassifyMode::Grade);
    // Cross-entropy over 5 grades starts near ln 5 = 1.61; the grade prior alone would
    // bring it to about 1.55.
    assert!(
        losses[7] < 0.85 * losses[0],
        "training did not lower the loss: {losses:?}"
    );
    let epochs = std::fs::read_to_string(out.path().join("log/epochs.csv")).unwrap();
    for col in ["val_accuracy", "val_kappa", "val_loss"] {
        assert!(epochs.lines().next().unwrap().contains(col), "{epochs}");
    }
}

#[test]
fn grad_cam_of_a_trained_model_points_at_the_lesion() {
    let (ds, centres) = common::blob_dataset(160, 2);
    let mut settings = ClassifySettings::for_dataset(&ds, "tiny", 64).unwrap();
    // One transition (stride 8): 8x8 feature maps at 64 px, fine enough to localise.
    settings.net = DenseNetConfig {
        block_config: vec![3, 3],
        num_classes: Some(1),
        ..DenseNetConfig::tiny()
    };
    settings.transform.augment = Default::default();
    settings.val_fraction = 0.0;
    assert_eq!(settings.classes, vec!["Mass".to_string()]);
    let task = ClassifyTask::new(&ds, settings, 3).unwrap();
    // The pointing rate of one trained model is seed-sensitive: rounding differences of
    // 1e-5 in a BatchNorm change it from 19/20 to 11/20 for seed 3, and burn's own path
    // gives 14/20 for seed 6 at 16 epochs. So the claim is about a typical model: the
    // median over three seeds.
    let mut rates = Vec::new();
    for seed in [3u64, 4, 5] {
        let out = tempfile::tempdir().unwrap();
        let mut cfg = quick_cfg(12, 2e-3);
        cfg.seed = seed;
        train(&task, &cfg, &opts(out.path()), &mut |_| {}).unwrap();

        let weights = medret_train::checkpoint::latest(&out.path().join("checkpoints"))
            .unwrap()
            .unwrap()
            .join("model.safetensors");
        let dev = Device::flex();
        let (_, model) = medret_train::classify::load_trained(out.path(), &weights, &dev).unwrap();

        // It learned the task...
        let test: Vec<Record> = ds
            .records
            .iter()
            .filter(|r| r.split == Some(Split::Test))
            .cloned()
            .collect();
        let probs = task.predict(&model, &test, &dev, 16).unwrap();
        let auc = task.score(&probs, &test)["auc"];
        assert!(auc > 0.9, "test AUC {auc}");

        // ...and its Grad-CAM peak falls on the lesion (within one feature cell, 8 px, of the
        // disc's edge) for positive test images. By chance, a peak would land in that 26 px
        // window about 16% of the time.
        let pipeline = medret_models::features::torchvision_pipeline(64);
        let (mut hits, mut total) = (0, 0);
        for (k, r) in ds.records.iter().enumerate() {
            let Some((cx, cy)) = centres[k] else { continue };
            if r.split != Some(Split::Test) {
                continue;
            }
            let img = pipeline.load(r, 0, 0).unwrap();
            let x = Tensor::<4>::from_data(TensorData::new(img.data, [1, 3, 64, 64]), &dev);
            let s = &grad_cam(&model, x, &[vec![0]])[0];
            let (py, px) = s.argmax();
            total += 1;
            if (px as f32 - cx).abs() <= 13.0 && (py as f32 - cy).abs() <= 13.0 {
                hits += 1;
            }
        }
        assert!(total >= 15);
        eprintln!("seed {seed}: grad-cam pointing {hits}/{total}, test auc {auc:.3}");
        rates.push(hits as f64 / total as f64);
    }
    rates.sort_by(f64::total_cmp);
    assert!(
        rates[1] >= 0.8,
        "Grad-CAM hit the lesion in a median {:.2} of images over three seeds ({rates:?})",
        rates[1]
    );
}
