//! The fused BatchNorm + ReLU kernel (`kernels/bn_relu.rs`) against independent
//! references: a direct f64 implementation of the formulas, finite differences of its
//! backward, and burn's own `relu(BatchNorm::forward)` on the autodiff CPU backend
//! (output, every gradient, running statistics).

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use medret_models::kernels::bn_relu::{FUSED_CALLS, INFERENCE_CALLS, backward, bn_relu, forward};

mod common;
use common::{close_per_element, vals};

/// Tests that flip the process-wide kernel switch or read its call counter run one at a
/// time.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lcg_data(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale + shift
        })
        .collect()
}

/// y = relu(gamma (x - mean) / sqrt(var + eps) + beta), in f64, straight from the
/// definition (biased variance over N, H, W).
fn reference(x: &[f32], g: &[f32], b: &[f32], n: usize, c: usize, p: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| {
                x[(i * c + ch) * p..(i * c + ch + 1) * p]
                    .iter()
                    .map(|v| *v as f64)
            })
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
        for i in 0..n {
            for j in 0..p {
                let k = (i * c + ch) * p + j;
                y[k] =
                    (g[ch] as f64 * (x[k] as f64 - m) / (var + eps).sqrt() + b[ch] as f64).max(0.0);
            }
        }
    }
    y
}

#[test]
fn forward_matches_the_definition() {
    let (n, c, p, eps) = (3, 5, 37, 1e-5);
    // An offset and scale far from zero and one, where a naive one-pass variance loses
    // digits.
    let x = lcg_data(n * c * p, 1, 8.0, 100.0);
    let g = lcg_data(c, 2, 2.0, 1.0);
    let b = lcg_data(c, 3, 1.0, 0.0);
    let (y, _, _, _) = forward(&x, &g, &b, n, c, p, eps);
    let want = reference(&x, &g, &b, n, c, p, eps);
    for (a, w) in y.iter().zip(&want) {
        assert!((*a as f64 - w).abs() < 1e-4, "{a} vs {w}");
    }
    assert!(
        y.contains(&0.0) && y.iter().any(|v| *v > 0.0),
        "ReLU never cut or never passed"
    );
}

#[test]
fn backward_matches_finite_differences() {
    let (n, c, p, eps) = (2, 3, 10, 1e-5);
    let x = lcg_data(n * c * p, 4, 2.0, 0.3);
    let g = lcg_data(c, 5, 1.0, 1.0);
    let b = lcg_data(c, 6, 0.5, 0.1);
    // L = sum(w * y) with fixed random w: dL/dy = w.
    let w = lcg_data(n * c * p, 7, 2.0, 0.0);
    let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
        reference(x, g, b, n, c, p, eps)
            .iter()
            .zip(&w)
            .map(|(y, w)| y * *w as f64)
            .sum()
    };
    let (_, mean, inv_std, _) = forward(&x, &g, &b, n, c, p, eps);
    let (dx, dg, db) = backward(&x, &w, &g, &b, &mean, &inv_std, n, c, p);
    let h = 1e-3f32;
    let fd = |v: &[f32], i: usize, f: &dyn Fn(&[f32]) -> f64| {
        let (mut up, mut down) = (v.to_vec(), v.to_vec());
        up[i] += h;
        down[i] -= h;
        (f(&up) - f(&down)) / (2.0 * h as f64)
    };
    let mut checked = 0;
    for i in 0..x.len() {
        // Skip elements whose ReLU input sits within h of the kink, where the derivative
        // jumps and central differences straddle it.
        let ch = (i / p) % c;
        let pre = g[ch] * (x[i] - mean[ch]) * inv_std[ch] + b[ch];
        if pre.abs() < 1e-2 {
            continue;
        }
        let num = fd(&x, i, &|v| loss(v, &g, &b));
        assert!(
            (dx[i] as f64 - num).abs() < 2e-3 * num.abs().max(1.0),
            "dx[{i}] {} vs {num}",
            dx[i]
        );
        checked += 1;
    }
    assert!(checked > x.len() / 2);
    for ch in 0..c {
        let num = fd(&g, ch, &|v| loss(&x, v, &b));
        assert!(
            (dg[ch] as f64 - num).abs() < 2e-3 * num.abs().max(1.0),
            "dgamma[{ch}] {} vs {num}",
            dg[ch]
        );
        let num = fd(&b, ch, &|v| loss(&x, &g, v));
        assert!(
            (db[ch] as f64 - num).abs() < 2e-3 * num.abs().max(1.0),
            "dbeta[{ch}] {} vs {num}",
            db[ch]
        );
    }
}

