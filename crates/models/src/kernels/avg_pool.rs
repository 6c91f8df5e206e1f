//! Average pooling without padding (the DenseNet transitions' 2x2, stride 2) per plane,
//! forward and backward.
//!
//! Why: burn-flex 0.22.1's average pool took 2.6x PyTorch's time both ways
//! (`bench/densenet_ops.sh`, docs/benchmarks.md), through a generic path. Here each
//! (image, channel) plane is one task. The backward spreads each output's gradient over
//! its window; when windows tile the plane (stride = window, the transitions' case) every
//! input cell is written once, so the gradient buffer is never zero-filled first.
//!
//! Plugged in as `max_pool.rs` is; padding, ceil mode, another device or
//! `MEDRET_KERNELS=off` take `AvgPool2d::forward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::AvgPool2d;
use burn::prelude::*;
use rayon::prelude::*;

use super::{as_f32, contiguous, wrap, written};

type Ad = Autodiff<Flex>;

/// Calls that took the kernel.
pub static AVG_POOL_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A pooling's shapes: planes of `h x w`, window `k`, stride `s` (per axis), no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool {
    pub h: usize,
    pub w: usize,
    pub k: [usize; 2],
    pub s: [usize; 2],
}

impl AvgPool {
    pub fn out(&self) -> [usize; 2] {
        [
            (self.h - self.k[0]) / self.s[0] + 1,
            (self.w - self.k[1]) / self.s[1] + 1,
        ]
    }
}

/// `pool.forward(x)`, through the kernel where it applies.
pub fn avg_pool2d(pool: &AvgPool2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let autodiff = x.device().is_autodiff();
    let applies = super::on_cpu_f32(&x)
        && matches!(pool.padding, PaddingConfig2d::Valid)
        && !pool.ceil_mode
        && h >= pool.kernel_size[0]
        && w >= pool.kernel_size[1]
        && pool.stride.iter().all(|&s| s > 0);
    if !applies {
        return pool.forward(x);
    }
    AVG_POOL_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let g = AvgPool {
        h,
        w,
        k: pool.kernel_size,
        s: pool.stride,
    };
    let [oh, ow] = g.out();
    let dims = [n, c, oh, ow];
    if !autodiff {
        let xf = contiguous(
            x.try_into_primitive::<Flex>()
                .expect("x on the CPU backend"),
        );
        return Tensor::<4>::from_primitive::<Flex>(wrap(forward(as_f32(&xf), n * c, g), &dims));
    }
    let xa = x
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("x on the autodiff CPU backend");
    let nodes = [xa.node()];
    let xf = contiguous(xa.into_primitive());
    let y = wrap(forward(as_f32(&xf), n * c, g), &dims);
    drop(xf);
    let out = match AvgPoolBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(([n, c, h, w], g), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

/// Forward over `planes` planes: each window's mean.
pub fn forward(x: &[f32], planes: usize, g: AvgPool) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (hw, ohw) = (g.h * g.w, oh * ow);
    assert!(x.len() >= planes * hw, "pool input for {g:?}");
    let scale = 1.0 / (g.k[0] * g.k[1]) as f32;
    let one = |xp: &[f32], yp: &mut [std::mem::MaybeUninit<f32>]| {
        for oy in 0..oh {
            let y0 = oy * g.s[0];
            for ox in 0..ow {
                let x0 = ox * g.s[1];
                let mut sum = 0.0f32;
                for iy in y0..y0 + g.k[0] {
                    sum += xp[iy * g.w + x0..iy * g.w + x0 + g.k[1]]
                        .iter()
                        .sum::<f32>();
                }
                yp[oy * ow + ox].write(sum * scale);
            }
        }
    };
    // SAFETY: each plane's `oh * ow` outputs are written by `one`.
    unsafe {
        written(planes * ohw, |y| {
            x.par_chunks(hw)
                .zip(y.par_chunks_mut(ohw))
                .for_each(|(xp, yp)| one(xp, yp));
        })
    }
}

/// Backward: each output gradient divided over its window.
pub fn backward(gr: &[f32], planes: usize, g: AvgPool) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (hw, ohw) = (g.h * g.w, oh * ow);
    assert!(gr.len() >= planes * ohw, "pool gradient for {g:?}");
    let scale = 1.0 / (g.k[0] * g.k[1]) as f32;
    if g.k != g.s {
        // Overlapping or gapped windows: accumulate into a zeroed buffer.
        let mut dx = vec![0.0f32; planes * hw];
        dx.par_chunks_mut(hw)
            .zip(gr.par_chunks(ohw))
            .for_each(|(d, gp)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let v = gp[oy * ow + ox] * scale;
                        for iy in oy * g.s[0]..oy * g.s[0] + g.k[0] {
                            let row = iy * g.w + ox * g.s[1];
                            for c in &mut d[row..row + g.k[1]] {
                                *c += v;
                            }
                        }
                    }
                }
            });
        return dx;
    }
    // Tiling windows: every cell is covered once, or (the last rows and columns of an
    // odd plane) by no window, and then its gradient is 0.
    let one = |d: &mut [std::mem::MaybeUninit<f32>], gp: &[f32]| {
        for iy in 0..g.h {
            let oy = iy / g.s[0];
            for ix in 0..g.w {
                let ox = ix / g.s[1];
                let v = if oy < oh && ox < ow {
                    gp[oy * ow + ox] * scale
                } else {
                    0.0
                };
                d[iy * g.w + ix].write(v);
            }
        }
    };
    // SAFETY: `one` writes every cell of each plane.
    unsafe {
        written(planes * hw, |dx| {
            dx.par_chunks_mut(hw)
                .zip(gr.par_chunks(ohw))
                .for_each(|(d, gp)| one(d, gp));
        })
    }
}

#[derive(Debug)]
struct AvgPoolBackward;

impl Backward<Flex, 1> for AvgPoolBackward {
    type State = ([usize; 4], AvgPool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gr = contiguous(grads.consume::<Flex>(&ops.node));
        let (dims, g) = ops.state;
        if let Some(node) = node_x {
            let dx = backward(as_f32(&gr), dims[0] * dims[1], g);
            grads.register::<Flex>(node.id, wrap(dx, &dims));
        }
    }
}
