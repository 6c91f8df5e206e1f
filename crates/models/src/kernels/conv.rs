//! Convolutions without bias or groups as im2col + `gemm`, forward and both gradients,
//! with their own backward: the dense layers' 3x3 (stride 1, padding 1) and the stem's
//! 7x7 (stride 2, padding 3).
//!
//! Why: burn-flex 0.22.1 is 13x to 15x PyTorch's time on the 3x3 convolution forward and
//! backward (`bench/densenet_ops.sh`); it computes the input gradient as a transposed
//! convolution and the weight gradient as another convolution over swapped axes, and its
//! direct loop for the stem's three input channels took three quarters of the small
//! configuration's inference (perf). Here, per image: `col = im2col(x)`
//! (`[C*KH*KW, OH*OW]`), `y = W col`; backward `dW += g colᵀ` and, for stride 1, `dx` as
//! the forward convolution of `g` with the flipped, channel-swapped kernel (otherwise
//! `dcol = Wᵀ g`, `dx = col2im(dcol)`; skipped when the input needs no gradient, as an
//! image does not): matrix products on the `gemm` crate burn-flex itself uses. Images
//! run in parallel (each product on one thread) when there are enough of them, otherwise
//! the products are parallel. The per-image weight gradients are summed in image order, so results are
//! deterministic.
//!
//! The dense layers' 3x3s go through Winograd F(2x2, 3x3) instead, forward and both
//! gradients, where `winograd::applies` says it was measured faster (`winograd.rs`).
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

/// A convolution's shapes: `n` images of `c x h x w` into `o` maps, kernel `kh x kw`,
/// stride `sh, sw`, zero padding `ph, pw` on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl Geom {
    /// The dense layers' 3x3 convolution (stride 1, padding 1).
    pub fn same3x3(n: usize, c: usize, h: usize, w: usize, o: usize) -> Self {
        Geom {
            n,
            c,
            h,
            w,
            o,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: 1,
            pw: 1,
        }
    }

    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }

    /// Rows of the im2col matrix: `c * kh * kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

/// The geometry of `conv` on `x` where the kernel takes it: no bias, groups or dilation,
/// symmetric padding, f32 on the CPU backend, kernels on.
pub(super) fn kernel_geom(conv: &Conv2d, x: &Tensor<4>) -> Option<Geom> {
    let (ph, pw) = match conv.padding {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            (top, left)
        }
        _ => return None,
    };
    let w = conv.weight.val();
    let [n, c, h, wi] = x.dims();
    let [o, _, kh, kw] = w.dims();
    let applies = super::enabled()
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.bias.is_none()
        && h + 2 * ph >= kh
        && wi + 2 * pw >= kw
        && x.device() == Device::flex()
        && x.dtype() == burn::tensor::DType::F32
        && w.dtype() == burn::tensor::DType::F32;
    applies.then_some(Geom {
        n,
        c,
        h,
        w: wi,
        o,
        kh,
        kw,
        sh: conv.stride[0],
        sw: conv.stride[1],
        ph,
        pw,
    })
}

/// `conv.forward(x)`, through the kernel for a convolution without bias, groups or
/// dilation, with symmetric padding, on the CPU backend.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(geom) = kernel_geom(conv, &x) else {
        return conv.forward(x);
    };
    let w = conv.weight.val();
    let (n, o) = (geom.n, geom.o);
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
    let dims = [n, o, geom.out_h(), geom.out_w()];
    if !autodiff {
        let xf = contiguous(
            x.try_into_primitive::<Flex>()
                .expect("x on the CPU backend"),
        );
        let wf = contiguous(
            w.try_into_primitive::<Flex>()
                .expect("w on the CPU backend"),
        );
        let y = forward(as_f32(&xf), as_f32(&wf), geom);
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
    let y = wrap(forward(as_f32(&xf), as_f32(&wf), geom), &dims);
    let out = match ConvBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xf, wf, geom), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

/// The signature of [`matmul`] and of its f32 and bf16 forms.
pub(super) type MatmulFn = fn(
    &mut [f32],
    usize,
    &[f32],
    (usize, usize),
    &[f32],
    (usize, usize),
    (usize, usize, usize),
    bool,
    bool,
);

/// `c[m, n] (+)= a[m, k] b[k, n]`, `c` row-major with rows `c_rs` apart; `a` and `b`
/// given by their row and column strides (a transposed operand is a stride swap, not a
/// copy). In bf16 where [`super::set_precision`] asked for it (`bf16.rs`).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    mnk: (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let f: MatmulFn = match super::precision() {
        super::Precision::F32 => matmul_f32,
        super::Precision::Bf16 => super::bf16::matmul,
    };
    f(
        c, c_rs, a, a_strides, b, b_strides, mnk, accumulate, parallel,
    )
}