/// The kernel on the autodiff CPU backend equals burn's own BatchNorm + ReLU: output,
/// gradients of a weighted sum with respect to the input, gamma and beta, and the running
/// statistics after the step. The input is a non-contiguous view (a permute) to exercise
/// the copy to contiguous.
#[test]
fn equals_burns_batch_norm_and_relu_in_training() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(3);
    let (n, c, h, w) = (4, 6, 7, 5);
    let make_bn = || -> BatchNorm {
        let mut bn = BatchNormConfig::new(c).init(&dev);
        bn.gamma =
            burn::module::Param::from_data(TensorData::new(lcg_data(c, 11, 1.0, 1.0), [c]), &dev);
        bn.beta =
            burn::module::Param::from_data(TensorData::new(lcg_data(c, 12, 1.0, 0.0), [c]), &dev);
        bn
    };
    let (ours, theirs) = (make_bn(), make_bn());
    let base = Tensor::<4>::random(
        [n, h, c, w],
        Distribution::Normal(0.5, 2.0),
        &Device::flex(),
    );
    let weights = Tensor::<4>::random(
        [n, c, h, w],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let run = |bn: &BatchNorm, fused: bool| {
        let x = base.clone().autodiff().require_grad();
        let xin = x.clone().permute([0, 2, 1, 3]);
        let y = if fused {
            bn_relu(bn, xin)
        } else {
            relu(bn.forward(xin))
        };
        let loss = (y.clone() * weights.clone().autodiff()).sum();
        let grads = loss.backward();
        (
            vals(y),
            vals(x.grad(&grads).unwrap()),
            vals(bn.gamma.val().grad(&grads).unwrap()),
            vals(bn.beta.val().grad(&grads).unwrap()),
        )
    };
    let a = run(&ours, true);
    let b = run(&theirs, false);
    close_per_element(&a.0, &b.0, 1e-5, "output");
    close_per_element(&a.1, &b.1, 1e-4, "input gradient");
    close_per_element(&a.2, &b.2, 1e-4, "gamma gradient");
    close_per_element(&a.3, &b.3, 1e-4, "beta gradient");
    close_per_element(
        &vals(ours.running_mean.value()),
        &vals(theirs.running_mean.value()),
        1e-6,
        "running mean",
    );
    close_per_element(
        &vals(ours.running_var.value()),
        &vals(theirs.running_var.value()),
        1e-5,
        "running variance",
    );
    // Off the training path (a plain CPU tensor: inference), the one-pass inference
    // kernel equals burn's BatchNorm (running statistics) and ReLU, on a strided input.
    let x = base.clone().permute([0, 2, 1, 3]);
    let before = INFERENCE_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let fused = vals(bn_relu(&ours, x.clone()));
    assert!(
        INFERENCE_CALLS.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the inference kernel never ran"
    );
    let want = vals(relu(ours.forward(x)));
    close_per_element(&fused, &want, 1e-6, "inference");
    assert!(want.iter().filter(|v| **v == 0.0).count() > want.len() / 10);
    assert!(want.iter().filter(|v| **v > 0.0).count() > want.len() / 10);
    // Exactly zero where burn's ReLU cut, up to values at the kink's rounding.
    let disagree = fused
        .iter()
        .zip(&want)
        .filter(|(a, b)| (**a == 0.0) != (**b == 0.0) && a.abs().max(b.abs()) > 1e-5)
        .count();
    assert_eq!(disagree, 0, "ReLU masks differ");
}

