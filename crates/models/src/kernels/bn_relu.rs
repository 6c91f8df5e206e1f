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

use std::sync::Arc;

use super::dense_block::BlockGrad;
use super::{SendPtr, as_f32, contiguous, image_data, images, wrap, written};

type Ad = Autodiff<Flex>;

/// Calls that took the kernel (for tests that must know the fast path ran).
pub static FUSED_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `relu(bn.forward(x))`, through the fused kernel when `bn` trains on the CPU backend.
pub fn bn_relu(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    bn_relu_in_block(bn, x, None)
}

/// [`bn_relu`] on a channel prefix of a dense block's feature buffer (see
/// `bn_relu_train_in_block`).
pub(crate) fn bn_relu_in_block(
    bn: &BatchNorm,
    x: Tensor<4>,
    block: Option<Arc<BlockGrad>>,
) -> Tensor<4> {
    if !trains_fused(&x, bn) {
        if infers_fused(&x) {
            return bn_relu_inference(bn, x);
        }
        return relu(bn.forward(x));
    }
    FUSED_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = x.device();
    let gamma = bn.gamma.val();
    let beta = bn.beta.val();
    let (y, mean, var) = bn_relu_train_in_block(x, gamma, beta, bn.epsilon, block);
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

/// Whether `bn_relu(bn, x)` takes the fused inference kernel: plain CPU tensors (no
/// graph), where burn's BatchNorm normalises with the running statistics whatever the
/// layer's training flag.
pub(crate) fn infers_fused(x: &Tensor<4>) -> bool {
    super::enabled()
        && !x.device().is_autodiff()
        && x.device() == Device::flex()
        && x.dtype() == burn::tensor::DType::F32
}

/// Calls that took the inference kernel.
pub static INFERENCE_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `relu(bn.forward(x))` from the running statistics in one pass, `max(0, a x + b)` with
/// `a = gamma / sqrt(var + eps)`, `b = beta - mean a`, where burn's BatchNorm and ReLU
/// make six passes and as many tensors (`bench/densenet.sh`: a third of the small
/// configuration's inference).
fn bn_relu_inference(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    INFERENCE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let affine = inference_affine(bn);
    let xf = images(
        x.try_into_primitive::<Flex>()
            .expect("x on the CPU backend"),
    );
    let dims = xf.layout().shape().to_vec();
    let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
    let (xd, xs) = image_data(&xf);
    let y = affine_relu(xd, xs, (n, c, plane), &affine);
    Tensor::<4>::from_primitive::<Flex>(wrap(y, &dims))
}

/// An inference BatchNorm as each channel's `(a, b)` of `a x + b`: `a = gamma /
/// sqrt(var + eps)`, `b = beta - mean a`, from the running statistics.
pub(crate) fn inference_affine(bn: &BatchNorm) -> Vec<(f32, f32)> {
    let floats = |t: Tensor<1>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 statistics")
    };
    let (gamma, beta) = (floats(bn.gamma.val()), floats(bn.beta.val()));
    let (mean, var) = (
        floats(bn.running_mean.value()),
        floats(bn.running_var.value()),
    );
    (0..gamma.len())
        .map(|ch| {
            let a = gamma[ch] / (var[ch] + bn.epsilon as f32).sqrt();
            (a, beta[ch] - mean[ch] * a)
        })
        .collect()
}

/// Whether `bn_relu(bn, x)` takes the fused kernel: `bn` training on autodiff CPU tensors.
pub(crate) fn trains_fused(x: &Tensor<4>, bn: &BatchNorm) -> bool {
    let flex = Device::flex();
    x.device().is_autodiff()
        && bn.training.is_enabled()
        && super::enabled()
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
    bn_relu_train_in_block(x, gamma, beta, epsilon, None)
}

/// [`bn_relu_train`], where `x` may be a channel prefix of a dense block's feature buffer
/// and the backward adds `dx` into the block's gradient buffer in place when `block` holds
/// it (see `dense_block.rs`).
pub(crate) fn bn_relu_train_in_block(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    block: Option<Arc<BlockGrad>>,
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
    let xf = images(xa.into_primitive());
    let gf = contiguous(ga.into_primitive());
    let bf = contiguous(ba.into_primitive());
    let dims = xf.layout().shape().to_vec();
    let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
    let (xd, xs) = image_data(&xf);
    let (y, mean, inv_std, var) =
        forward_images(xd, xs, as_f32(&gf), as_f32(&bf), n, c, plane, epsilon);
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
                block,
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
    forward_images(x, c * plane, gamma, beta, n, c, plane, epsilon)
}