/// Panics unless every index a product `c[m, n] (+)= a[m, k] b[k, n]` with these
/// strides reads or writes lies inside its slice: the products' unsafe code relies on it.
pub(super) fn check_operands(
    c: &[f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
) {
    assert!(
        m == 0 || n == 0 || (c_rs >= n && c.len() >= (m - 1) * c_rs + n),
        "output buffer"
    );
    assert!(
        m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs,
        "lhs buffer"
    );
    assert!(
        k == 0 || n == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "rhs buffer"
    );
}

/// [`matmul`] in f32, through the `gemm` crate.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_f32(
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    check_operands(c, c_rs, a, (a_rs, a_cs), b, (b_rs, b_cs), (m, n, k));
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
            c_rs as isize,
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

/// The input columns in `[lo, hi)` of output positions `0..out` that read inside a
/// `len`-wide input at offset `k - pad` with stride `s`: `0 <= x*s + k - pad < len`.
pub(super) fn valid(out: usize, len: usize, k: usize, pad: usize, s: usize) -> (usize, usize) {
    // x*s >= pad - k  and  x*s < len + pad - k.
    let lo = pad.saturating_sub(k).div_ceil(s);
    let hi = if len + pad > k {
        (len + pad - k).div_ceil(s)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Output rows per tile, so that a tile's im2col block (`C*KH*KW` rows) stays within
/// about a megabyte, half the L2 cache of the machines measured: the block is then still
/// in cache when the matrix product reads it. Untiled, DenseNet-121's block-1 product
/// (`[32, 1152] x [1152, 3136]`) ran at 35 GFLOP/s on one core, tiled by 224 columns at
/// 134 (an AVX-512 Xeon; `gemm` packs operands but cannot make a 14 MB one fit).
fn tile_rows(g: &Geom) -> usize {
    const TILE_FLOATS: usize = 256 * 1024;
    (TILE_FLOATS / (g.k() * g.out_w()).max(1)).clamp(1, g.out_h().max(1))
}

/// A 1x1 convolution with stride 1 and no padding: its im2col matrix is the image.
fn pointwise(g: &Geom) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0)
}

/// Output rows `rows` of the im2col matrix: `col[(ci*kh*kw + ky*kw + kx), (oy - rows.start)
/// * ow + ox] = img[ci, oy*sh + ky - ph, ox*sw + kx - pw]`, 0 outside the image.
fn im2col(img: &[f32], g: &Geom, rows: std::ops::Range<usize>, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (hw, tn) = (g.h * g.w, rows.len() * ow);
    // Stride 2 (the stem): each plane split once into its even and odd columns, so that
    // every tap below is a contiguous copy rather than a gather of every other float.
    let half = g.w.div_ceil(2);
    let mut split = vec![0.0f32; if g.sw == 2 { 2 * g.h * half } else { 0 }];
    for ci in 0..g.c {
        let plane = &img[ci * hw..(ci + 1) * hw];
        if g.sw == 2 {
            let (even, odd) = split.split_at_mut(g.h * half);
            for y in 0..g.h {
                let src = &plane[y * g.w..(y + 1) * g.w];
                for (d, s) in even[y * half..].iter_mut().zip(src.iter().step_by(2)) {
                    *d = *s;
                }
                for (d, s) in odd[y * half..].iter_mut().zip(src[1..].iter().step_by(2)) {
                    *d = *s;
                }
            }
        }
        for ky in 0..g.kh {
            let (ylo, yhi) = valid(oh, g.h, ky, g.ph, g.sh);
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut col[r * tn..(r + 1) * tn];
                let (xlo, xhi) = valid(ow, g.w, kx, g.pw, g.sw);
                for oy in rows.clone() {
                    let out = &mut row[(oy - rows.start) * ow..(oy - rows.start + 1) * ow];
                    if oy < ylo || oy >= yhi {
                        out.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.sh + ky - g.ph;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    out[..xlo].fill(0.0);
                    out[xhi..].fill(0.0);
                    let ix0 = xlo * g.sw + kx - g.pw;
                    if g.sw == 1 {
                        out[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else if g.sw == 2 {
                        // Input columns ix0, ix0 + 2, ...: one parity's row, from ix0 / 2.
                        let part = &split[(ix0 % 2) * g.h * half + iy * half..][..half];
                        out[xlo..xhi].copy_from_slice(&part[ix0 / 2..ix0 / 2 + (xhi - xlo)]);
                    } else {
                        let taps = src[ix0..].iter().step_by(g.sw);
                        for (o, s) in out[xlo..xhi].iter_mut().zip(taps) {
                            *o = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`] for output rows `rows`: `img[ci, iy, ix] += col[...]` over
/// every place those rows read.
fn col2im(col: &[f32], g: &Geom, rows: std::ops::Range<usize>, img: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (hw, tn) = (g.h * g.w, rows.len() * ow);
    for ci in 0..g.c {
        let plane = &mut img[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            let (ylo, yhi) = valid(oh, g.h, ky, g.ph, g.sh);
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &col[r * tn..(r + 1) * tn];
                let (xlo, xhi) = valid(ow, g.w, kx, g.pw, g.sw);
                for oy in rows.start.max(ylo)..rows.end.min(yhi) {
                    let iy = oy * g.sh + ky - g.ph;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let at = (oy - rows.start) * ow;
                    let src = &row[at + xlo..at + xhi];
                    let ix0 = xlo * g.sw + kx - g.pw;
                    if g.sw == 1 {
                        dst[ix0..ix0 + src.len()]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, s)| *d += s);
                    } else {
                        for (k, s) in src.iter().enumerate() {
                            dst[ix0 + k * g.sw] += s;
                        }
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
pub(super) fn per_image(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// Forward on raw NCHW data: `y[n, o, oh, ow]`; a 3x3 with stride 1 and padding 1
/// through Winograd (`winograd.rs`) unless that is switched off.
pub fn forward(x: &[f32], wt: &[f32], g: Geom) -> Vec<f32> {
    if super::precision() == super::Precision::Bf16
        && let Some(y) = super::bf16::conv_forward(x, wt, g)
    {
        return y;
    }
    if super::winograd::applies(&g) {
        return super::winograd::forward(x, wt, g);
    }
    im2col_forward(x, wt, g)
}

/// [`forward`] as im2col + a matrix product, for every geometry.
pub fn im2col_forward(x: &[f32], wt: &[f32], g: Geom) -> Vec<f32> {
    let (chw, ow, ohw, k) = (g.c * g.h * g.w, g.out_w(), g.out_h() * g.out_w(), g.k());
    assert!(
        x.len() >= g.n * chw && wt.len() >= g.o * k,
        "conv buffers for {g:?}"
    );
    let mut y = vec![0.0f32; g.n * g.o * ohw];
    let tr = tile_rows(&g);
    let one = |(xi, yi): (&[f32], &mut [f32]), parallel: bool| {
        if pointwise(&g) {
            return matmul(
                yi,
                ohw,
                wt,
                (k, 1),
                xi,
                (ohw, 1),
                (g.o, ohw, k),
                false,
                parallel,
            );
        }
        with_col(k * tr * ow, |col| {
            for oy in (0..g.out_h()).step_by(tr) {
                let rows = oy..(oy + tr).min(g.out_h());
                let tn = rows.len() * ow;
                im2col(xi, &g, rows, &mut col[..k * tn]);
                let yt = &mut yi[oy * ow..];
                matmul(
                    yt,
                    ohw,
                    wt,
                    (k, 1),
                    col,
                    (tn, 1),
                    (g.o, tn, k),
                    false,
                    parallel,
                );
            }
        })
    };
    if per_image(g.n) {
        x.par_chunks(chw)
            .zip(y.par_chunks_mut(g.o * ohw))
            .for_each(|p| one(p, false));
    } else {
        x.chunks(chw)
            .zip(y.chunks_mut(g.o * ohw))
            .for_each(|p| one(p, true));
    }
    y
}

/// One image's input, output gradient, input gradient and weight-gradient part.
type ImageGrads<'a> = ((&'a [f32], &'a [f32]), (&'a mut [f32], &'a mut [f32]));

/// Backward on raw NCHW data: `(dx, dw)` from the output gradient `g`; `dx` only when
/// `need_dx`.
pub fn backward(
    x: &[f32],
    wt: &[f32],
    gr: &[f32],
    g: Geom,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (chw, ohw, k) = (g.c * g.h * g.w, g.out_h() * g.out_w(), g.k());
    let o = g.o;
    assert!(
        x.len() >= g.n * chw && wt.len() >= o * k && gr.len() >= g.n * o * ohw,
        "conv buffers for {g:?}"
    );
    if super::winograd::applies(&g) {
        // Both gradients through Winograd: the weights' by its own products, the input's
        // as the forward of the transposed convolution (a 3x3 with padding 1 again).
        let dx = need_dx.then(|| {
            let (wf, gt) = transposed_conv(wt, &g).expect("a 3x3 with padding 1 transposes");
            forward(gr, &wf, gt)
        });
        return (dx, super::winograd::weight_grad(x, gr, g));
    }
    // A stride-1 convolution's input gradient is itself a convolution: of `g`, with the
    // kernel flipped and its channel axes swapped, padded by `k - 1 - p`. Run through
    // `forward`, its product is `[c, o*kh*kw] x [o*kh*kw, tn]`: for a dense layer's 3x3
    // (128 to 32 channels) the inner dimension is 288 rather than the 32 of `Wᵀ g`, the
    // product writes 128 rows rather than 1,152, and no col2im scatter follows.
    let transposed = (need_dx && g.sh == 1 && g.sw == 1 && !pointwise(&g))
        .then(|| transposed_conv(wt, &g))
        .flatten();
    let col_dx = need_dx && transposed.is_none();
    let mut dx = vec![0.0f32; if col_dx { g.n * chw } else { 0 }];
    let mut dw_parts = vec![0.0f32; g.n * o * k];
    let (ow, tr) = (g.out_w(), tile_rows(&g));
    let one = |((xi, gi), (dxi, dwi)): ImageGrads<'_>, parallel: bool| {
        if pointwise(&g) {
            // dW_n = g_n xᵀ, dx_n = Wᵀ g_n.
            matmul(
                dwi,
                k,
                gi,
                (ohw, 1),
                xi,
                (1, ohw),
                (o, k, ohw),
                false,
                parallel,
            );
            if col_dx {
                matmul(
                    dxi,
                    ohw,
                    wt,
                    (1, k),
                    gi,
                    (ohw, 1),
                    (k, ohw, o),
                    false,
                    parallel,
                );
            }
            return;
        }
        with_col(k * tr * ow, |col| {
            for oy in (0..g.out_h()).step_by(tr) {
                let rows = oy..(oy + tr).min(g.out_h());
                let tn = rows.len() * ow;
                let col = &mut col[..k * tn];
                let gt = &gi[oy * ow..];
                im2col(xi, &g, rows.clone(), col);
                // dW_n += g_t colᵀ: [o, tn] x [tn, k], over the tiles in order.
                matmul(
                    dwi,
                    k,
                    gt,
                    (ohw, 1),
                    col,
                    (1, tn),
                    (o, k, tn),
                    oy > 0,
                    parallel,
                );
                if col_dx {
                    // dcol = Wᵀ g_t: [k, o] x [o, tn], into the same buffer.
                    matmul(
                        col,
                        tn,
                        wt,
                        (1, k),
                        gt,
                        (ohw, 1),
                        (k, tn, o),
                        false,
                        parallel,
                    );
                    col2im(col, &g, rows, dxi);
                }
            }
        })
    };
    let xs = x[..g.n * chw].chunks(chw);
    let gs = gr[..g.n * o * ohw].chunks(o * ohw);
    let images: Vec<_> = xs.zip(gs).collect();
    // Without `dx` here, each image's part of it is empty.
    let dxs: Vec<&mut [f32]> = if col_dx {
        dx.chunks_mut(chw).collect()
    } else {
        (0..g.n).map(|_| <&mut [f32]>::default()).collect()
    };
    let outs: Vec<_> = dxs.into_iter().zip(dw_parts.chunks_mut(o * k)).collect();
    if per_image(g.n) {
        images
            .into_par_iter()
            .zip(outs.into_par_iter())
            .for_each(|p| one(p, false));
    } else {
        images.into_iter().zip(outs).for_each(|p| one(p, true));
    }
    // The images' weight gradients, summed in image order.
    let mut dw = vec![0.0f32; o * k];
    for part in dw_parts.chunks(o * k) {
        dw.iter_mut().zip(part).for_each(|(d, p)| *d += p);
    }
    if let Some((wf, gt)) = transposed {
        return (Some(forward(gr, &wf, gt)), dw);
    }
    (need_dx.then_some(dx), dw)
}

/// The weights and shapes of the convolution of the output gradient that gives a
/// stride-1 convolution's input gradient: `wf[c, o, i, j] = w[o, c, kh-1-i, kw-1-j]`,
/// padding `kh-1-ph` and `kw-1-pw`. `None` when the padding is wider than the kernel's
/// reach (the transposed padding would be negative).
fn transposed_conv(wt: &[f32], g: &Geom) -> Option<(Vec<f32>, Geom)> {
    if g.ph >= g.kh || g.pw >= g.kw {
        return None;
    }
    let (kh, kw) = (g.kh, g.kw);
    let mut wf = vec![0.0f32; g.c * g.o * kh * kw];
    for o in 0..g.o {
        for c in 0..g.c {
            let src = &wt[(o * g.c + c) * kh * kw..][..kh * kw];
            let dst = &mut wf[(c * g.o + o) * kh * kw..][..kh * kw];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    let gt = Geom {
        n: g.n,
        c: g.o,
        h: g.out_h(),
        w: g.out_w(),
        o: g.c,
        kh,
        kw,
        sh: 1,
        sw: 1,
        ph: kh - 1 - g.ph,
        pw: kw - 1 - g.pw,
    };
    Some((wf, gt))
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (FlexTensor, FlexTensor, Geom);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, wt, geom) = ops.state;
        let (dx, dw) = backward(as_f32(&x), as_f32(&wt), as_f32(&g), geom, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, wrap(dx, &x.layout().shape().to_vec()));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, wrap(dw, &wt.layout().shape().to_vec()));
        }
    }
}