/// A whole small DenseNet in training mode: the loss and the gradient of every parameter
/// and of the input are the same with the kernel as with burn's own BatchNorm + ReLU.
#[test]
fn a_densenet_trains_the_same_with_the_kernel() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    use burn::module::Module;
    use medret_models::densenet::DenseNetConfig;
    let dev = Device::flex().autodiff();
    dev.seed(7);
    let cfg = DenseNetConfig {
        num_classes: Some(3),
        ..DenseNetConfig::tiny()
    };
    let model = cfg.init(&dev);
    let x0 = Tensor::<4>::random(
        [4, 3, 32, 32],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let run = |on: bool| {
        medret_models::kernels::set_enabled(on);
        let m = model.clone();
        let x = x0.clone().autodiff().require_grad();
        let logits = m.forward(x.clone());
        let loss = (logits.clone() * logits).mean();
        let grads = loss.backward();
        let mut out = vec![vals(loss), vals(x.grad(&grads).unwrap())];
        // Every parameter's gradient, in the module's order.
        struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                if let Some(g) = p.val().grad(self.0) {
                    self.1.push(g.into_data().try_to_vec::<f32>().unwrap());
                }
            }
        }
        let mut c = Collect(&grads, Vec::new());
        m.visit(&mut c);
        out.extend(c.1);
        out
    };
    let calls = || FUSED_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let c0 = calls();
    let fused = run(true);
    let c1 = calls();
    let plain = run(false);
    assert!(c1 > c0, "the kernel never ran");
    medret_models::kernels::set_enabled(true);
    assert_eq!(fused.len(), plain.len());
    assert!(fused.len() > 20, "only {} gradients", fused.len());
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        close_per_element(
            a,
            b,
            1e-4,
            &format!("tensor {i} (0: loss, 1: input gradient, then parameters)"),
        );
    }
}

/// Several training-mode forwards, then inference from the running statistics: the same
/// with the kernel as without (two models built from one record, so no running state is
/// shared between them).
#[test]
fn running_statistics_and_inference_match_after_training_forwards() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    use burn::module::Module;
    use medret_models::densenet::DenseNetConfig;
    let dev = Device::flex().autodiff();
    dev.seed(9);
    let cfg = DenseNetConfig {
        num_classes: Some(2),
        ..DenseNetConfig::tiny()
    };
    let base = cfg.init(&dev);
    let inputs: Vec<Tensor<4>> = (0..3)
        .map(|i| {
            Tensor::<4>::random(
                [3, 3, 32, 32],
                Distribution::Normal(i as f64 * 0.3, 1.0 + i as f64),
                &Device::flex(),
            )
        })
        .collect();
    let probe = Tensor::<4>::random(
        [2, 3, 32, 32],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let after = |on: bool| {
        medret_models::kernels::set_enabled(on);
        let m = cfg.init(&dev).load_record(base.clone().into_record());
        for x in &inputs {
            let _ = m.forward(x.clone().autodiff());
        }
        vals(m.valid().forward(probe.clone()))
    };
    let calls = || FUSED_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let c0 = calls();
    let fused = after(true);
    let c1 = calls();
    let plain = after(false);
    assert!(c1 > c0, "the kernel never ran");
    medret_models::kernels::set_enabled(true);
    close_per_element(&fused, &plain, 1e-4, "inference after training forwards");
}

/// Timing of the raw kernels at DenseNet-121 block-1 shapes (`--ignored --nocapture`).
#[test]
#[ignore]
fn raw_kernel_timing() {
    let (n, c, p) = (8, 256, 32 * 32);
    let x = lcg_data(n * c * p, 1, 2.0, 0.1);
    let g = lcg_data(c, 2, 1.0, 1.0);
    let b = lcg_data(c, 3, 1.0, 0.0);
    let w = lcg_data(n * c * p, 4, 1.0, 0.0);
    let t = std::time::Instant::now();
    let mut out = None;
    for _ in 0..10 {
        out = Some(forward(&x, &g, &b, n, c, p, 1e-5));
    }
    let f = t.elapsed().as_secs_f64() * 100.0;
    let (_, mean, inv_std, _) = out.unwrap();
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = backward(&x, &w, &g, &b, &mean, &inv_std, n, c, p);
    }
    let bw = t.elapsed().as_secs_f64() * 100.0;
    eprintln!("raw forward {f:.2} ms, backward {bw:.2} ms");
}
