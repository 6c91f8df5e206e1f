//! BatchNorm (training statistics) followed by ReLU as one CPU operation with its own
//! backward, for every `norm -> relu` of the DenseNet.
//!
//! Why: burn-flex 0.22.1 computes `batch_norm_train` and its backward from generic tensor
//! ops (a channel swap that copies the whole activation, then reductions, broadcasts and
//! elementwise passes), about 6x PyTorch's time (`bench/densenet_ops.sh`). Here the
//! forward is two passes over the activation (per-channel sums, then `max(0, a x + b)`)
//! and the backward two more (per-channel sums of `dz` and `dz x`, then `dx`), each
//! parallel over (image, channel) planes of the NCHW layout, with no copy. Its loops are
//! compiled for AVX2 + FMA and picked at run time.
//!
//! It plugs into burn through its backend-extension API (the `extension` feature): the
//! inputs' flex primitives are read in place, the output is recorded on the autodiff
//! graph with [`BnReluBackward`] as its backward. Anything else (another backend, a layer
//! not training, gradient checkpointing) takes burn's own path, `relu(bn.forward(x))`.
//!
//! Statistics are burn's: the mean and the biased variance per channel; the running
//! averages are updated as `burn_nn::BatchNorm::forward` does. The backward recomputes
//! the ReLU mask from the input, so the output is not kept for it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::GradientCheckpointingStrategy;
use burn::tensor::activation::relu;
use rayon::prelude::*;

use super::{as_f32, contiguous, wrap};

type Ad = Autodiff<Flex>;

/// Calls that took the kernel (for tests that must know the fast path ran).
pub static FUSED_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `relu(bn.forward(x))`, through the fused kernel when `bn` trains on the CPU backend.
pub fn bn_relu(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !(x.device().is_autodiff() && bn.training.is_enabled() && fast_path(&x, bn)) {
        return relu(bn.forward(x));
    }
    FUSED_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = x.device();
    let gamma = bn.gamma.val();
    let beta = bn.beta.val();
    let (y, mean, var) = bn_relu_train(x, gamma, beta, bn.epsilon);
    // The running averages, as burn's BatchNorm keeps them.
    let m = bn.momentum;
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Vec<f32>| {
        let old: Vec<f32> = state
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 running statistics");
        let new: Vec<f32> = old
            .iter()
            .zip(&batch)
            .map(|(o, b)| ((1.0 - m) * *o as f64 + m * *b as f64) as f32)
            .collect();
        let n = new.len();
        state.update(Tensor::<1>::from_data(TensorData::new(new, [n]), &device).detach());
    };
    update(&bn.running_mean, mean);
    update(&bn.running_var, var);
    y
}

fn fast_path(x: &Tensor<4>, bn: &BatchNorm) -> bool {
    let flex = Device::flex();
    super::enabled()
        && x.device() == flex
        && x.dtype() == burn::tensor::DType::F32
        && x.gradient_checkpointing_strategy() == Some(GradientCheckpointingStrategy::Disabled)
        && bn.gamma.val().is_autodiff()
}

/// The fused operation on autodiff tensors. Returns the output and the batch mean and
/// biased variance per channel.
pub fn bn_relu_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<4>, Vec<f32>, Vec<f32>) {
    let x = x.autodiff();
    let xa = x
        .try_into_primitive::<Ad>()
        .expect("x on the autodiff CPU backend");
    let ga = gamma
        .try_into_primitive::<Ad>()
        .expect("gamma on the autodiff CPU backend");
    let ba = beta
        .try_into_primitive::<Ad>()
        .expect("beta on the autodiff CPU backend");
    let nodes = [xa.node(), ga.node(), ba.node()];
    let xf = contiguous(xa.into_primitive());
    let gf = contiguous(ga.into_primitive());
    let bf = contiguous(ba.into_primitive());
    let dims = xf.layout().shape().to_vec();
    let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
    let (y, mean, inv_std, var) =
        forward(as_f32(&xf), as_f32(&gf), as_f32(&bf), n, c, plane, epsilon);
    let y = wrap(y, &dims);
    let out = match BnReluBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                x: xf,
                gamma: gf,
                beta: bf,
                mean: mean.clone(),
                inv_std,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (Tensor::<4>::from_primitive::<Ad>(out), mean, var)
}

