//! Winograd F(2x2, 3x3) for the dense layers' 3x3 convolutions (stride 1, padding 1):
//! each 2x2 block of outputs from a 4x4 block of inputs with 16 multiplications a channel
//! pair instead of 36, so the convolution's matrix products shrink to 44% of the direct
//! (im2col) count (Lavin and Gray, "Fast algorithms for convolutional neural networks",
//! CVPR 2016).
//!
//! Why: the 3x3 convolutions are 44% of DenseNet-121's multiply-adds and the matrix
//! kernel already runs near this machine's ceiling, so fewer multiplications is the one
//! lever left on them (`docs/benchmarks.md`). The transposed convolution that gives the
//! 3x3's input gradient (`conv::backward`) is itself a stride-1 3x3 with padding 1, so it
//! comes here too; the weight gradient has its own products ([`weight_grad`]).
//!
//! Layout, per image and per band of tile rows (sized so the band's transformed input
//! stays in the L2 cache): `V[ξ] = Bᵀ d B` as 16 matrices `[C, tiles]`, the weights
//! `U[ξ] = G g Gᵀ` as 16 matrices `[O, C]`, 16 products `M[ξ] = U[ξ] V[ξ]` on the `gemm`
//! crate, then `Y = Aᵀ M A` for each output tile. The transforms run along whole tile
//! rows (even and odd input columns split apart first), so they vectorise. F(2x2, 3x3)
//! rather than F(4x4, 3x3): its transforms hold only 0, ±1 and ±½, so its error stays at
//! the direct convolution's (`tests/conv.rs` bounds it), where F(4x4)'s grows with the
//! ±4 and ±8 of its matrices. `MEDRET_WINOGRAD=off` (or [`set_enabled`]) sends these
//! convolutions to im2col, for A/B benchmarks in one build.

use rayon::prelude::*;

use super::Switch;
use super::conv::{Geom, matmul, per_image};

static WINOGRAD: Switch = Switch::new("MEDRET_WINOGRAD");

/// Whether Winograd is used where it applies: on unless `MEDRET_WINOGRAD=off` (read on
/// first use) or [`set_enabled`] said otherwise.
pub fn enabled() -> bool {
    WINOGRAD.on()
}

/// Turns Winograd on or off for the whole process.
pub fn set_enabled(on: bool) {
    WINOGRAD.set(on);
}

/// A 3x3 convolution with stride 1 and padding 1 where Winograd was measured faster than
/// im2col, and Winograd on. `examples/conv3x3.rs` at DenseNet-121's sizes (batch 16, 2
/// threads, Winograd's time over im2col's): 128 to 32 channels forward 0.69 at 56 px,
/// 0.72 at 28, 0.83 at 14, 1.13 at 7, its weight gradient 0.67, 0.69, 0.92 and 1.29; 32
/// to 128 (the input gradient) 0.87, 0.88, 1.10 and 1.75 (`docs/benchmarks.md`). Small
/// planes lose to the tiles padded to
/// eight a row and to the transforms' fixed cost; a convolution that widens (`c < o`)
/// pays its output transform on more channels than its products save. The products save
/// in proportion to `c * o`, the transforms cost in proportion to `c + o`: the small
/// configuration's 3x3s (16 to 8 channels, `c o / (c + o)` = 5.3 against DenseNet-121's
/// 25.6) trained and inferred 3% to 7% slower with it (`bench/densenet.sh`), so they stay
/// on im2col.
///
/// Never in bf16 ([`super::Precision::Bf16`]): there the products run on AMX at many times
/// f32's speed, so the transforms cost more than the products they save (DenseNet-121
/// inference, 224 px, batch 16: 31.4 images/s with Winograd, 34.9 without), and rounding
/// the transformed tiles to bf16 would add to the error.
pub fn applies(g: &Geom) -> bool {
    let side = g.h.min(g.w);
    (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (3, 3, 1, 1, 1, 1)
        && (side >= 28 || (side >= 14 && g.c >= g.o))
        && g.c * g.o >= 16 * (g.c + g.o)
        && enabled()
        && super::precision() == super::Precision::F32
}

/// `U = G g Gᵀ` for every (output, input) channel pair: `u[ξ * O*C + o*C + c]`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
pub fn transform_weights(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let oc = o * c;
    let mut u = vec![0.0f32; 16 * oc];
    for (p, k) in wt[..oc * 9].chunks_exact(9).enumerate() {
        // G g: four rows of three.
        let mut gg = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (a, b, d) = (k[j], k[3 + j], k[6 + j]);
            gg[0][j] = a;
            gg[1][j] = 0.5 * (a + b + d);
            gg[2][j] = 0.5 * (a - b + d);
            gg[3][j] = d;
        }
        for (i, r) in gg.iter().enumerate() {
            let row = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (j, v) in row.into_iter().enumerate() {
                u[(i * 4 + j) * oc + p] = v;
            }
        }
    }
    u
}

