//! The dense layers' 3x3 convolution (stride 1, padding 1, no bias) as im2col + `gemm`,
//! forward and both gradients, with its own backward.
//!
//! Why: burn-flex 0.22.1 is 13x to 15x PyTorch's time on this convolution forward and
//! backward (`bench/densenet_ops.sh`); it computes the input gradient as a transposed
//! convolution and the weight gradient as another convolution over swapped axes. Here,
//! per image: `col = im2col(x)` (`[C*9, H*W]`), `y = W col`; backward
//! `dW += g colᵀ`, `dcol = Wᵀ g`, `dx = col2im(dcol)`: three matrix products on the
//! `gemm` crate burn-flex itself uses. Images run in parallel (each product on one
//! thread) when there are enough of them, otherwise the products are parallel. The
//! per-image weight gradients are summed in image order, so results are deterministic.
//!
//! Plugged in as `bn_relu.rs` is (burn's extension API); any other convolution, device
//! or `MEDRET_KERNELS=off` takes `Conv2d::forward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::GradientCheckpointingStrategy;
use rayon::prelude::*;

use super::{as_f32, contiguous, wrap};

type Ad = Autodiff<Flex>;

/// Calls that took the kernel (for tests that must know the fast path ran).
pub static CONV_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `conv.forward(x)`, through the kernel for a 3x3, stride-1, padding-1 convolution
/// without bias on the CPU backend.
pub fn conv3x3(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let shape_ok = conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.bias.is_none()
        && matches!(conv.padding, PaddingConfig2d::Explicit(1, 1, 1, 1));
    let flex = Device::flex();
    let w = conv.weight.val();
    if !(super::enabled()
        && shape_ok
        && x.device() == flex
        && x.dtype() == burn::tensor::DType::F32
        && w.dtype() == burn::tensor::DType::F32)
    {
        return conv.forward(x);
    }
    let autodiff = x.device().is_autodiff() || w.is_autodiff();
    if autodiff
        && (x
            .gradient_checkpointing_strategy()
            .unwrap_or(GradientCheckpointingStrategy::Disabled)
            != GradientCheckpointingStrategy::Disabled)
    {
        return conv.forward(x);
    }
    CONV_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !autodiff {
        let xf = contiguous(
            x.try_into_primitive::<Flex>()
                .expect("x on the CPU backend"),
        );
        let wf = contiguous(
            w.try_into_primitive::<Flex>()
                .expect("w on the CPU backend"),
        );
        let (y, dims) = forward_flex(&xf, &wf);
        return Tensor::<4>::from_primitive::<Flex>(wrap(y, &dims));
    }
    let xa = x
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("x on the autodiff CPU backend");
    let wa = w
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("w on the autodiff CPU backend");
    let nodes = [xa.node(), wa.node()];
    let xf = contiguous(xa.into_primitive());
    let wf = contiguous(wa.into_primitive());
    let (y, dims) = forward_flex(&xf, &wf);
    let y = wrap(y, &dims);
    let out = match Conv3x3Backward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xf, wf), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

fn forward_flex(x: &FlexTensor, w: &FlexTensor) -> (Vec<f32>, [usize; 4]) {
    let xd = x.layout().shape().to_vec();
    let wd = w.layout().shape().to_vec();
    let (n, c, h, wi, o) = (xd[0], xd[1], xd[2], xd[3], wd[0]);
    assert_eq!(
        wd[1],
        c,
        "weight channels (x {xd:?}, w {wd:?}, contiguous {})",
        x.is_contiguous()
    );
    (forward(as_f32(x), as_f32(w), n, c, h, wi, o), [n, o, h, wi])
}

