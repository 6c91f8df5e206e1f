//! Reduced-precision (bf16) matrix products for opt-in inference: each operand rounded to
//! bfloat16 (8 bits of mantissa, f32's range), every product accumulated in f32, as
//! PyTorch's and oneDNN's bf16 inference do.
//!
//! On a CPU with Intel AMX (Sapphire Rapids and later) the product runs on the tile unit,
//! `tdpbf16ps`, which is why this is worth having: one core does about 3 TFLOP/s there
//! against about 0.12 for f32 through AVX-512. AMX has no Rust intrinsics on stable, so its
//! half a dozen instructions are written as inline assembly. Without AMX the same numbers
//! are computed by rounding the operands and calling the f32 product (slower than plain f32:
//! it is there so that the rounding can be checked on any machine, and so that
//! `--precision bf16` gives one answer everywhere).

use std::sync::OnceLock;

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits. A NaN stays a NaN.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to the nearest bfloat16, as an f32.
pub fn round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// Whether this CPU and kernel let the process use AMX's bf16 tiles: the CPU has AMX-TILE
/// and AMX-BF16, the kernel saves tile state (XCR0 bits 17 and 18), and Linux granted
/// the process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, needed since 5.16).
/// Checked once.
pub fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("xsave"))
    {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    #[target_feature(enable = "xsave")]
    fn xcr0() -> u64 {
        // SAFETY: the caller checked XSAVE, which XGETBV needs.
        unsafe { _xgetbv(0) }
    }
    // SAFETY: XSAVE was checked above.
    let xcr0 = unsafe { xcr0() };
    if xcr0 & (3 << 17) != 3 << 17 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a syscall with two integer arguments and no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `c[m, n] (+)= a[m, k] b[k, n]` with `a` and `b` rounded to bf16, in the layout of
/// `conv::matmul`. On AMX the columns are shared among rayon's threads when `parallel`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
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
    #[cfg(target_arch = "x86_64")]
    if amx_available() {
        return amx::matmul(
            c,
            c_rs,
            a,
            (a_rs, a_cs),
            b,
            (b_rs, b_cs),
            (m, n, k),
            accumulate,
            parallel,
        );
    }
    emulated(
        c,
        c_rs,
        a,
        (a_rs, a_cs),
        b,
        (b_rs, b_cs),
        (m, n, k),
        accumulate,
        parallel,
    )
}

/// Convolutions that took [`bn_relu_conv`] (for tests that must know it ran).
pub static FUSED_CONV_CALLS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// `conv(relu(bn(x)))` at inference in bf16, where [`super::Precision::Bf16`] is set and
/// the CPU has AMX: the BatchNorm and ReLU applied as the convolution packs its input, so
/// neither the activation nor an im2col matrix is ever stored. `None` where it does not
/// apply (the caller then runs the two operations).
pub fn bn_relu_conv(
    bn: &burn::nn::BatchNorm,
    conv: &burn::nn::conv::Conv2d,
    x: &burn::prelude::Tensor<4>,
) -> Option<burn::prelude::Tensor<4>> {
    use burn::backend::Flex;
    if super::precision() != super::Precision::Bf16
        || !amx_available()
        || !super::bn_relu::infers_fused(x)
    {
        return None;
    }
    let g = super::conv::kernel_geom(conv, x)?;
    let affine = super::bn_relu::inference_affine(bn);
    if affine.len() != g.c {
        return None;
    }
    FUSED_CONV_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let xf = super::images(
        x.clone()
            .try_into_primitive::<Flex>()
            .expect("x on the CPU backend"),
    );
    let (xd, xs) = super::image_data(&xf);
    let wf = super::contiguous(
        conv.weight
            .val()
            .try_into_primitive::<Flex>()
            .expect("weights on the CPU backend"),
    );
    #[cfg(target_arch = "x86_64")]
    {
        let y = amx::conv(xd, xs, super::as_f32(&wf), g, Some(&affine));
        let dims = [g.n, g.o, g.out_h(), g.out_w()];
        Some(burn::prelude::Tensor::<4>::from_primitive::<Flex>(
            super::wrap(y, &dims),
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xd, xs, wf);
        None
    }
}

/// `conv::forward` in bf16 on AMX, without an im2col buffer; `None` without AMX.
pub(super) fn conv_forward(x: &[f32], wt: &[f32], g: super::conv::Geom) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if amx_available() {
        return Some(amx::conv(x, g.c * g.h * g.w, wt, g, None));
    }
    let _ = (x, wt, g);
    None
}