/// Tile rows per band: the band's transformed input (`16 * C * tiles`) or products
/// (`16 * O * tiles`) within about a megabyte.
fn band_rows(g: &Geom, tw: usize, th: usize) -> usize {
    // 256 Ki floats measured best against 64 Ki, 128 Ki and 512 Ki (`examples/conv3x3.rs`).
    const BAND_FLOATS: usize = 256 * 1024;
    (BAND_FLOATS / (16 * g.c.max(g.o) * tw).max(1)).clamp(1, th)
}

thread_local! {
    /// Each worker's transformed input, products and row scratch, reused across images
    /// and calls (as `conv.rs`'s im2col buffer is, for the same page faults).
    static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bᵀ d B for the tile rows `t0..t1` of one channel `plane` (`h x w`) into `v`: the
/// tile at (ty, tx) reads input rows `2ty - 1 ..= 2ty + 2` and columns `2tx - 1 ..=
/// 2tx + 2`, zero outside the image; `v[ξ * stride + (ty - t0) * tw + tx]`. `scratch`
/// holds [`scratch_len`]`(tw)` floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_transform(
    plane: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    (t0, t1): (usize, usize),
    v: &mut [f32],
    stride: usize,
    scratch: &mut [f32],
) {
    // One element past the row for `E[x + 1]`, the rest so that the loops below run
    // on whole vectors when `tw` is a multiple of 8.
    let n = tw + 8;
    let (rows, cols) = scratch[..16 * n].split_at_mut(8 * n);
    for ty in t0..t1 {
        // The four input rows of the zero-padded plane, each split into its even and odd
        // columns (padded column 2k is input column 2k - 1): `rows[(2r + half) * n + k]`.
        for r in 0..4 {
            let (e, o) = rows[2 * r * n..][..2 * n].split_at_mut(n);
            let y = (2 * ty + r) as isize - 1;
            if y < 0 || y >= h as isize {
                e.fill(0.0);
                o.fill(0.0);
                continue;
            }
            let src = &plane[y as usize * w..][..w];
            // Input columns 2k go to the odd half at k, 2k + 1 to the even half at k + 1.
            let pairs = w / 2;
            e[0] = 0.0;
            for ((p, ok), ek) in src.chunks_exact(2).zip(o.iter_mut()).zip(e[1..].iter_mut()) {
                *ok = p[0];
                *ek = p[1];
            }
            o[pairs..].fill(0.0);
            e[pairs + 1..].fill(0.0);
            if w % 2 == 1 {
                o[pairs] = src[w - 1];
            }
        }
        // Bᵀ d, the same on both halves: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        for half in 0..2 {
            let d = |r: usize| &rows[(2 * r + half) * n..][..n];
            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
            let mut out = cols
                .chunks_exact_mut(2 * n)
                .map(|c| &mut c[half * n..][..n]);
            let (b0, b1, b2, b3) = (
                out.next().expect("4 rows"),
                out.next().expect("4 rows"),
                out.next().expect("4 rows"),
                out.next().expect("4 rows"),
            );
            for k in 0..n {
                b0[k] = d0[k] - d2[k];
                b1[k] = d1[k] + d2[k];
                b2[k] = d2[k] - d1[k];
                b3[k] = d1[k] - d3[k];
            }
        }
        // · B along each row: with (a, b, c, d) = (E[x], O[x], E[x+1], O[x+1]), the
        // columns a - c, b + c, c - b, b - d.
        let at = (ty - t0) * tw;
        for (i, t) in cols.chunks_exact(2 * n).enumerate() {
            let (e, o) = t.split_at(n);
            let (a, b, c, d) = (&e[..tw], &o[..tw], &e[1..=tw], &o[1..=tw]);
            let base = 4 * i * stride + at;
            let (v0, rest) = v[base..].split_at_mut(stride);
            let (v1, rest) = rest.split_at_mut(stride);
            let (v2, v3) = rest.split_at_mut(stride);
            let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
            for x in 0..tw {
                v0[x] = a[x] - c[x];
                v1[x] = b[x] + c[x];
                v2[x] = c[x] - b[x];
                v3[x] = b[x] - d[x];
            }
        }
    }
}