/// `c[m, n] (+)= a[m, k] b[k, n]`, `c` row-major; `a` and `b` given by their row and
/// column strides (a transposed operand is a stride swap, not a copy).
#[allow(clippy::too_many_arguments)]
fn matmul(
    c: &mut [f32],
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(c.len() >= m * n, "output buffer");
    assert!(
        m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs,
        "lhs buffer"
    );
    assert!(
        k == 0 || n == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "rhs buffer"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertions above keep every index the product reads or writes inside
    // the slices, and `c` does not alias `a` or `b` (a `&mut` and two `&`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// `col[(ci*9 + ky*3 + kx), (y*w + x)] = img[ci, y + ky - 1, x + kx - 1]`, 0 outside.
fn im2col(img: &[f32], c: usize, h: usize, w: usize, col: &mut [f32]) {
    let hw = h * w;
    for ci in 0..c {
        let plane = &img[ci * hw..(ci + 1) * hw];
        for ky in 0..3 {
            for kx in 0..3 {
                let row =
                    &mut col[((ci * 9) + ky * 3 + kx) * hw..((ci * 9) + ky * 3 + kx + 1) * hw];
                for y in 0..h {
                    let out = &mut row[y * w..(y + 1) * w];
                    let iy = y as isize + ky as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    match kx {
                        0 => {
                            out[0] = 0.0;
                            out[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => out.copy_from_slice(src),
                        _ => {
                            out[..w - 1].copy_from_slice(&src[1..]);
                            out[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `img[ci, y + ky - 1, x + kx - 1] += col[...]`.
fn col2im(col: &[f32], c: usize, h: usize, w: usize, img: &mut [f32]) {
    let hw = h * w;
    img.fill(0.0);
    for ci in 0..c {
        let plane = &mut img[ci * hw..(ci + 1) * hw];
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &col[((ci * 9) + ky * 3 + kx) * hw..((ci * 9) + ky * 3 + kx + 1) * hw];
                for y in 0..h {
                    let iy = y as isize + ky as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &row[y * w..(y + 1) * w];
                    let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                    match kx {
                        0 => dst[..w - 1]
                            .iter_mut()
                            .zip(&src[1..])
                            .for_each(|(d, s)| *d += s),
                        1 => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
                        _ => dst[1..]
                            .iter_mut()
                            .zip(&src[..w - 1])
                            .for_each(|(d, s)| *d += s),
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Each worker's im2col buffer, reused across images and calls: a fresh
    /// multi-megabyte buffer per image costs a page fault per 4 KiB on first touch.
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's im2col buffer of `len` floats (contents unspecified).
fn with_col<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COL.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

/// Whether to run images in parallel (each product on one thread) rather than each
/// product in parallel.
fn per_image(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// Forward on raw NCHW data: `y[n, o, h, w]`.
pub fn forward(
    x: &[f32],
    wt: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
) -> Vec<f32> {
    let (hw, k) = (h * w, c * 9);
    let mut y = vec![0.0f32; n * o * hw];
    let one = |(xi, yi): (&[f32], &mut [f32]), parallel: bool| {
        with_col(k * hw, |col| {
            im2col(xi, c, h, w, col);
            matmul(yi, wt, (k, 1), col, (hw, 1), (o, hw, k), false, parallel);
        })
    };
    if per_image(n) {
        x.par_chunks(c * hw)
            .zip(y.par_chunks_mut(o * hw))
            .for_each(|p| one(p, false));
    } else {
        x.chunks(c * hw)
            .zip(y.chunks_mut(o * hw))
            .for_each(|p| one(p, true));
    }
    y
}

/// One image's input, output gradient, input gradient and weight-gradient part.
type ImageGrads<'a> = ((&'a [f32], &'a [f32]), (&'a mut [f32], &'a mut [f32]));

/// Backward on raw NCHW data: `(dx, dw)` from the output gradient `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    wt: &[f32],
    g: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (hw, k) = (h * w, c * 9);
    let mut dx = vec![0.0f32; n * c * hw];
    let mut dw_parts = vec![0.0f32; n * o * k];
    let one = |((xi, gi), (dxi, dwi)): ImageGrads<'_>, parallel: bool| {
        let mut col = vec![0.0f32; k * hw];
        im2col(xi, c, h, w, &mut col);
        // dW_n = g_n colᵀ: [o, hw] x [hw, k].
        matmul(dwi, gi, (hw, 1), &col, (1, hw), (o, k, hw), false, parallel);
        // dcol = Wᵀ g_n: [k, o] x [o, hw], into the same buffer.
        matmul(
            &mut col,
            wt,
            (1, k),
            gi,
            (hw, 1),
            (k, hw, o),
            false,
            parallel,
        );
        col2im(&col, c, h, w, dxi);
    };
    if per_image(n) {
        x.par_chunks(c * hw)
            .zip(g.par_chunks(o * hw))
            .zip(
                dx.par_chunks_mut(c * hw)
                    .zip(dw_parts.par_chunks_mut(o * k)),
            )
            .for_each(|p| one(p, false));
    } else {
        x.chunks(c * hw)
            .zip(g.chunks(o * hw))
            .zip(dx.chunks_mut(c * hw).zip(dw_parts.chunks_mut(o * k)))
            .for_each(|p| one(p, true));
    }
    // The images' weight gradients, summed in image order.
    let mut dw = vec![0.0f32; o * k];
    for part in dw_parts.chunks(o * k) {
        dw.iter_mut().zip(part).for_each(|(d, p)| *d += p);
    }
    (dx, dw)
}

#[derive(Debug)]
struct Conv3x3Backward;

impl Backward<Flex, 2> for Conv3x3Backward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, wt) = ops.state;
        let xd = x.layout().shape().to_vec();
        let wd = wt.layout().shape().to_vec();
        let (n, c, h, w, o) = (xd[0], xd[1], xd[2], xd[3], wd[0]);
        let (dx, dw) = backward(as_f32(&x), as_f32(&wt), as_f32(&g), n, c, h, w, o);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, wrap(dx, &xd));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, wrap(dw, &wd));
        }
    }
}
