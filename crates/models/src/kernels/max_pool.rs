//! Max pooling (the DenseNet stem's 3x3, stride 2, padding 1) per plane, forward and, in
//! training, a backward that routes each output's gradient to the input it took.
//!
//! Why: burn-flex 0.22.1 pools through a generic 3-d path that also builds an index
//! tensor, at inference too: three tenths of the small configuration's inference (perf,
//! `bench/densenet.sh`). Here each (image, channel) plane is one task: a max over the
//! window's in-image cells (padding never wins, as in PyTorch), and in training the
//! winning cell's index within the plane (the first maximum, in window order). The
//! backward adds each output gradient at its index.
//!
//! Plugged in as `bn_relu.rs` is; dilation, ceil mode, asymmetric padding, another
//! device or `MEDRET_KERNELS=off` take `MaxPool2d::forward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use rayon::prelude::*;

use super::{as_f32, contiguous, wrap, written};

type Ad = Autodiff<Flex>;

/// Calls that took the kernel.
pub static POOL_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A pooling's shapes: planes of `h x w`, window `k`, stride `s`, padding `p` (per axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub h: usize,
    pub w: usize,
    pub k: [usize; 2],
    pub s: [usize; 2],
    pub p: [usize; 2],
}

impl Pool {
    pub fn out(&self) -> [usize; 2] {
        [
            (self.h + 2 * self.p[0] - self.k[0]) / self.s[0] + 1,
            (self.w + 2 * self.p[1] - self.k[1]) / self.s[1] + 1,
        ]
    }
}

/// `pool.forward(x)`, through the kernel where it applies.
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let p = match pool.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        _ => None,
    };
    let autodiff = x.device().is_autodiff();
    let applies = super::on_cpu_f32(&x) && pool.dilation == [1, 1] && !pool.ceil_mode;
    let Some(p) = p.filter(|p| {
        applies
            && p[0] < pool.kernel_size[0]
            && p[1] < pool.kernel_size[1]
            && h + 2 * p[0] >= pool.kernel_size[0]
            && w + 2 * p[1] >= pool.kernel_size[1]
    }) else {
        return pool.forward(x);
    };
    POOL_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let g = Pool {
        h,
        w,
        k: pool.kernel_size,
        s: pool.stride,
        p,
    };
    let [oh, ow] = g.out();
    let dims = [n, c, oh, ow];
    if !autodiff {
        let xf = contiguous(
            x.try_into_primitive::<Flex>()
                .expect("x on the CPU backend"),
        );
        let (y, _) = forward(as_f32(&xf), n * c, g, false);
        return Tensor::<4>::from_primitive::<Flex>(wrap(y, &dims));
    }
    let xa = x
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("x on the autodiff CPU backend");
    let nodes = [xa.node()];
    let xf = contiguous(xa.into_primitive());
    let (y, idx) = forward(as_f32(&xf), n * c, g, true);
    let y = wrap(y, &dims);
    let out = match MaxPoolBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((idx, [n, c, h, w], g), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

/// Forward over `planes` planes: the maxima, and (`with_index`) each one's index in its
/// plane.
pub fn forward(x: &[f32], planes: usize, g: Pool, with_index: bool) -> (Vec<f32>, Vec<u32>) {
    let [oh, ow] = g.out();
    let (hw, ohw) = (g.h * g.w, oh * ow);
    assert!(x.len() >= planes * hw, "pool input for {g:?}");
    if !with_index {
        return (maxima(x, planes, g), Vec::new());
    }
    let mut idx = vec![0u32; planes * ohw];
    let one = |xp: &[f32], yp: &mut [std::mem::MaybeUninit<f32>], ip: &mut [u32]| {
        for oy in 0..oh {
            // The window's rows inside the image.
            let y0 = (oy * g.s[0]).saturating_sub(g.p[0]);
            let y1 = (oy * g.s[0] + g.k[0] - g.p[0]).min(g.h);
            for ox in 0..ow {
                let x0 = (ox * g.s[1]).saturating_sub(g.p[1]);
                let x1 = (ox * g.s[1] + g.k[1] - g.p[1]).min(g.w);
                let (mut best, mut at) = (f32::NEG_INFINITY, y0 * g.w + x0);
                for iy in y0..y1 {
                    let row = iy * g.w;
                    for (ix, &v) in (x0..x1).zip(&xp[row + x0..row + x1]) {
                        // `>`: the first maximum wins; a NaN wins, as in PyTorch. Selects,
                        // not a branch: which cell wins is data, and mispredicts.
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        at = if take { row + ix } else { at };
                    }
                }
                yp[oy * ow + ox].write(best);
                ip[oy * ow + ox] = at as u32;
            }
        }
    };
    // SAFETY: each plane's `oh * ow` outputs are written by `one`.
    let y = unsafe {
        written(planes * ohw, |y| {
            x.par_chunks(hw)
                .zip(y.par_chunks_mut(ohw))
                .zip(idx.par_chunks_mut(ohw))
                .for_each(|((xp, yp), ip)| one(xp, yp, ip));
        })
    };
    (y, idx)
}

/// `v` if it beats `best` (or is a NaN, which wins as in PyTorch), else `best`.
#[inline(always)]
fn beat(best: f32, v: f32) -> f32 {
    if v > best || v.is_nan() { v } else { best }
}

dispatch! {
    /// One plane's window maxima without their places, in two separable passes: each
    /// input row's maxima over the window's columns into `rows` (`h x ow`), then each
    /// output row the maximum of its window's rows, a loop over whole rows that
    /// vectorises. The maximum of a set is the same value however it is grouped, NaN
    /// included. The single pass with places, one window at a time, was a quarter of the
    /// small configuration's inference (perf).
    fn plane_maxima(xp: &[f32], yp: &mut [std::mem::MaybeUninit<f32>], rows: &mut [f32], g: Pool) -> () {
        let [oh, ow] = g.out();
        for iy in 0..g.h {
            let row = &xp[iy * g.w..][..g.w];
            let out = &mut rows[iy * ow..][..ow];
            for (ox, o) in out.iter_mut().enumerate() {
                let x0 = (ox * g.s[1]).saturating_sub(g.p[1]);
                let x1 = (ox * g.s[1] + g.k[1] - g.p[1]).min(g.w);
                *o = row[x0..x1].iter().fold(f32::NEG_INFINITY, |b, &v| beat(b, v));
            }
        }
        for oy in 0..oh {
            let y0 = (oy * g.s[0]).saturating_sub(g.p[0]);
            let y1 = (oy * g.s[0] + g.k[0] - g.p[0]).min(g.h);
            let out = &mut yp[oy * ow..][..ow];
            let mut acc = [f32::NEG_INFINITY; 64];
            for c0 in (0..ow).step_by(64) {
                let n = 64.min(ow - c0);
                let acc = &mut acc[..n];
                acc.fill(f32::NEG_INFINITY);
                for iy in y0..y1 {
                    let r = &rows[iy * ow + c0..][..n];
                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a = beat(*a, v));
                }
                for (o, &a) in out[c0..c0 + n].iter_mut().zip(acc.iter()) {
                    o.write(a);
                }
            }
        }
    }
}