/// Aᵀ M A for one output channel over the tile rows `t0..t1`, into its `plane`
/// (`h x w`), with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`: `m[ξ * stride + (ty - t0) * tw
/// + tx]`. `scratch` holds [`scratch_len`]`(tw)` floats.
#[inline(always)]
fn output_transform(
    m: &[f32],
    stride: usize,
    tw: usize,
    (t0, t1): (usize, usize),
    plane: &mut [f32],
    (h, w): (usize, usize),
    scratch: &mut [f32],
) {
    let s = &mut scratch[..8 * tw];
    for ty in t0..t1 {
        let at = (ty - t0) * tw;
        let mx = |k: usize| &m[k * stride + at..][..tw];
        // Aᵀ M: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (rows of four columns j).
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mx(j), mx(4 + j), mx(8 + j), mx(12 + j));
            let (r0, r1) = s[2 * j * tw..][..2 * tw].split_at_mut(tw);
            for x in 0..tw {
                r0[x] = m0[x] + m1[x] + m2[x];
                r1[x] = m1[x] - m2[x] - m3[x];
            }
        }
        // · A: columns 0 = c0 + c1 + c2, 1 = c1 - c2 - c3.
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= h {
                break;
            }
            let c = |j: usize| &s[(2 * j + r) * tw..][..tw];
            let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
            let dst = &mut plane[y * w..][..w];
            let (pairs, rest) = dst.split_at_mut(w / 2 * 2);
            for (x, p) in pairs.chunks_exact_mut(2).enumerate() {
                p[0] = c0[x] + c1[x] + c2[x];
                p[1] = c1[x] - c2[x] - c3[x];
            }
            if let Some(last) = rest.first_mut() {
                let x = w / 2;
                *last = c0[x] + c1[x] + c2[x];
            }
        }
    }
}

/// Scratch floats the transforms of tile rows `tw` tiles wide need (the input transform's
/// split rows and their `Bᵀ d`, the most of the three).
fn scratch_len(tw: usize) -> usize {
    16 * (tw + 8)
}

dispatch! {
    /// [`input_transform`] of the tile rows `t0..t1` of all `c` channels of one image
    /// `xi`, into `v` as 16 matrices `[c, (t1 - t0) * tw]`.
    #[allow(clippy::too_many_arguments)]
    fn input_band(
        xi: &[f32],
        c: usize,
        h: usize,
        w: usize,
        tw: usize,
        t0: usize,
        t1: usize,
        v: &mut [f32],
        vs: usize,
        scratch: &mut [f32]
    ) -> () {
        let tb = (t1 - t0) * tw;
        for (ci, plane) in xi.chunks_exact(h * w).take(c).enumerate() {
            input_transform(plane, (h, w), tw, (t0, t1), &mut v[ci * tb..], vs, scratch);
        }
    }
}

dispatch! {
    /// [`output_transform`] of the tile rows `t0..t1` for all `o` output channels of one
    /// image `yi`, from the products `m` (16 matrices `[o, (t1 - t0) * tw]`).
    #[allow(clippy::too_many_arguments)]
    fn output_band(
        m: &[f32],
        o: usize,
        h: usize,
        w: usize,
        tw: usize,
        t0: usize,
        t1: usize,
        yi: &mut [f32],
        ms: usize,
        scratch: &mut [f32]
    ) -> () {
        let tb = (t1 - t0) * tw;
        for (oc, plane) in yi.chunks_exact_mut(h * w).take(o).enumerate() {
            output_transform(&m[oc * tb..], ms, tw, (t0, t1), plane, (h, w), scratch);
        }
    }
}