/// [`forward`] on images `image_stride` floats apart in `x` (a channel prefix of a dense
/// block's buffer); the output is contiguous.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn forward_images(
    x: &[f32],
    image_stride: usize,
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let at = |i: usize, ch: usize| &x[i * image_stride + ch * plane..][..plane];
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
                let (pm, b) = plane_stats(at(i, ch));
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
    let affine: Vec<(f32, f32)> = (0..c)
        .map(|ch| {
            let a = gamma[ch] * inv_std[ch];
            (a, beta[ch] - mean[ch] * a)
        })
        .collect();
    let y = affine_relu(x, image_stride, (n, c, plane), &affine);
    (y, mean, inv_std, var)
}

/// `max(0, a x + b)` with each channel's `(a, b)`, over images `image_stride` floats apart
/// in `x`, into a new contiguous buffer.
fn affine_relu(
    x: &[f32],
    image_stride: usize,
    (n, c, plane): (usize, usize, usize),
    affine: &[(f32, f32)],
) -> Vec<f32> {
    // SAFETY: the planes cover the buffer, and `plane_forward` writes all of each.
    unsafe {
        written(n * c * plane, |y| {
            y.par_chunks_mut(plane)
                .enumerate()
                .with_min_len(min_tasks(plane))
                .for_each(|(k, yo)| {
                    let (i, ch) = (k / c, k % c);
                    let (a, b) = affine[ch];
                    plane_forward(yo, &x[i * image_stride + ch * plane..][..plane], a, b);
                })
        })
    }
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
    let (dx, dgamma, dbeta) = backward_images(
        x,
        c * plane,
        g,
        gamma,
        beta,
        mean,
        inv_std,
        (n, c, plane),
        None,
    );
    (dx.expect("dx written"), dgamma, dbeta)
}

/// A dense block's gradient buffer to add `dx` into: images `image_stride` floats apart
/// from `ptr`, of which the caller guarantees exclusive access to the first `C * H * W`
/// floats of each of the `N` images.
#[derive(Debug, Clone, Copy)]
pub struct AddInto {
    pub ptr: SendPtr,
    pub image_stride: usize,
}

/// [`backward`] on images `image_stride` floats apart in `x`; `dx` returned, or added
/// into `add` (and `None` returned). Returns `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn backward_images(
    x: &[f32],
    image_stride: usize,
    g: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    (n, c, plane): (usize, usize, usize),
    add: Option<AddInto>,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let at = |i: usize, ch: usize| &x[i * image_stride + ch * plane..][..plane];
    let count = (n * plane) as f32;
    let affine = |ch: usize| {
        let a = gamma[ch] * inv_std[ch];
        (a, beta[ch] - mean[ch] * a)
    };
    // Pass 1: per (image, channel) plane, sum(dz) and sum(dz * (x - mean)), dz = g where
    // the ReLU passed; then per channel, the planes' sums in image order (deterministic).
    let partial: Vec<(f32, f32)> = g[..n * c * plane]
        .par_chunks(plane)
        .enumerate()
        .with_min_len(min_tasks(plane))
        .map(|(k, gp)| {
            let ch = k % c;
            let (aa, bb) = affine(ch);
            plane_sums(gp, at(k / c, ch), aa, bb, mean[ch])
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
    let pass2 = |ptr: SendPtr, stride: usize, add: bool| {
        (0..n * c)
            .into_par_iter()
            .with_min_len(min_tasks(plane))
            .for_each(|k| {
                let (i, ch) = (k / c, k % c);
                let at_out = i * stride + ch * plane;
                let (is, m) = (inv_std[ch], mean[ch]);
                let (aa, bb) = affine(ch);
                let scale = gamma[ch] * is;
                let (sd, sdx) = (dbeta[ch] / count, dgamma[ch] / count);
                let consts = [aa, bb, m, is, scale, sd, sdx];
                let (gp, xp) = (&g[k * plane..(k + 1) * plane], at(i, ch));
                // SAFETY (both arms): plane `k` of image `i` is `plane` floats at
                // `at_out`, inside the buffer (a fresh one of `n * c * plane`, or the
                // caller's `AddInto` guarantee), and no two `k` share a float.
                if add {
                    let out =
                        unsafe { std::slice::from_raw_parts_mut(ptr.get().add(at_out), plane) };
                    plane_backward_add(out, gp, xp, consts);
                } else {
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            ptr.get().add(at_out).cast::<std::mem::MaybeUninit<f32>>(),
                            plane,
                        )
                    };
                    plane_backward_write(out, gp, xp, consts);
                }
            })
    };
    let dx = match add {
        Some(t) => {
            pass2(t.ptr, t.image_stride, true);
            None
        }
        // SAFETY: the planes cover the buffer and `plane_backward_write` writes each whole.
        None => Some(unsafe {
            written(n * c * plane, |dx| {
                pass2(SendPtr(dx.as_mut_ptr().cast()), c * plane, false)
            })
        }),
    };
    (dx, dgamma, dbeta)
}

