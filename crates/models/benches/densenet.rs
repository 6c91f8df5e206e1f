//! DenseNet speed on burn-flex: one training step (forward, cross-entropy, backward, AdamW)
//! and inference throughput (medians over the timed steps). Prints one JSON line per configuration, comparable with
//! `bench/densenet_torch.py`; `bench/densenet.sh` runs both and prints the ratios.
//!
//! `cargo bench -p medret-models --bench densenet -- [--arch densenet121|tiny]
//!  [--size 224] [--train-batch 16] [--infer-batch 64] [--steps 3] [--threads 2] [--precision bf16]
//!  [--device gpu:0] [--checkpointing]`
//!
//! `--infer-batch 0` skips inference and `--steps 0` times nothing after the first step, so a process's peak memory is the training step's
//! (`bench/peak_memory.sh`); `--checkpointing` runs the step with burn's balanced gradient
//! checkpointing, as training on a GPU does (docs/gpu.md).

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::DenseNetConfig;
use medret_models::kernels::Precision;

// The allocator the `medret` binary uses, so the figures are the product's (see
// crates/models/src/alloc.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The median of `v` (seconds): the machines these run on are shared, and one slow step
/// moves a mean more than it moves a median.
/// NaN for no values (`--steps 0`: the untimed step alone, for its peak memory; a step on
/// lavapipe takes minutes).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The median time of `steps` runs of `f`.
fn median_secs(steps: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..steps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    medret_models::alloc::keep_freed_memory();
    let arch = arg("--arch", "densenet121");
    let size: usize = arg("--size", "224").parse().unwrap();
    let train_batch: usize = arg("--train-batch", "16").parse().unwrap();
    let infer_batch: usize = arg("--infer-batch", "64").parse().unwrap();
    let steps: usize = arg("--steps", "3").parse().unwrap();
    let threads: usize = arg("--threads", "2").parse().unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let cfg = match arch.as_str() {
        "tiny" => DenseNetConfig::tiny(),
        _ => DenseNetConfig::densenet121(),
    };
    let classes = cfg.num_classes.unwrap_or(1000);
    // `--device gpu:0` (a GPU build) times the same step on an adapter (bench/gpu.sh).
    let device_name = arg("--device", "cpu");
    let device = medret_models::device::parse_device(&device_name).unwrap_or_else(|e| {
        eprintln!("--device {device_name}: {e}");
        std::process::exit(2)
    });

    // `--precision bf16`: inference's products in bf16 (kernels/bf16.rs); training stays f32.
    let precision: Precision = arg("--precision", "f32").parse().unwrap_or_else(|e| {
        eprintln!("--precision: {e}");
        std::process::exit(2)
    });

    // Inference: eval mode, one warm-up batch, then `steps` timed batches.
    let infer_s = if infer_batch == 0 {
        f64::NAN
    } else {
        let model = cfg.init(&device).valid();
        let x = Tensor::<4>::random(
            [infer_batch, 3, size, size],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        medret_models::kernels::set_precision(precision);
        let _ = model.forward(x.clone()).into_data();
        let s = median_secs(steps, || {
            let _ = model.forward(x.clone()).into_data();
        });
        medret_models::kernels::set_precision(Precision::F32);
        s
    };

    // Training step: train-mode BatchNorm, cross-entropy, backward, AdamW. `--train-precision
    // bf16`: every convolution product of the step in bf16 (mixed precision: f32 weights,
    // BatchNorm and optimiser).
    let train_precision: Precision = arg("--train-precision", "f32").parse().unwrap_or_else(|e| {
        eprintln!("--train-precision: {e}");
        std::process::exit(2)
    });
    medret_models::kernels::set_precision(train_precision);
    let checkpointing = std::env::args().any(|a| a == "--checkpointing");
    let ad = if checkpointing {
        device.autodiff().gradient_checkpointing()
    } else {
        device.autodiff()
    };
    let mut model = cfg.init(&ad);
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let x = Tensor::<4>::random(
        [train_batch, 3, size, size],
        Distribution::Uniform(0.0, 1.0),
        &ad,
    );
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(
            (0..train_batch as i64)
                .map(|i| i % classes as i64)
                .collect(),
            [train_batch],
        ),
        &ad,
    );
    let mut step = |model: medret_models::DenseNet| {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        let _ = loss.into_data();
        model
    };
    model = step(model);
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        model = step(model);
        times.push(t.elapsed().as_secs_f64());
    }
    let train_s = median(times);
    // JSON has no NaN: a figure not measured is null.
    let num = |v: f64, digits: usize| {
        if v.is_finite() {
            format!("{v:.digits$}")
        } else {
            "null".to_string()
        }
    };
    let infer = if infer_batch == 0 {
        f64::NAN
    } else {
        infer_batch as f64 / infer_s
    };
    println!(
        "{{\"framework\": \"burn 0.22.1 on {device_name}\", \"arch\": \"{arch}\", \"size\": {size}, \"threads\": {threads}, \
         \"checkpointing\": {checkpointing}, \"precision\": \"{precision}\", \"train_precision\": \"{train_precision}\", \"train_batch\": {train_batch}, \"train_step_ms\": {}, \"infer_batch\": {infer_batch}, \"infer_img_per_s\": {}}}",
        num(train_s * 1e3, 1),
        num(infer, 2)
    );
}
