//! The convolutions under `Precision::Bf16` (kernels/bf16.rs): each geometry DenseNet uses
//! against the f64 convolution of the bf16-rounded image and weights. The bound is that of
//! f32 accumulation, far below bf16's own rounding (2^-9 relative), so a product that
//! skipped the rounding, or took Winograd's transformed tiles, fails as surely as a wrong
//! one. Its own test binary: the precision is process-wide.

use medret_models::kernels::conv::{Geom, forward};
use medret_models::kernels::{self, Precision, bf16};

#[allow(clippy::too_many_arguments)]
fn geom(n: usize, c: usize, h: usize, w: usize, o: usize, k: usize, s: usize, p: usize) -> Geom {
    Geom {
        n,
        c,
        h,
        w,
        o,
        kh: k,
        kw: k,
        sh: s,
        sw: s,
        ph: p,
        pw: p,
    }
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

#[test]
fn bf16_convolutions_are_the_rounded_operands_convolutions() {
    let geoms = [
        // A dense layer's 1x1, a 3x3 Winograd would take in f32, the stem's 7x7 stride 2,
        // and a 3x3 on a plane smaller than a tile.
        geom(2, 96, 14, 14, 128, 1, 1, 0),
        geom(2, 64, 28, 28, 32, 3, 1, 1),
        geom(2, 3, 32, 32, 16, 7, 2, 3),
        geom(1, 8, 3, 5, 4, 3, 1, 1),
    ];
    assert!(medret_models::kernels::winograd::applies(&geoms[1]));
    kernels::set_precision(Precision::Bf16);
    assert!(!medret_models::kernels::winograd::applies(&geoms[1]));
    for (gi, g) in geoms.into_iter().enumerate() {
        let x = noise(g.n * g.c * g.h * g.w, gi as u64 + 1);
        let w = noise(g.o * g.c * g.kh * g.kw, gi as u64 + 50);
        let y = forward(&x, &w, g);
        let (oh, ow) = (g.out_h(), g.out_w());
        assert_eq!(y.len(), g.n * g.o * oh * ow);
        let k = g.c * g.kh * g.kw;
        for n in 0..g.n {
            for o in 0..g.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut r, mut mag) = (0f64, 0f64);
                        for c in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                                    let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((o * g.c + c) * g.kh + ky) * g.kw + kx];
                                    let p = bf16::round(xv) as f64 * bf16::round(wv) as f64;
                                    r += p;
                                    mag += p.abs();
                                }
                            }
                        }
                        let got = y[((n * g.o + o) * oh + oy) * ow + ox] as f64;
                        let bound = 2.0 * (k + 1) as f64 * 2f64.powi(-24) * mag + 1e-30;
                        assert!(
                            (got - r).abs() <= bound,
                            "{g:?} at ({n}, {o}, {oy}, {ox}): {got} against {r} (bound {bound:e})"
                        );
                    }
                }
            }
        }
    }
    kernels::set_precision(Precision::F32);
}