/// Items per parallel task for items of `work` elements each: about 16k elements, so
/// the small planes of late blocks (2x2 at 64 px) do not drown in scheduling.
fn min_tasks(work: usize) -> usize {
    (16_384 / work.max(1)).max(1)
}

/// A plane's mean and sum of squared deviations from it (the plane is still in cache
/// for the second read).
fn plane_stats(p: &[f32]) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::plane_stats(p) };
    }
    let pm = p.iter().sum::<f32>() as f64 / p.len() as f64;
    let pmf = pm as f32;
    (pm, p.iter().map(|&v| (v - pmf) * (v - pmf)).sum())
}

dispatch! {
    /// `y = max(0, a x + b)`.
    fn plane_forward(y: &mut [std::mem::MaybeUninit<f32>], x: &[f32], a: f32, b: f32) -> () {
        for (o, &v) in y.iter_mut().zip(x) {
            o.write((a * v + b).max(0.0));
        }
    }
}

/// `(sum(dz), sum(dz * (x - m)))` with `dz = g` where `a x + b > 0` (the forward's
/// ReLU mask, same arithmetic: a multiply then an add, not a fused multiply-add).
fn plane_sums(g: &[f32], x: &[f32], a: f32, b: f32, m: f32) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::plane_sums(g, x, a, b, m) };
    }
    let (mut t1, mut t2) = (0.0f32, 0.0f32);
    for (&gv, &xv) in g.iter().zip(x) {
        let dz = if a * xv + b > 0.0 { gv } else { 0.0 };
        t1 += dz;
        t2 += dz * (xv - m);
    }
    (t1, t2)
}