/// Runs `f` with this thread's buffer of `len` floats (contents unspecified).
fn with_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// The convolution `conv::forward` computes, for a geometry [`applies`] accepts.
pub fn forward(x: &[f32], wt: &[f32], g: Geom) -> Vec<f32> {
    let p = Bands::new(&g);
    let (c, o, hw) = (g.c, g.o, g.h * g.w);
    assert!(
        x.len() >= g.n * c * hw && wt.len() >= o * c * 9,
        "conv buffers for {g:?}"
    );
    let mut y = vec![0.0f32; g.n * o * hw];
    if y.is_empty() {
        return y;
    }
    let u = transform_weights(wt, o, c);
    let one = |(xi, yi): (&[f32], &mut [f32]), parallel: bool| {
        p.each(|mut b| {
            p.input(xi, &mut b);
            for k in 0..16 {
                matmul(
                    &mut b.m[k * b.ms..][..o * b.tb],
                    b.tb,
                    &u[k * o * c..][..o * c],
                    (c, 1),
                    &b.v[k * b.vs..][..c * b.tb],
                    (b.tb, 1),
                    (o, b.tb, c),
                    false,
                    parallel,
                );
            }
            output_band(b.m, o, g.h, g.w, p.tw, b.t0, b.t1, yi, b.ms, b.scratch);
        })
    };
    if per_image(g.n) {
        x[..g.n * c * hw]
            .par_chunks(c * hw)
            .zip(y.par_chunks_mut(o * hw))
            .for_each(|p| one(p, false));
    } else {
        x[..g.n * c * hw]
            .chunks(c * hw)
            .zip(y.chunks_mut(o * hw))
            .for_each(|p| one(p, true));
    }
    y
}

/// How one image is cut into bands of tile rows, and where a band's transformed input,
/// products and scratch sit in the worker's buffer: what [`forward`] and [`weight_grad`]
/// share.
#[derive(Debug, Clone, Copy)]
struct Bands {
    g: Geom,
    /// Tile rows.
    th: usize,
    /// Tiles a row as stored: padded to a multiple of 8, the tiles past the image's
    /// `w.div_ceil(2)` zero, so that the transforms' loops run on whole vectors with no
    /// scalar remainder, for up to 14% more columns in the products (7 x 7 planes, 4
    /// tiles a row padded to 8, lost most; `applies` leaves them to im2col).
    tw: usize,
    /// Tile rows a band.
    band: usize,
}

/// One band's tile rows `t0..t1` (`tb` tiles), its 16 transformed-input matrices `v`
/// (`vs` apart), its 16 product matrices `m` (`ms` apart) and the transforms' scratch.
struct Band<'a> {
    index: usize,
    t0: usize,
    t1: usize,
    tb: usize,
    v: &'a mut [f32],
    vs: usize,
    m: &'a mut [f32],
    ms: usize,
    scratch: &'a mut [f32],
}