/// Forward without places (inference): [`plane_maxima`] on every plane.
fn maxima(x: &[f32], planes: usize, g: Pool) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (hw, ohw) = (g.h * g.w, oh * ow);
    // SAFETY: `plane_maxima` writes each plane's `oh * ow` outputs.
    unsafe {
        written(planes * ohw, |y| {
            x.par_chunks(hw).zip(y.par_chunks_mut(ohw)).for_each_init(
                || vec![0f32; g.h * ow],
                |rows, (xp, yp)| plane_maxima(xp, yp, rows, g),
            );
        })
    }
}

/// Backward: each output gradient added at its maximum's place.
pub fn backward(gr: &[f32], idx: &[u32], planes: usize, g: Pool) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (hw, ohw) = (g.h * g.w, oh * ow);
    assert!(
        gr.len() >= planes * ohw && idx.len() >= planes * ohw,
        "pool gradient for {g:?}"
    );
    let mut dx = vec![0.0f32; planes * hw];
    dx.par_chunks_mut(hw)
        .zip(gr.par_chunks(ohw).zip(idx.par_chunks(ohw)))
        .for_each(|(d, (gp, ip))| {
            for (&v, &i) in gp.iter().zip(ip) {
                d[i as usize] += v;
            }
        });
    dx
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    type State = (Vec<u32>, [usize; 4], Pool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gr = contiguous(grads.consume::<Flex>(&ops.node));
        let (idx, dims, g) = ops.state;
        if let Some(node) = node_x {
            let dx = backward(as_f32(&gr), &idx, dims[0] * dims[1], g);
            grads.register::<Flex>(node.id, wrap(dx, &dims));
        }
    }
}