/// Forward on raw NCHW data: the output, and per channel the mean, `1 / sqrt(var + eps)`
/// and the biased variance.
#[allow(clippy::type_complexity)]
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (n * plane) as f64;
    // Pass 1: per-channel mean and variance. Each plane's mean and squared deviations
    // (f32, eight lanes) are merged into the channel's in f64 (Chan et al.), which stays
    // exact at large offsets where a one-pass sum of squares loses digits; each channel
    // is merged in image order by one thread, so the result is deterministic.
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .with_min_len(min_tasks(n * plane))
        .map(|ch| {
            let (mut s, mut s2) = (0.0f64, 0.0f64);
            for i in 0..n {
                let p = &x[(i * c + ch) * plane..(i * c + ch + 1) * plane];
                let (pm, b) = plane_stats(p);
                // Combine (mean, M2) of this plane into the running totals (Chan et al.).
                let (na, nb) = ((i * plane) as f64, plane as f64);
                let mean_a = if i == 0 { 0.0 } else { s };
                let delta = pm - mean_a;
                let tot = na + nb;
                s = mean_a + delta * nb / tot;
                s2 += b as f64 + delta * delta * na * nb / tot;
            }
            (s, s2 / count)
        })
        .collect();
    let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
    let var: Vec<f32> = stats.iter().map(|s| s.1 as f32).collect();
    let inv_std: Vec<f32> = stats
        .iter()
        .map(|s| (1.0 / (s.1 + epsilon).sqrt()) as f32)
        .collect();
    // Pass 2: y = max(0, a x + b) with a = gamma * inv_std, b = beta - mean * a.
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .with_min_len(min_tasks(plane))
        .for_each(|(k, (yo, xi))| {
            let ch = k % c;
            let a = gamma[ch] * inv_std[ch];
            let b = beta[ch] - mean[ch] * a;
            plane_forward(yo, xi, a, b);
        });
    (y, mean, inv_std, var)
}

/// Backward on raw NCHW data: `dx`, `dgamma`, `dbeta` from the output gradient `g`. The
/// ReLU's mask is recomputed from `x` (`a x + b > 0`, the forward's own arithmetic, so
/// the same mask) rather than read from the output: two fewer passes over memory, and
/// the output need not be kept for the backward.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    n: usize,
    c: usize,
    plane: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (n * plane) as f32;
    let affine = |ch: usize| {
        let a = gamma[ch] * inv_std[ch];
        (a, beta[ch] - mean[ch] * a)
    };
    // Pass 1: per (image, channel) plane, sum(dz) and sum(dz * (x - mean)), dz = g where
    // the ReLU passed; then per channel, the planes' sums in image order (deterministic).
    let partial: Vec<(f32, f32)> = g
        .par_chunks(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .with_min_len(min_tasks(plane))
        .map(|(k, (gp, xp))| {
            let ch = k % c;
            let (aa, bb) = affine(ch);
            plane_sums(gp, xp, aa, bb, mean[ch])
        })
        .collect();
    let sums: Vec<(f32, f32)> = (0..c)
        .map(|ch| {
            let (mut sd, mut sdx) = (0.0f64, 0.0f64);
            for i in 0..n {
                let (a, b) = partial[i * c + ch];
                sd += a as f64;
                sdx += b as f64;
            }
            (sd as f32, (sdx * inv_std[ch] as f64) as f32)
        })
        .collect();
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1).collect();
    // Pass 2: dx = gamma * inv_std * (dz - sum(dz) / M - xhat * sum(dz xhat) / M).
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(plane)
        .enumerate()
        .with_min_len(min_tasks(plane))
        .for_each(|(k, out)| {
            let ch = k % c;
            let o = k * plane;
            let (is, m) = (inv_std[ch], mean[ch]);
            let (aa, bb) = affine(ch);
            let scale = gamma[ch] * is;
            let (sd, sdx) = (dbeta[ch] / count, dgamma[ch] / count);
            let (gp, xp) = (&g[o..o + out.len()], &x[o..o + out.len()]);
            plane_backward(out, gp, xp, [aa, bb, m, is, scale, sd, sdx]);
        });
    (dx, dgamma, dbeta)
}