/// The same numbers through the f32 product: operands rounded into contiguous copies.
#[allow(clippy::too_many_arguments)]
pub(super) fn emulated(
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
    let ar: Vec<f32> = (0..m * k)
        .map(|i| round(a[(i / k) * a_rs + (i % k) * a_cs]))
        .collect();
    let br: Vec<f32> = (0..k * n)
        .map(|i| round(b[(i / n) * b_rs + (i % n) * b_cs]))
        .collect();
    super::conv::matmul_f32(
        c,
        c_rs,
        &ar,
        (k, 1),
        &br,
        (n, 1),
        (m, n, k),
        accumulate,
        parallel,
    );
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use rayon::prelude::*;

    use super::super::SendPtr;
    use super::super::conv::Geom;

    /// `MEDRET_BF16_SHIFTED=off` packs 3x3 inputs as im2col does (for A/B runs and tests).
    static SHIFTED: super::super::Switch = super::super::Switch::new("MEDRET_BF16_SHIFTED");

    fn shifted() -> bool {
        SHIFTED.on()
    }

    /// The tile configuration: palette 1, every tile 16 rows of 64 bytes (16 f32 or 32
    /// bf16). Tiles 0 to 3 accumulate a 32 x 32 block of `c`, 4 and 5 hold two 16-row
    /// strips of `a`, 6 and 7 two 16-column strips of `b`.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    thread_local! {
        /// Each thread's packed operands, kept between calls: a fresh buffer per call was
        /// mostly page faults.
        static PACKED: RefCell<(Vec<u16>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(
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
        super::super::conv::check_operands(c, c_rs, a, (a_rs, a_cs), b, (b_rs, b_cs), (m, n, k));
        if m == 0 || n == 0 {
            return;
        }
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        // Whole 32-column blocks per thread.
        let per = n.div_ceil(threads).div_ceil(32) * 32;
        let cp = SendPtr(c.as_mut_ptr());
        let part = |j0: usize| {
            let nn = per.min(n - j0);
            PACKED.with_borrow_mut(|(pa, pb)| {
                // SAFETY: `matmul` runs only where `amx_available` said yes, which
                // checked every feature these functions were compiled for. The parts
                // write the disjoint columns `j0..j0 + nn` of `c`, every index
                // `i * c_rs + j0 + j` (`i < m`, `j < nn`) inside it (asserted above).
                unsafe {
                    pack_a(a, (a_rs, a_cs), m, k, pa);
                    pack_b(&b[j0 * b_cs..], (b_rs, b_cs), k, nn, pb);
                    tiles(cp.get().add(j0), c_rs, pa, pb, m, nn, k, accumulate);
                }
            });
        };
        if threads > 1 && n > per {
            (0..n)
                .step_by(per)
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(part);
        } else {
            part(0);
        }
    }

    fn padded(x: usize) -> usize {
        x.div_ceil(32) * 32
    }

    /// `a` as bf16, row-major, `padded(m)` rows of `padded(k)`, zeros outside.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_a(a: &[f32], (a_rs, a_cs): (usize, usize), m: usize, k: usize, out: &mut Vec<u16>) {
        let (mp, kp) = (padded(m), padded(k));
        out.resize(mp * kp, 0);
        for i in 0..mp {
            let row = &mut out[i * kp..][..kp];
            if i >= m {
                row.fill(0);
            } else if a_cs == 1 {
                let src = &a[i * a_rs..][..k];
                for k0 in (0..kp).step_by(16) {
                    let mask = lanes(k, k0);
                    // SAFETY: the mask keeps the load within `src`; the store writes 16
                    // of `row`'s `kp` (a multiple of 32) elements from `k0`.
                    unsafe {
                        let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_add(k0));
                        let h = _mm512_cvtneps_pbh(v);
                        _mm256_storeu_si256(
                            row.as_mut_ptr().add(k0).cast(),
                            std::mem::transmute::<__m256bh, __m256i>(h),
                        );
                    }
                }
            } else {
                for (kk, r) in row.iter_mut().enumerate() {
                    *r = if kk < k {
                        super::to_bf16(a[i * a_rs + kk * a_cs])
                    } else {
                        0
                    };
                }
            }
        }
    }

    /// `b` as bf16 in the pairs AMX multiplies: row `p` holds rows `2p` and `2p + 1` of
    /// `b` interleaved column by column, `padded(n)` columns of pairs, `padded(k) / 2`
    /// rows, zeros outside.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_b(b: &[f32], (b_rs, b_cs): (usize, usize), k: usize, n: usize, out: &mut Vec<u16>) {
        let (kp, np) = (padded(k), padded(n));
        out.resize(kp * np, 0);
        if b_rs == 1 && b_cs != 1 {
            return pack_b_transposed(b, b_cs, k, n, out);
        }
        for p in 0..kp / 2 {
            let row = &mut out[p * 2 * np..][..2 * np];
            let (r0, r1) = (2 * p, 2 * p + 1);
            if b_cs == 1 {
                let at = |r: usize| (r < k).then(|| &b[r * b_rs..][..n]);
                interleave(at(r0), at(r1), row);
            } else {
                for j in 0..np {
                    for (h, r) in [r0, r1].into_iter().enumerate() {
                        row[2 * j + h] = if r < k && j < n {
                            super::to_bf16(b[r * b_rs + j * b_cs])
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }

    /// [`pack_b`] for a `b` stored transposed (`b[kk + j b_cs]`, each column contiguous),
    /// as the weight gradients' products read it: 32 rows of a column converted at once,
    /// their 16 pairs scattered down the 16 pair rows. Element by element, this packing
    /// made a bf16 training step slower than f32's.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_b_transposed(b: &[f32], b_cs: usize, k: usize, n: usize, out: &mut [u16]) {
        let (kp, np) = (padded(k), padded(n));
        assert!(out.len() >= kp * np, "packed buffer");
        // Pair row `p` starts `p np` u32s into `out`.
        let rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(np as i32),
        );
        let base = out.as_mut_ptr().cast::<u32>();
        for p0 in (0..kp / 2).step_by(16) {
            let k0 = 2 * p0;
            for j in 0..np {
                let v = if j < n {
                    let col = b.as_ptr().wrapping_add(k0 + j * b_cs);
                    // SAFETY: the masks keep the loads to rows below `k` of column `j`,
                    // inside `b`.
                    let (lo, hi) = unsafe {
                        (
                            _mm512_maskz_loadu_ps(lanes(k, k0), col),
                            _mm512_maskz_loadu_ps(lanes(k, k0 + 16), col.wrapping_add(16)),
                        )
                    };
                    // SAFETY: a bit cast between two 512-bit vectors.
                    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
                } else {
                    _mm512_setzero_si512()
                };
                // SAFETY: lane `p` goes to u32 `(p0 + p) np + j` < `kp np / 2`, inside
                // `out` (asserted above).
                unsafe { _mm512_i32scatter_epi32::<4>(base.add(p0 * np + j).cast(), rows, v) };
            }
        }
    }

    /// Two rows of `b` (`None`: a row of zeros past `k`) as one row of pairs, `row[2 j +
    /// h]` from row `h`'s column `j`, zeros from the rows' length to `row`'s end.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn interleave(r0: Option<&[f32]>, r1: Option<&[f32]>, row: &mut [u16]) {
        // Lanes of the two rows taken alternately: columns 0 to 7, then 8 to 15.
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let np = row.len() / 2;
        let load = |r: Option<&[f32]>, j0: usize| match r {
            // SAFETY: the mask keeps the load within the row.
            Some(r) => unsafe {
                _mm512_maskz_loadu_ps(lanes(r.len(), j0), r.as_ptr().wrapping_add(j0))
            },
            None => _mm512_setzero_ps(),
        };
        for j0 in (0..np).step_by(16) {
            let (x0, x1) = (load(r0, j0), load(r1, j0));
            let lo = _mm512_permutex2var_ps(x0, lo_idx, x1);
            let hi = _mm512_permutex2var_ps(x0, hi_idx, x1);
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            // SAFETY: 32 elements from `2 j0` lie within `row` (`np` a multiple of 16).
            unsafe {
                _mm512_storeu_si512(
                    row.as_mut_ptr().add(2 * j0).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(v),
                )
            };
        }
    }

    /// A convolution in bf16 (`conv::forward`'s), its input read straight into the
    /// packed operand (no im2col buffer), optionally through an inference BatchNorm and
    /// ReLU, `max(0, a x + b)` per input channel (zero padding stays zero: it pads the
    /// activation). Images `image_stride` floats apart in `x`. AMX must be available.
    pub(super) fn conv(
        x: &[f32],
        image_stride: usize,
        wt: &[f32],
        g: Geom,
        affine: Option<&[(f32, f32)]>,
    ) -> Vec<f32> {
        let (k, m, ohw) = (g.c * g.kh * g.kw, g.o, g.out_h() * g.out_w());
        assert!(
            g.n == 0 || x.len() >= (g.n - 1) * image_stride + g.c * g.h * g.w,
            "conv input for {g:?}"
        );
        assert!(wt.len() >= m * k, "conv weights for {g:?}");
        assert!(
            affine.is_none_or(|a| a.len() == g.c),
            "an affine map per channel"
        );
        // One image a task there: with fewer images than threads, the column split below.
        if (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (3, 3, 1, 1, 1, 1)
            && g.n >= rayon::current_num_threads()
            && shifted()
        {
            return conv3x3(x, image_stride, wt, g, affine);
        }
        let mut pa = Vec::new();
        // SAFETY: the caller checked AMX, which implies these features (`detect`).
        unsafe { pack_a(wt, (k, 1), m, k, &mut pa) };
        // Columns of the output plane per task, so that a task's packed input (`padded(k)`
        // rows of bf16) stays within about half a megabyte, in L2.
        let chunk = ((256 * 1024) / padded(k)).max(32) / 32 * 32;
        let chunks = ohw.div_ceil(chunk);
        let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
            let yp = SendPtr(y.as_mut_ptr().cast::<f32>());
            (0..g.n * chunks).into_par_iter().for_each(|t| {
                let (i, j0) = (t / chunks, (t % chunks) * chunk);
                let nn = chunk.min(ohw - j0);
                let xi = &x[i * image_stride..][..g.c * g.h * g.w];
                PACKED.with_borrow_mut(|(_, pb)| {
                    // SAFETY: AMX (the caller's check); the task's columns of image `i`
                    // are its own, inside `y`.
                    unsafe {
                        pack_conv(xi, g, affine, j0, nn, pb);
                        tiles(
                            yp.get().add(i * m * ohw + j0),
                            ohw,
                            &pa,
                            pb,
                            m,
                            nn,
                            k,
                            false,
                        );
                    }
                });
            });
        };
        // SAFETY: the tasks cover every (image, column) of the output, and `tiles` writes
        // every row of its columns.
        unsafe { super::super::written(g.n * m * ohw, fill) }
    }

    /// Output columns `j0..j0 + nn` of one image's convolution input, packed as
    /// [`pack_b`] packs: row `r = (channel, ky, kx)` holds the input each output position
    /// reads at that tap.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_conv(
        x: &[f32],
        g: Geom,
        affine: Option<&[(f32, f32)]>,
        j0: usize,
        nn: usize,
        out: &mut Vec<u16>,
    ) {
        let k = g.c * g.kh * g.kw;
        let (kp, np) = (padded(k), padded(nn));
        out.resize(kp * np, 0);
        let mut rows = [vec![0f32; nn], vec![0f32; nn]];
        for p in 0..kp / 2 {
            for (h, row) in rows.iter_mut().enumerate() {
                if 2 * p + h < k {
                    conv_row(x, g, affine, 2 * p + h, j0, row);
                }
            }
            let at = |h: usize| (2 * p + h < k).then(|| &rows[h][..]);
            interleave(at(0), at(1), &mut out[p * 2 * np..][..2 * np]);
        }
    }

    /// Row `r` of the im2col matrix over output columns `j0..j0 + dst.len()`, mapped.
    #[inline(always)]
    fn conv_row(
        x: &[f32],
        g: Geom,
        affine: Option<&[(f32, f32)]>,
        r: usize,
        j0: usize,
        dst: &mut [f32],
    ) {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        let (a, b) = affine.map_or((1.0, 0.0), |f| f[ci]);
        let map = |d: &mut [f32], src: &[f32]| {
            if affine.is_some() {
                d.iter_mut()
                    .zip(src)
                    .for_each(|(d, v)| *d = (a * v + b).max(0.0));
            } else {
                d.copy_from_slice(src);
            }
        };
        if (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0) {
            map(dst, &plane[j0..][..dst.len()]);
            return;
        }
        let ow = g.out_w();
        let (lo, hi) = super::super::conv::valid(ow, g.w, kx, g.pw, g.sw);
        let end = j0 + dst.len();
        let mut q = j0;
        while q < end {
            let (oy, ox0) = (q / ow, q % ow);
            let len = (ow - ox0).min(end - q);
            let d = &mut dst[q - j0..][..len];
            let iy = (oy * g.sh + ky) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                d.fill(0.0);
            } else {
                let row = &plane[iy as usize * g.w..][..g.w];
                // Output columns `ox0..ox0 + len`; those in `lo..hi` read inside the row.
                let (a0, a1) = (lo.clamp(ox0, ox0 + len), hi.clamp(ox0, ox0 + len));
                let a1 = a1.max(a0);
                d[..a0 - ox0].fill(0.0);
                d[a1 - ox0..].fill(0.0);
                if a1 > a0 {
                    // Input column of output column `ox`: `ox sw + kx - pw`.
                    let first = a0 * g.sw + kx - g.pw;
                    let inside = &mut d[a0 - ox0..a1 - ox0];
                    if g.sw == 1 {
                        map(inside, &row[first..][..inside.len()]);
                    } else {
                        for (t, d) in inside.iter_mut().enumerate() {
                            let v = row[first + t * g.sw];
                            *d = if affine.is_some() {
                                (a * v + b).max(0.0)
                            } else {
                                v
                            };
                        }
                    }
                }
            }
            q += len;
        }
    }

    /// One 32 x 32 block of a product: tiles 0 to 3 zeroed, then for each step `(a, b)`
    /// two 16-row strips of `a` (the second `16 a_rows` elements after the first) times
    /// two 16-column strips of `b` (the second 32 elements on), added; the block stored
    /// into `out`, rows 32 floats apart.
    ///
    /// # Safety
    /// AMX available, the tile configuration loaded, and every tile a step addresses (16
    /// rows of 64 bytes, `strides` bytes apart) readable.
    unsafe fn block32(
        steps: impl Iterator<Item = (*const u16, *const u16)>,
        (sa, sb): (usize, usize),
        a_rows: usize,
        out: &mut [f32; 32 * 32],
    ) {
        // SAFETY: the caller's promises; the stores write `out`, rows 128 bytes apart.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
            for (a0, b0) in steps {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(16 * a_rows),
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(32),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly)
                );
            }
            let p = out.as_mut_ptr();
            asm!(
                "tilestored [{p0} + {s}*1], tmm0",
                "tilestored [{p1} + {s}*1], tmm1",
                "tilestored [{p2} + {s}*1], tmm2",
                "tilestored [{p3} + {s}*1], tmm3",
                p0 = in(reg) p,
                p1 = in(reg) p.add(16),
                p2 = in(reg) p.add(16 * 32),
                p3 = in(reg) p.add(16 * 32 + 16),
                s = in(reg) 128usize,
                options(nostack)
            );
        }
    }

    /// A 3x3 convolution with stride 1 and padding 1, without im2col: the input (mapped)
    /// is packed once per image as its zero-padded plane, rows `wp = w + 2` wide, and
    /// output position `j = oy wp + ox` of tap `(ky, kx)` reads packed column
    /// `j + ky wp + kx`: each tap's operand is the packed image shifted, which a tile load
    /// takes at any address. Output columns `ox >= w` are computed and dropped. One image
    /// a task. AMX must be available.
    fn conv3x3(
        x: &[f32],
        image_stride: usize,
        wt: &[f32],
        g: Geom,
        affine: Option<&[(f32, f32)]>,
    ) -> Vec<f32> {
        let (c, o, h, w) = (g.c, g.o, g.h, g.w);
        let wp = w + 2;
        let cols = h * wp;
        let (mp, kp, np) = (padded(o), padded(c), padded(cols));
        // Packed columns any tap reads, whole vectors of 16.
        let span = (np + 2 * wp + 2).div_ceil(16) * 16;
        // The weights of each tap `t = 3 ky + kx` as an `o x c` matrix.
        let mut pa = vec![0u16; 9 * mp * kp];
        let mut one = Vec::new();
        for t in 0..9 {
            // SAFETY: AMX (the caller's check) implies these features.
            unsafe { pack_a(&wt[t..], (c * 9, 9), o, c, &mut one) };
            pa[t * mp * kp..][..mp * kp].copy_from_slice(&one);
        }
        let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
            y.par_chunks_mut(o * h * w).enumerate().for_each(|(i, yi)| {
                let xi = &x[i * image_stride..][..c * h * w];
                PACKED.with_borrow_mut(|(_, pb)| {
                    // SAFETY: AMX (the caller's check); a valid configuration.
                    unsafe {
                        pack_padded(xi, g, affine, span, pb);
                        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack));
                    }
                    let mut block = [0f32; 32 * 32];
                    for j0 in (0..np).step_by(32) {
                        for i0 in (0..mp).step_by(32) {
                            let steps = (0..9).flat_map(|t| {
                                let shift = (t / 3) * wp + t % 3;
                                (0..kp).step_by(32).map(move |k0| (t, shift, k0))
                            });
                            // SAFETY: `pa` holds rows `i0..i0 + 32` of each tap, `pb`
                            // pair rows `k0 / 2..k0 / 2 + 16` of `span` columns, and
                            // `j0 + shift + 32 <= np + 2 wp + 2 <= span`.
                            unsafe {
                                block32(
                                    steps.map(|(t, shift, k0)| {
                                        (
                                            pa.as_ptr().add(t * mp * kp + i0 * kp + k0),
                                            pb.as_ptr().add((k0 / 2) * 2 * span + 2 * (j0 + shift)),
                                        )
                                    }),
                                    (kp * 2, span * 4),
                                    kp,
                                    &mut block,
                                )
                            };
                            for r in 0..32.min(o.saturating_sub(i0)) {
                                let yr = &mut yi[(i0 + r) * h * w..][..h * w];
                                let (mut oy, mut ox) = (j0 / wp, j0 % wp);
                                for v in &block[r * 32..][..32] {
                                    if oy >= h {
                                        break;
                                    }
                                    if ox < w {
                                        yr[oy * w + ox].write(*v);
                                    }
                                    ox += 1;
                                    if ox == wp {
                                        (ox, oy) = (0, oy + 1);
                                    }
                                }
                            }
                        }
                    }
                    // SAFETY: leaves the tile state for the kernel to skip.
                    unsafe { asm!("tilerelease", options(nostack)) };
                });
            });
        };
        // SAFETY: each image's task writes every `(o, oy, ox)`: the blocks cover columns
        // `0..np >= h wp` and rows `0..mp >= o`.
        unsafe { super::super::written(g.n * o * h * w, fill) }
    }

    /// One image's input, mapped, as [`pack_b`] packs: pair row `p` holds channels `2p`
    /// and `2p + 1` over the zero-padded plane (`(h + 2) (w + 2)` positions, zeros after
    /// it to `span`).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_padded(
        x: &[f32],
        g: Geom,
        affine: Option<&[(f32, f32)]>,
        span: usize,
        out: &mut Vec<u16>,
    ) {
        let (c, h, w) = (g.c, g.h, g.w);
        let wp = w + 2;
        let kp = padded(c);
        out.resize(kp * span, 0);
        let mut rows = [vec![0f32; span], vec![0f32; span]];
        for p in 0..kp / 2 {
            for (hh, row) in rows.iter_mut().enumerate() {
                let ch = 2 * p + hh;
                if ch >= c {
                    continue;
                }
                row.fill(0.0);
                let plane = &x[ch * h * w..][..h * w];
                let (a, b) = affine.map_or((1.0, 0.0), |f| f[ch]);
                for y in 0..h {
                    let d = &mut row[(y + 1) * wp + 1..][..w];
                    let s = &plane[y * w..][..w];
                    if affine.is_some() {
                        d.iter_mut()
                            .zip(s)
                            .for_each(|(d, v)| *d = (a * v + b).max(0.0));
                    } else {
                        d.copy_from_slice(s);
                    }
                }
            }
            let at = |hh: usize| (2 * p + hh < c).then(|| &rows[hh][..]);
            interleave(at(0), at(1), &mut out[p * 2 * span..][..2 * span]);
        }
    }

    /// The mask of the 16 lanes from `at` that lie below `len`.
    fn lanes(len: usize, at: usize) -> u16 {
        match len.saturating_sub(at) {
            0 => 0,
            r if r >= 16 => 0xffff,
            r => (1u16 << r) - 1,
        }
    }

    /// The product of the packed operands into `c`, 32 x 32 blocks of `c` in tiles 0 to 3.
    ///
    /// # Safety
    /// AMX must be available ([`super::amx_available`]); `pa` and `pb` packed by
    /// [`pack_a`] and [`pack_b`] for these `m`, `n`, `k`; `c` valid for writes at
    /// `i * c_rs + j` for `i < m`, `j < n`, and no one else touching those elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        c: *mut f32,
        c_rs: usize,
        pa: &[u16],
        pb: &[u16],
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        let (mp, np, kp) = (padded(m), padded(n), padded(k));
        let mut block = [0f32; 32 * 32];
        // SAFETY: the configuration is valid for palette 1 (8 tiles of 16 x 64 bytes).
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
        for j0 in (0..np).step_by(32) {
            for i0 in (0..mp).step_by(32) {
                // SAFETY: the steps address rows `i0..i0 + 32` and pairs of columns
                // `k0..k0 + 32` of `pa`, pair rows `k0 / 2..k0 / 2 + 16` and columns
                // `j0..j0 + 32` of `pb`, inside the `padded` bounds the packing sized.
                unsafe {
                    block32(
                        (0..kp).step_by(32).map(|k0| {
                            (
                                pa.as_ptr().add(i0 * kp + k0),
                                pb.as_ptr().add((k0 / 2) * 2 * np + 2 * j0),
                            )
                        }),
                        (kp * 2, np * 4),
                        kp,
                        &mut block,
                    )
                };
                let rows = 32.min(m.saturating_sub(i0));
                let cols = 32.min(n.saturating_sub(j0));
                for r in 0..rows {
                    // SAFETY: row `i0 + r < m`, columns `j0..j0 + cols` below `n`: the
                    // caller's promise.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(c.add((i0 + r) * c_rs + j0), cols)
                    };
                    let src = &block[r * 32..][..cols];
                    if accumulate {
                        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
        // SAFETY: leaves the tile state for the kernel to skip on context switches.
        unsafe { asm!("tilerelease", options(nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-2.0), 0xc000);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above the half: up.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        // 0.1 is 0x3dcccccd: its low half rounds the high one up, to 0.10009765625.
        assert_eq!(round(0.1), f32::from_bits(0x3dcd_0000));
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "beyond bf16's largest: infinity");
        assert!(round(f32::NAN).is_nan());
        assert!(
            round(f32::from_bits(0x7f80_0001)).is_nan(),
            "a NaN with low payload bits"
        );
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `f` against the f64 product of the rounded operands, for transposed and plain
    /// operands, with and without accumulation, on shapes with every kind of edge: the
    /// error of f32 accumulation at most `2 k 2^-24 Σ|a||b|` per element.
    fn check(f: super::super::conv::MatmulFn, what: &str) {
        let shapes = [
            (1, 1, 1),
            (1, 40, 3),
            (17, 33, 31),
            (32, 32, 32),
            (33, 65, 64),
            (64, 100, 300),
            (5, 1000, 7),
            (128, 49, 1024),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for (transposed, accumulate, parallel) in [
                (false, false, false),
                (true, true, true),
                (false, true, true),
                (true, false, false),
            ] {
                let a = noise(m * k, si as u64 + 1);
                let b = noise(k * n, si as u64 + 100);
                let c0 = noise(m * n, si as u64 + 200);
                // Plain: a row-major [m, k], b [k, n]. Transposed: a stored [k, m] and b
                // stored [n, k], read through swapped strides.
                let (a_st, b_st) = if transposed {
                    ((1, m), (1, k))
                } else {
                    ((k, 1), (n, 1))
                };
                let at = |i: usize, kk: usize| a[i * a_st.0 + kk * a_st.1];
                let bt = |kk: usize, j: usize| b[kk * b_st.0 + j * b_st.1];
                let mut c = c0.clone();
                f(
                    &mut c,
                    n,
                    &a,
                    a_st,
                    &b,
                    b_st,
                    (m, n, k),
                    accumulate,
                    parallel,
                );
                for i in 0..m {
                    for j in 0..n {
                        let (mut r, mut mag) = (0f64, 0f64);
                        for kk in 0..k {
                            let p = round(at(i, kk)) as f64 * round(bt(kk, j)) as f64;
                            r += p;
                            mag += p.abs();
                        }
                        if accumulate {
                            r += c0[i * n + j] as f64;
                            mag += (c0[i * n + j] as f64).abs();
                        }
                        let err = (c[i * n + j] as f64 - r).abs();
                        let bound = 2.0 * (k + 1) as f64 * 2f64.powi(-24) * mag + 1e-30;
                        assert!(
                            err <= bound,
                            "{what} {m}x{n}x{k} t{transposed} acc{accumulate}: c[{i},{j}] = {} \
                             against {r}, error {err:e} > {bound:e}",
                            c[i * n + j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_emulated_product_is_the_rounded_operands_product() {
        check(emulated, "emulated");
    }

    #[test]
    fn the_amx_product_is_the_rounded_operands_product() {
        if !amx_available() {
            eprintln!("no AMX on this CPU: only the emulated bf16 product is checked");
            return;
        }
        check(matmul, "AMX");
    }

    #[test]
    fn a_nan_operand_gives_nan() {
        let mut a = vec![1.0f32; 32 * 32];
        a[5] = f32::NAN;
        let b = vec![1.0f32; 32 * 32];
        for f in [matmul as super::super::conv::MatmulFn, emulated] {
            let mut c = vec![0.0f32; 32 * 32];
            f(
                &mut c,
                32,
                &a,
                (32, 1),
                &b,
                (32, 1),
                (32, 32, 32),
                false,
                false,
            );
            assert!(c[..32].iter().all(|x| x.is_nan()), "row 0 reads the NaN");
            assert!(c[32..].iter().all(|x| *x == 32.0));
        }
    }
}
