//! The 3x3 convolution kernel (`kernels/conv3x3.rs`) against a direct f64 loop, finite
//! differences, and burn's own `Conv2d` (forward, both gradients, inference).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::kernels::conv3x3::{CONV_CALLS, backward, conv3x3, forward};

static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lcg_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The convolution straight from its definition, in f64.
fn reference(x: &[f32], wt: &[f32], n: usize, c: usize, h: usize, w: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; n * o * h * w];
    for i in 0..n {
        for oc in 0..o {
            for yy in 0..h {
                for xx in 0..w {
                    let mut s = 0.0f64;
                    for ci in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (yy as isize + ky - 1, xx as isize + kx - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                s += x[((i * c + ci) * h + iy as usize) * w + ix as usize] as f64
                                    * wt[((oc * c + ci) * 3 + ky as usize) * 3 + kx as usize]
                                        as f64;
                            }
                        }
                    }
                    y[((i * o + oc) * h + yy) * w + xx] = s;
                }
            }
        }
    }
    y
}

#[test]
fn forward_and_gradients_match_the_definition() {
    // Odd sizes, a 1-pixel-wide image and more images than threads and fewer: every
    // border case of im2col and both parallel layouts.
    for &(n, c, h, w, o) in &[(3, 3, 5, 4, 4), (1, 2, 4, 1, 3), (5, 4, 3, 6, 2)] {
        let x = lcg_data(n * c * h * w, 1 + n as u64);
        let wt = lcg_data(o * c * 9, 2 + c as u64);
        let y = forward(&x, &wt, n, c, h, w, o);
        let want = reference(&x, &wt, n, c, h, w, o);
        for (a, b) in y.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs {b}");
        }
        // L = sum(G * y): dL/dx and dL/dW by central differences of the reference.
        let g = lcg_data(y.len(), 9);
        let loss = |x: &[f32], wt: &[f32]| -> f64 {
            reference(x, wt, n, c, h, w, o)
                .iter()
                .zip(&g)
                .map(|(y, g)| y * *g as f64)
                .sum()
        };
        let (dx, dw) = backward(&x, &wt, &g, n, c, h, w, o);
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let (mut u, mut d) = (x.clone(), x.clone());
            u[i] += eps;
            d[i] -= eps;
            let num = (loss(&u, &wt) - loss(&d, &wt)) / (2.0 * eps as f64);
            assert!(
                (dx[i] as f64 - num).abs() < 1e-4,
                "dx[{i}] {} vs {num}",
                dx[i]
            );
        }
        for i in 0..wt.len() {
            let (mut u, mut d) = (wt.clone(), wt.clone());
            u[i] += eps;
            d[i] -= eps;
            let num = (loss(&x, &u) - loss(&x, &d)) / (2.0 * eps as f64);
            assert!(
                (dw[i] as f64 - num).abs() < 1e-4,
                "dw[{i}] {} vs {num}",
                dw[i]
            );
        }
    }
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
        / scale;
    assert!(
        worst < tol,
        "{what}: worst difference {worst} of scale {scale}"
    );
}

#[test]
fn equals_burns_conv2d_in_training_and_inference() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(4);
    let conv: Conv2d = Conv2dConfig::new([6, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&dev);
    let base = Tensor::<4>::random(
        [3, 7, 5, 6],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let gw = Tensor::<4>::random(
        [3, 5, 7, 5],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let run = |fused: bool| {
        let x = base.clone().autodiff().require_grad();
        // A permuted (non-contiguous) input, as in the bn_relu test.
        let xin = x.clone().permute([0, 3, 1, 2]);
        let y = if fused {
            conv3x3(&conv, xin)
        } else {
            conv.forward(xin)
        };
        let grads = (y.clone() * gw.clone().autodiff()).sum().backward();
        (
            vals(y),
            vals(x.grad(&grads).unwrap()),
            vals(conv.weight.val().grad(&grads).unwrap()),
        )
    };
    let before = CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let a = run(true);
    assert!(
        CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the kernel never ran"
    );
    let b = run(false);
    close(&a.0, &b.0, 1e-5, "output");
    close(&a.1, &b.1, 1e-5, "input gradient");
    close(&a.2, &b.2, 1e-5, "weight gradient");
    // Inference: plain CPU tensors, no graph.
    let plain = conv.valid();
    let x = base.permute([0, 3, 1, 2]);
    close(
        &vals(conv3x3(&plain, x.clone())),
        &vals(plain.forward(x)),
        1e-5,
        "inference",
    );
    // Another convolution (a bias) takes burn's path.
    let with_bias: Conv2d = Conv2dConfig::new([6, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&Device::flex());
    let calls = CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let x = Tensor::<4>::random(
        [1, 6, 4, 4],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let _ = conv3x3(&with_bias, x);
    assert_eq!(CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed), calls);
}

/// Timing of the raw kernel at DenseNet-121 block-1 shapes (`--ignored --nocapture`).
#[test]
#[ignore]
fn raw_kernel_timing() {
    let (n, c, h, w, o) = (8, 128, 32, 32, 32);
    let x = lcg_data(n * c * h * w, 1);
    let wt = lcg_data(o * c * 9, 2);
    let g = lcg_data(n * o * h * w, 3);
    let _ = forward(&x, &wt, n, c, h, w, o);
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let _ = forward(&x, &wt, n, c, h, w, o);
    }
    let f = t.elapsed().as_secs_f64() * 200.0;
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let _ = backward(&x, &wt, &g, n, c, h, w, o);
    }
    let b = t.elapsed().as_secs_f64() * 200.0;
    eprintln!("raw forward {f:.2} ms, backward {b:.2} ms");
}