/// Items per parallel task for items of `work` elements each: about 16k elements, so
/// the small planes of late blocks (2x2 at 64 px) do not drown in scheduling.
fn min_tasks(work: usize) -> usize {
    (16_384 / work.max(1)).max(1)
}

/// Compiles a per-plane loop twice: for the baseline target, and with AVX2 and FMA
/// enabled, picked at run time (the baseline x86-64 target has only SSE2, which leaves
/// these loops at a quarter of the machine's vector width; burn-flex and PyTorch dispatch
/// the same way).
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[inline]
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

dispatch! {
    /// A plane's mean and sum of squared deviations from it (the plane is still in cache
    /// for the second read). Eight partial sums, so the adds vectorise.
    fn plane_stats(p: &[f32]) -> (f64, f32) {
        let sum8 = |f: &dyn Fn(f32) -> f32| {
            let mut acc = [0.0f32; 8];
            let chunks = p.chunks_exact(8);
            let rest = chunks.remainder();
            for ch in chunks {
                for k in 0..8 {
                    acc[k] += f(ch[k]);
                }
            }
            let mut s: f32 = acc.iter().sum();
            for &v in rest {
                s += f(v);
            }
            s
        };
        let pm = sum8(&|v| v) as f64 / p.len() as f64;
        let pmf = pm as f32;
        (pm, sum8(&|v| (v - pmf) * (v - pmf)))
    }
}

dispatch! {
    /// `y = max(0, a x + b)`.
    fn plane_forward(y: &mut [f32], x: &[f32], a: f32, b: f32) -> () {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (a * v + b).max(0.0);
        }
    }
}

dispatch! {
    /// `(sum(dz), sum(dz * (x - m)))` with `dz = g` where `a x + b > 0`, in eight lanes.
    fn plane_sums(g: &[f32], x: &[f32], a: f32, b: f32, m: f32) -> (f32, f32) {
        let (mut s1, mut s2) = ([0.0f32; 8], [0.0f32; 8]);
        let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
        let (gr, xr) = (gc.remainder(), xc.remainder());
        for (gv, xv) in gc.zip(xc) {
            let gv: &[f32; 8] = gv.try_into().expect("chunks of 8");
            let xv: &[f32; 8] = xv.try_into().expect("chunks of 8");
            for k in 0..8 {
                // Branch-free: a data-dependent branch here mispredicts half the time.
                // Branch-free: a data-dependent branch mispredicts half the time, and
                // LLVM keeps it as a branch inside this reduction.
                let mask = 0u32.wrapping_sub(u32::from(a * xv[k] + b > 0.0));
                let dz = f32::from_bits(gv[k].to_bits() & mask);
                s1[k] += dz;
                s2[k] += dz * (xv[k] - m);
            }
        }
        let (mut t1, mut t2): (f32, f32) = (s1.iter().sum(), s2.iter().sum());
        for (&gv, &xv) in gr.iter().zip(xr) {
            let dz = if a * xv + b > 0.0 { gv } else { 0.0 };
            t1 += dz;
            t2 += dz * (xv - m);
        }
        (t1, t2)
    }
}

dispatch! {
    /// `dx = scale (dz - sd - (x - m) inv_std sdx)`; `k` is `[a, b, m, inv_std, scale,
    /// sd, sdx]`.
    fn plane_backward(out: &mut [f32], g: &[f32], x: &[f32], k: [f32; 7]) -> () {
        let [a, b, m, is, scale, sd, sdx] = k;
        for ((d, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
            let dz = if a * xv + b > 0.0 { gv } else { 0.0 };
            let xhat = (xv - m) * is;
            *d = scale * (dz - sd - xhat * sdx);
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

#[derive(Debug)]
struct BnReluBackward;

impl Backward<Flex, 3> for BnReluBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        // The incoming gradient may be a strided view or a broadcast.
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let dims = s.x.layout().shape().to_vec();
        let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
        let (dx, dgamma, dbeta) = backward(
            as_f32(&s.x),
            as_f32(&g),
            as_f32(&s.gamma),
            as_f32(&s.beta),
            &s.mean,
            &s.inv_std,
            n,
            c,
            plane,
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, wrap(dx, &dims));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, wrap(dgamma, &[c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, wrap(dbeta, &[c]));
        }
    }
}