/// The two reductions written with intrinsics: LLVM leaves both mostly scalar when they
/// are written as eight-lane array loops (the masked sum compiled to 87 scalar
/// instructions and no 256-bit one), and they are a memory-bound pass that then costs
/// four times the memory's time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// The eight lanes' sum.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Sum of `f` over the plane, sixteen lanes (two accumulators) then the tail.
    #[target_feature(enable = "avx2,fma")]
    fn sum_by(p: &[f32], f: impl Fn(__m256) -> __m256, tail: impl Fn(f32) -> f32) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut chunks = p.chunks_exact(16);
        for c in &mut chunks {
            // SAFETY: `c` holds 16 floats.
            let (v0, v1) = unsafe {
                (
                    _mm256_loadu_ps(c.as_ptr()),
                    _mm256_loadu_ps(c.as_ptr().add(8)),
                )
            };
            s0 = _mm256_add_ps(s0, f(v0));
            s1 = _mm256_add_ps(s1, f(v1));
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        for &v in chunks.remainder() {
            s += tail(v);
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn plane_stats(p: &[f32]) -> (f64, f32) {
        let pm = sum_by(p, |v| v, |v| v) as f64 / p.len() as f64;
        let pmf = pm as f32;
        let m = _mm256_set1_ps(pmf);
        let ss = sum_by(
            p,
            |v| {
                let d = _mm256_sub_ps(v, m);
                _mm256_mul_ps(d, d)
            },
            |v| (v - pmf) * (v - pmf),
        );
        (pm, ss)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn plane_sums(g: &[f32], x: &[f32], a: f32, b: f32, m: f32) -> (f32, f32) {
        let len = g.len().min(x.len());
        let (va, vb, vm) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_set1_ps(m));
        let zero = _mm256_setzero_ps();
        let (mut s1, mut s2) = (zero, zero);
        let mut i = 0;
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len` and both slices hold `len` floats.
            let (xv, gv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(g.as_ptr().add(i)),
                )
            };
            let z = _mm256_add_ps(_mm256_mul_ps(va, xv), vb);
            let dz = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(z, zero), gv);
            s1 = _mm256_add_ps(s1, dz);
            s2 = _mm256_fmadd_ps(dz, _mm256_sub_ps(xv, vm), s2);
            i += 8;
        }
        let (mut t1, mut t2) = (hsum(s1), hsum(s2));
        for (&gv, &xv) in g[i..len].iter().zip(&x[i..len]) {
            let dz = if a * xv + b > 0.0 { gv } else { 0.0 };
            t1 += dz;
            t2 += dz * (xv - m);
        }
        (t1, t2)
    }
}

/// `dx = scale (dz - sd - (x - m) inv_std sdx)` for `k = [a, b, m, inv_std, scale, sd,
/// sdx]`.
#[inline(always)]
fn dx_of(gv: f32, xv: f32, k: [f32; 7]) -> f32 {
    let [a, b, m, is, scale, sd, sdx] = k;
    let dz = if a * xv + b > 0.0 { gv } else { 0.0 };
    let xhat = (xv - m) * is;
    scale * (dz - sd - xhat * sdx)
}

dispatch! {
    /// Writes `dx` (see [`dx_of`]).
    fn plane_backward_write(
        out: &mut [std::mem::MaybeUninit<f32>],
        g: &[f32],
        x: &[f32],
        k: [f32; 7]
    ) -> () {
        for ((d, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
            d.write(dx_of(gv, xv, k));
        }
    }
}

dispatch! {
    /// Adds `dx` (see [`dx_of`]) into `out`.
    fn plane_backward_add(out: &mut [f32], g: &[f32], x: &[f32], k: [f32; 7]) -> () {
        for ((d, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
            *d += dx_of(gv, xv, k);
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
    block: Option<Arc<BlockGrad>>,
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
        let (xd, xs) = image_data(&s.x);
        let run = |add: Option<AddInto>| {
            backward_images(
                xd,
                xs,
                as_f32(&g),
                as_f32(&s.gamma),
                as_f32(&s.beta),
                &s.mean,
                &s.inv_std,
                (n, c, plane),
                add,
            )
        };
        // Inside a dense block, the gradient already registered for `x` is, by the order
        // of the backward (the block's append runs first), the prefix of the block's
        // gradient buffer: add into it rather than allocate `dx` and have burn add the two.
        let in_place = match (&node_x, &s.block) {
            // An operation's output (a leaf's gradient is read, not taken, by `consume`).
            (Some(node), Some(block)) if !node.parents.is_empty() => {
                let old = grads.consume::<Flex>(node);
                let target = block.prefix_target(&old);
                Some((node, old, target))
            }
            _ => None,
        };
        let (dgamma, dbeta) = match in_place {
            Some((node, old, Some((ptr, image_stride)))) => {
                super::dense_block::IN_PLACE_ADDS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (_, dgamma, dbeta) = run(Some(AddInto { ptr, image_stride }));
                grads.register::<Flex>(node.id, old);
                (dgamma, dbeta)
            }
            Some((node, old, None)) => {
                let (dx, dgamma, dbeta) = run(None);
                grads.register::<Flex>(node.id, old);
                grads.register::<Flex>(node.id, wrap(dx.expect("dx written"), &dims));
                (dgamma, dbeta)
            }
            None => {
                let (dx, dgamma, dbeta) = run(None);
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, wrap(dx.expect("dx written"), &dims));
                }
                (dgamma, dbeta)
            }
        };
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, wrap(dgamma, &[c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, wrap(dbeta, &[c]));
        }
    }
}
