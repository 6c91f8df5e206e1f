//! Reads back to the host in a training step, counted (`medret_models::host`): on a GPU
//! each one drains the device's queue. Every loss stays on the device until the step's
//! one read (the logged loss, with the gradient norm); the fusion method adds one for its
//! crop, whose connected-component search runs on the host. Training code cannot read
//! past the counter: `crates/train/clippy.toml` forbids the tensor's own read methods.
//!
//! The counter is process-wide, so the runs here take turns.

mod common;

use burn::prelude::*;
use medret_models::Arch;
use medret_models::fundus_metric::Attention;
use medret_models::host;
use medret_train::c2l::{C2lSettings, C2lTask};
use medret_train::hash::{HashSettings, HashTask};
use medret_train::metric::{MetricLoss, MetricSettings, MetricTask};
use medret_train::{Event, OptimizerConfig, RunOptions, ScheduleConfig, Task, TrainConfig, train};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The reads made by each step after the first of one epoch of `task` (the first may
/// include one-off reads; the epoch's validation comes after the last step).
fn reads_per_step<T: Task>(task: &T, clip: Option<f32>, log_every: usize) -> Vec<u64> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 4,
        lr: 1e-3,
        optimizer: OptimizerConfig::adamw(),
        schedule: ScheduleConfig::Constant,
        warmup_epochs: 0.0,
        grad_clip_norm: clip,
        seed: 5,
        log_every,
        ..Default::default()
    };
    let opts = RunOptions {
        out: dir.path().to_path_buf(),
        devices: vec![Device::flex()],
        resume: false,
        keep_checkpoints: Some(1),
        stop_after_epochs: None,
    };
    let mut at_step = Vec::new();
    train(task, &cfg, &opts, &mut |e| {
        if let Event::Step(_) = e {
            at_step.push(host::reads());
        }
    })
    .unwrap();
    assert!(at_step.len() >= 3, "{} steps", at_step.len());
    at_step.windows(2).map(|w| w[1] - w[0]).collect()
}

fn hash_task() -> HashTask {
    let (ds, _) = common::blob_dataset(24, 3);
    let mut s = HashSettings::for_dataset(&ds, Arch::DenseNetTiny, 32, 16).unwrap();
    s.net.backbone.block_config = vec![1, 1];
    s.net.fc_dim = 16;
    s.transform.augment = Default::default();
    assert!(s.net.needs_local(), "the fusion method crops");
    HashTask::new(&ds, s, 1).unwrap()
}

#[test]
fn a_fusion_hash_step_reads_once_for_the_loss_and_once_for_its_crop() {
    let task = hash_task();
    // With clipping, the norm comes back in the loss's read.
    assert!(
        reads_per_step(&task, Some(5.0), 1).iter().all(|&r| r == 2),
        "{:?}",
        reads_per_step(&task, Some(5.0), 1)
    );
    // Without clipping and between logged steps, the same.
    let r = reads_per_step(&task, None, 1000);
    assert!(r.iter().all(|&r| r == 2), "{r:?}");
}

#[test]
fn a_mirror_attention_fine_triplet_step_reads_once() {
    // More images: the class-balanced sampler makes fewer batches of them.
    let (mut ds, _) = common::blob_dataset(48, 3);
    for (i, r) in ds.records.iter_mut().enumerate() {
        r.grade = Some((i % 3) as u8 * 2);
        r.labels.clear();
    }
    let mut s = MetricSettings::new(
        Arch::DenseNetTiny,
        32,
        Attention::Mirror,
        MetricLoss::FineTriplet,
    );
    s.net.backbone.block_config = vec![1, 1];
    s.transform.augment = Default::default();
    s.transform.fundus_crop = false;
    let task = MetricTask::new(&ds, s, 1).unwrap();
    let r = reads_per_step(&task, Some(5.0), 1);
    assert!(r.iter().all(|&r| r == 1), "{r:?}");
}

#[test]
fn a_c2l_step_reads_once_and_keeps_its_keys_on_the_device() {
    let (ds, _) = common::blob_dataset(24, 3);
    let mut s = C2lSettings::new(Arch::DenseNetTiny, 32);
    s.net.backbone.block_config = vec![1, 1];
    s.net.queue = 16;
    s.net.proj_dim = 8;
    let task = C2lTask::new(&ds, s, 1).unwrap();
    let r = reads_per_step(&task, Some(5.0), 1);
    assert!(r.iter().all(|&r| r == 1), "{r:?}");
}
