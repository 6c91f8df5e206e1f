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

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn sync(t: Tensor<1>) {
    let _ = t.into_data();
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
        let f = time(reps, || sync(fwd()));
        let fb = time(reps, || {
            let l = fwd();
            let _ = l.backward();
        });
        rows.push((name.to_string(), f, fb));
    };

    let x_in = rand([n, c_in, hw, hw], &dev);
    let x_mid = rand([n, mid, hw, hw], &dev);
    row("conv1x1 256->128", &|| {
        conv1.forward(x_in.clone().autodiff().require_grad()).sum()
    });
    row("conv1x1 256->128 as matmul", &|| {
        conv1x1_as_matmul(&conv1, x_in.clone().autodiff().require_grad()).sum()
    });
    row("conv3x3 128->32", &|| {
        conv3.forward(x_mid.clone().autodiff().require_grad()).sum()
    });
    row("batchnorm(train)+relu 256", &|| {
        relu(bn.forward(x_in.clone().autodiff().require_grad())).sum()
    });
    row("avgpool 2x2 256", &|| {
        pool.forward(x_in.clone().autodiff().require_grad()).sum()
    });
    // Block 1's concatenations: 64 channels grown by 32 six times.
    let base = rand([n, 64, hw, hw], &dev);
    let news: Vec<Tensor<4>> = (0..6).map(|_| rand([n, growth, hw, hw], &dev)).collect();
    row("6 concatenations 64->256", &|| {
        let mut f = base.clone().autodiff().require_grad();
        for t in &news {
            f = Tensor::cat(vec![f, t.clone().autodiff().require_grad()], 1);
        }
        f.sum()
    });

    for (name, f, fb) in rows {
        println!(
            "{{\"framework\": \"burn-flex 0.22.1\", \"op\": \"{name}\", \"threads\": {threads}, \"forward_ms\": {f:.3}, \"forward_backward_ms\": {fb:.3}}}"
        );
    }
}