impl Bands {
    fn new(g: &Geom) -> Self {
        assert!(
            (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (3, 3, 1, 1, 1, 1),
            "Winograd F(2x2, 3x3) for {g:?}"
        );
        let th = g.h.div_ceil(2);
        let tw = g.w.div_ceil(2).next_multiple_of(8);
        Bands {
            g: *g,
            th,
            tw,
            band: band_rows(g, tw, th),
        }
    }

    /// The distances between a band's 16 matrices of `tb` tiles, input and products:
    /// one cache line more than their size. At multiples of 4 KiB (DenseNet-121's 128
    /// channels of 128 tiles) the 16 streams the transforms write and read all fell into
    /// one L1 set, and the input transform ran at a third of its speed.
    fn strides(&self, tb: usize) -> (usize, usize) {
        (self.g.c * tb + 16, self.g.o * tb + 16)
    }

    /// Runs `f` on each band in order, with this thread's buffer.
    fn each(&self, mut f: impl FnMut(Band<'_>)) {
        let (vs, ms) = self.strides(self.band * self.tw);
        with_buf(16 * vs + 16 * ms + scratch_len(self.tw), |buf| {
            for (index, t0) in (0..self.th).step_by(self.band).enumerate() {
                let t1 = (t0 + self.band).min(self.th);
                let tb = (t1 - t0) * self.tw;
                let (vs, ms) = self.strides(tb);
                let (v, rest) = buf.split_at_mut(16 * vs);
                let (m, scratch) = rest.split_at_mut(16 * ms);
                f(Band {
                    index,
                    t0,
                    t1,
                    tb,
                    v,
                    vs,
                    m,
                    ms,
                    scratch,
                });
            }
        })
    }

    /// The band's [`input_transform`] of the image `xi` into `b.v`.
    fn input(&self, xi: &[f32], b: &mut Band<'_>) {
        let g = &self.g;
        input_band(xi, g.c, g.h, g.w, self.tw, b.t0, b.t1, b.v, b.vs, b.scratch);
    }
}

/// Four rows of products from one row of `A dY` (`[a, b]` for each tile):
/// `· Aᵀ = [a, a + b, a - b, -b]`, into `m[(4i + j) * stride + at + x]` for `j` in 0..4.
#[inline(always)]
fn put_grad_row(
    m: &mut [f32],
    base: usize,
    stride: usize,
    tw: usize,
    ab: impl Fn(usize) -> (f32, f32),
) {
    let (m0, rest) = m[base..].split_at_mut(stride);
    let (m1, rest) = rest.split_at_mut(stride);
    let (m2, m3) = rest.split_at_mut(stride);
    let (m0, m1, m2, m3) = (&mut m0[..tw], &mut m1[..tw], &mut m2[..tw], &mut m3[..tw]);
    for x in 0..tw {
        let (a, b) = ab(x);
        m0[x] = a;
        m1[x] = a + b;
        m2[x] = a - b;
        m3[x] = -b;
    }
}

/// `A dY Aᵀ` for one output channel's gradient `plane` (`h x w`) over the tile rows
/// `t0..t1`, with `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`: the adjoint of
/// [`output_transform`], `m[ξ * stride + (ty - t0) * tw + tx]`, zero for outputs past the
/// image. `scratch` holds `4 * tw` floats.
#[inline(always)]
fn grad_transform(
    plane: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    (t0, t1): (usize, usize),
    m: &mut [f32],
    stride: usize,
    scratch: &mut [f32],
) {
    let pairs = w / 2;
    for ty in t0..t1 {
        // Output rows 2ty and 2ty + 1 split into even and odd columns: the tiles' (p, q)
        // and (r, s).
        for r in 0..2 {
            let (even, odd) = scratch[2 * r * tw..][..2 * tw].split_at_mut(tw);
            let y = 2 * ty + r;
            if y >= h {
                even.fill(0.0);
                odd.fill(0.0);
                continue;
            }
            let src = &plane[y * w..][..w];
            for ((p, e), o) in src.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
                *e = p[0];
                *o = p[1];
            }
            even[pairs..].fill(0.0);
            odd[pairs..].fill(0.0);
            if w % 2 == 1 {
                even[pairs] = src[w - 1];
            }
        }
        let (pq, rs) = scratch[..4 * tw].split_at(2 * tw);
        let (p, q) = pq.split_at(tw);
        let (r, s) = rs.split_at(tw);
        let at = (ty - t0) * tw;
        // Rows of A dY: [p, q], [p + r, q + s], [p - r, q - s], [-r, -s].
        put_grad_row(m, at, stride, tw, |x| (p[x], q[x]));
        put_grad_row(m, 4 * stride + at, stride, tw, |x| {
            (p[x] + r[x], q[x] + s[x])
        });
        put_grad_row(m, 8 * stride + at, stride, tw, |x| {
            (p[x] - r[x], q[x] - s[x])
        });
        put_grad_row(m, 12 * stride + at, stride, tw, |x| (-r[x], -s[x]));
    }
}

dispatch! {
    /// [`grad_transform`] of the tile rows `t0..t1` for all `o` output channels of one
    /// image's output gradient `gi`, into `m` as 16 matrices `[o, (t1 - t0) * tw]`.
    #[allow(clippy::too_many_arguments)]
    fn grad_band(
        gi: &[f32],
        o: usize,
        h: usize,
        w: usize,
        tw: usize,
        t0: usize,
        t1: usize,
        m: &mut [f32],
        ms: usize,
        scratch: &mut [f32]
    ) -> () {
        let tb = (t1 - t0) * tw;
        for (oc, plane) in gi.chunks_exact(h * w).take(o).enumerate() {
            grad_transform(plane, (h, w), tw, (t0, t1), &mut m[oc * tb..], ms, scratch);
        }
    }
}

/// The weight gradient of the convolution [`forward`] computes, from its input `x` and
/// output gradient `gr`: with `dM = A dY Aᵀ` for each output tile, `dU[ξ] = Σ_tiles dM[ξ]
/// V[ξ]ᵀ` (16 products `[O, tiles] x [tiles, C]`, 44% of im2col's multiplications) and
/// `dW = Gᵀ dU G`. Images run as [`forward`]'s do; their parts are summed in image order,
/// so the result is deterministic.
pub fn weight_grad(x: &[f32], gr: &[f32], g: Geom) -> Vec<f32> {
    let p = Bands::new(&g);
    let (c, o, h, w) = (g.c, g.o, g.h, g.w);
    let (hw, oc) = (h * w, o * c);
    assert!(
        x.len() >= g.n * c * hw && gr.len() >= g.n * o * hw,
        "conv buffers for {g:?}"
    );
    let mut dw = vec![0.0f32; oc * 9];
    if g.n == 0 || hw == 0 || oc == 0 {
        return dw;
    }
    let mut parts = vec![0.0f32; g.n * 16 * oc];
    let one = |((xi, gi), du): ((&[f32], &[f32]), &mut [f32]), parallel: bool| {
        p.each(|mut b| {
            p.input(xi, &mut b);
            grad_band(gi, o, h, w, p.tw, b.t0, b.t1, b.m, b.ms, b.scratch);
            for k in 0..16 {
                // dU[k] (+)= dM[k] [o, tb] x V[k]ᵀ [tb, c].
                matmul(
                    &mut du[k * oc..][..oc],
                    c,
                    &b.m[k * b.ms..][..o * b.tb],
                    (b.tb, 1),
                    &b.v[k * b.vs..][..c * b.tb],
                    (1, b.tb),
                    (o, c, b.tb),
                    b.index > 0,
                    parallel,
                );
            }
        })
    };
    let images = x[..g.n * c * hw]
        .chunks(c * hw)
        .zip(gr[..g.n * o * hw].chunks(o * hw));
    if per_image(g.n) {
        images
            .collect::<Vec<_>>()
            .into_par_iter()
            .zip(parts.par_chunks_mut(16 * oc))
            .for_each(|p| one(p, false));
    } else {
        images
            .zip(parts.chunks_mut(16 * oc))
            .for_each(|p| one(p, true));
    }
    let mut du = vec![0.0f32; 16 * oc];
    for part in parts.chunks(16 * oc) {
        du.iter_mut().zip(part).for_each(|(d, p)| *d += p);
    }
    // dW = Gᵀ dU G, with Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]].
    let back =
        |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    for (p, k) in dw.chunks_exact_mut(9).enumerate() {
        let d = |i: usize, j: usize| du[(4 * i + j) * oc + p];
        // Gᵀ dU: three rows of four, column by column.
        let cols: [[f32; 3]; 4] = std::array::from_fn(|j| back(d(0, j), d(1, j), d(2, j), d(3, j)));
        let rows: [[f32; 4]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| cols[j][i]));
        for (i, r) in rows.iter().enumerate() {
            k[3 * i..3 * i + 3].copy_from_slice(&back(r[0], r[1], r[2], r[3]));
        }
    }
    dw
}
