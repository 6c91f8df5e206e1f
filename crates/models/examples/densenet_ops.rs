//! Where a DenseNet training step spends its time on burn-flex: each operation of a dense
//! layer timed alone, forward and forward + backward, at DenseNet-121's block-1 shapes for
//! a 128 px input (32 x 32 maps), batch 8. `bench/densenet_ops.sh` runs this and the same
//! operations in PyTorch (`bench/densenet_ops_torch.py`) and prints the ratios. Each row is
//! a minimal reproduction of one cost.
//!
//! `cargo run -p medret-models --example densenet_ops -- [--threads 2] [--reps 5]`

use std::time::Instant;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use medret_models::densenet::conv1x1_as_matmul;

/// Forward (the autodiff graph recorded) and backward, timed apart: mean milliseconds of
/// each over `reps` runs after one warm-up. The PyTorch twin does the same work: leaves
/// made once outside the loop, graph recorded in the forward.
fn time(reps: usize, fwd: &dyn Fn() -> Tensor<1>) -> (f64, f64) {
    let once = || {
        let t = Instant::now();
        let l = fwd();
        // The forward is done once its scalar is read.
        let _ = l.clone().into_data();
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = l.backward();
        (f, t.elapsed().as_secs_f64())
    };
    once();
    let (mut f, mut b) = (0.0, 0.0);
    for _ in 0..reps {
        let (tf, tb) = once();
        f += tf;
        b += tb;
    }
    (f * 1e3 / reps as f64, b * 1e3 / reps as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = arg("--threads", 2);
    let reps = arg("--reps", 5);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");

    let (n, c_in, mid, growth, hw) = (8usize, 256usize, 128usize, 32usize, 32usize);
    let dev = Device::flex();
    let ad = dev.clone().autodiff();
    dev.seed(0);
    let rand = |shape: [usize; 4], d: &Device| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), d)
    };

    let conv1: Conv2d = Conv2dConfig::new([c_in, mid], [1, 1])
        .with_bias(false)
        .init(&ad);
    let conv3: Conv2d = Conv2dConfig::new([mid, growth], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&ad);
    let bn: BatchNorm = BatchNormConfig::new(c_in).init(&ad);
    let pool: AvgPool2d = AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init();

    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let mut row = |name: &str, fwd: &dyn Fn() -> Tensor<1>| {
        let (f, b) = time(reps, fwd);
        rows.push((name.to_string(), f, b));
    };

    // Leaves made once, outside the timed loops.
    let x_in = rand([n, c_in, hw, hw], &dev).autodiff().require_grad();
    let x_mid = rand([n, mid, hw, hw], &dev).autodiff().require_grad();
    row("conv1x1 256->128", &|| conv1.forward(x_in.clone()).sum());
    row("conv1x1 256->128 as matmul", &|| {
        conv1x1_as_matmul(&conv1, x_in.clone()).sum()
    });
    row("conv1x1 256->128, ours", &|| {
        medret_models::kernels::conv::conv2d(&conv1, x_in.clone()).sum()
    });
    row("conv3x3 128->32", &|| conv3.forward(x_mid.clone()).sum());
    row("conv3x3 128->32, ours", &|| {
        medret_models::kernels::conv::conv2d(&conv3, x_mid.clone()).sum()
    });
    row("batchnorm(train)+relu 256", &|| {
        relu(bn.forward(x_in.clone())).sum()
    });
    row("batchnorm(train)+relu 256, fused", &|| {
        medret_models::kernels::bn_relu::bn_relu(&bn, x_in.clone()).sum()
    });
    row("avgpool 2x2 256", &|| pool.forward(x_in.clone()).sum());
    row("avgpool 2x2 256, ours", &|| {
        medret_models::kernels::avg_pool::avg_pool2d(&pool, x_in.clone()).sum()
    });
    // Block 1's concatenations: 64 channels grown by 32 six times.
    let base = rand([n, 64, hw, hw], &dev).autodiff().require_grad();
    let news: Vec<Tensor<4>> = (0..6)
        .map(|_| rand([n, growth, hw, hw], &dev).autodiff().require_grad())
        .collect();
    row("6 concatenations 64->256", &|| {
        let mut f = base.clone();
        for t in &news {
            f = Tensor::cat(vec![f, t.clone()], 1);
        }
        f.sum()
    });

    for (name, f, b) in rows {
        println!(
            "{{\"framework\": \"burn-flex 0.22.1\", \"op\": \"{name}\", \"threads\": {threads}, \"forward_ms\": {f:.3}, \"backward_ms\": {b:.3}, \"forward_backward_ms\": {:.3}}}",
            f + b
        );
    }
}
