//! The convolution kernel (`kernels/conv.rs`) against a direct f64 loop, finite
//! differences, and burn's own `Conv2d` (forward, both gradients, inference), at the dense
//! layers' 3x3 and the stem's 7x7 stride 2 and at odd geometries.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::kernels::conv::{CONV_CALLS, Geom, backward, conv2d, forward, im2col_forward};
use medret_models::kernels::winograd;

mod common;
use common::{close_to_scale, vals};

static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lcg_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The convolution straight from its definition, in f64.
fn reference(x: &[f32], wt: &[f32], g: Geom) -> Vec<f64> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut y = vec![0.0f64; g.n * g.o * oh * ow];
    for i in 0..g.n {
        for oc in 0..g.o {
            for yy in 0..oh {
                for xx in 0..ow {
                    let mut s = 0.0f64;
                    for ci in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (yy * g.sh + ky) as isize - g.ph as isize;
                                let ix = (xx * g.sw + kx) as isize - g.pw as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                s += x[((i * g.c + ci) * g.h + iy as usize) * g.w + ix as usize]
                                    as f64
                                    * wt[((oc * g.c + ci) * g.kh + ky) * g.kw + kx] as f64;
                            }
                        }
                    }
                    y[((i * g.o + oc) * oh + yy) * ow + xx] = s;
                }
            }
        }
    }
    y
}

#[test]
fn forward_and_gradients_match_the_definition() {
    // Odd sizes, a 1-pixel-wide image, more images than threads and fewer, strides that
    // do not divide the padded size, padding wider than the kernel's reach and none:
    // every border case of im2col and col2im and both parallel layouts.
    let g3 = Geom::same3x3;
    let geoms = [
        g3(3, 3, 5, 4, 4),
        g3(1, 2, 4, 1, 3),
        g3(5, 4, 3, 6, 2),
        Geom {
            n: 2,
            c: 3,
            h: 9,
            w: 8,
            o: 2,
            kh: 7,
            kw: 7,
            sh: 2,
            sw: 2,
            ph: 3,
            pw: 3,
        },
        Geom {
            n: 3,
            c: 2,
            h: 6,
            w: 7,
            o: 3,
            kh: 3,
            kw: 2,
            sh: 2,
            sw: 3,
            ph: 0,
            pw: 1,
        },
        Geom {
            n: 1,
            c: 1,
            h: 3,
            w: 3,
            o: 2,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            ph: 2,
            pw: 2,
        },
    ];
    for g in geoms {
        let x = lcg_data(g.n * g.c * g.h * g.w, 1 + g.n as u64);
        let wt = lcg_data(g.o * g.c * g.kh * g.kw, 2 + g.c as u64);
        let y = forward(&x, &wt, g);
        let want = reference(&x, &wt, g);
        assert_eq!(y.len(), want.len(), "{g:?}");
        for (a, b) in y.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs {b} ({g:?})");
        }
        // L = sum(G * y): dL/dx and dL/dW by central differences of the reference.
        let gr = lcg_data(y.len(), 9);
        let loss = |x: &[f32], wt: &[f32]| -> f64 {
            reference(x, wt, g)
                .iter()
                .zip(&gr)
                .map(|(y, g)| y * *g as f64)
                .sum()
        };
        let (dx, dw) = backward(&x, &wt, &gr, g, true);
        let dx = dx.expect("dx asked for");
        let (no_dx, dw2) = backward(&x, &wt, &gr, g, false);
        assert!(no_dx.is_none());
        assert_eq!(
            dw, dw2,
            "the weight gradient depends on whether dx is computed"
        );
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let (mut u, mut d) = (x.clone(), x.clone());
            u[i] += eps;
            d[i] -= eps;
            let num = (loss(&u, &wt) - loss(&d, &wt)) / (2.0 * eps as f64);
            assert!(
                (dx[i] as f64 - num).abs() < 1e-4,
                "dx[{i}] {} vs {num} ({g:?})",
                dx[i]
            );
        }
        for i in 0..wt.len() {
            let (mut u, mut d) = (wt.clone(), wt.clone());
            u[i] += eps;
            d[i] -= eps;
            let num = (loss(&x, &u) - loss(&x, &d)) / (2.0 * eps as f64);
            assert!(
                (dw[i] as f64 - num).abs() < 1e-4,
                "dw[{i}] {} vs {num} ({g:?})",
                dw[i]
            );
        }
    }
}

/// The largest difference of `y` from the f64 reference `want`, relative to `want`'s
/// largest magnitude (at least 1); infinity where `y` holds a NaN (folding with `max`
/// alone would skip it).
fn err_f64(y: &[f32], want: &[f64]) -> f64 {
    assert_eq!(y.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    y.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(
            0.0f64,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        )
        / scale
}

/// Winograd F(2x2, 3x3) (`kernels/winograd.rs`) against the f64 definition and against
/// im2col: a single pixel, one-pixel rows and columns, odd sizes (the last tile row and
/// column cut by the border), 7x7 (DenseNet-121's last block), several bands of tile rows
/// (57x57 with 130 channels), and the dense layers' 128 channels, where the sum is longest.
/// Its error must stay within twice the direct product's (and 2e-5 of the scale).
#[test]
fn winograd_matches_the_definition_and_im2col() {
    let g3 = Geom::same3x3;
    for g in [
        g3(1, 1, 1, 1, 1),
        g3(2, 3, 1, 5, 2),
        g3(1, 2, 6, 1, 3),
        g3(3, 4, 7, 7, 5),
        g3(2, 5, 4, 6, 3),
        g3(1, 128, 14, 14, 32),
        g3(3, 32, 9, 11, 128),
        g3(1, 130, 57, 57, 3),
    ] {
        let x = lcg_data(g.n * g.c * g.h * g.w, 3 + g.h as u64);
        let wt = lcg_data(g.o * g.c * 9, 4 + g.w as u64);
        let want = reference(&x, &wt, g);
        let (wino, direct) = (
            err_f64(&winograd::forward(&x, &wt, g), &want),
            err_f64(&im2col_forward(&x, &wt, g), &want),
        );
        assert!(
            wino < 2e-5 && wino <= 2.0 * direct + 1e-7,
            "Winograd's error {wino:e} against im2col's {direct:e} ({g:?})"
        );
    }
}

/// Winograd's weight gradient (`winograd::weight_grad`) against `dW[o, c, i, j] = Σ
/// g[n, o, y, x] x[n, c, y + i - 1, x + j - 1]` in f64, at the same border cases as the
/// forward, with several images summed (burn's `Conv2d` checks it again in
/// `tiled_shapes_equal_burns_conv2d`).
#[test]
fn winograd_weight_gradient_matches_the_definition() {
    let g3 = Geom::same3x3;
    for g in [
        g3(1, 1, 1, 1, 1),
        g3(2, 3, 1, 5, 2),
        g3(3, 2, 6, 1, 3),
        g3(3, 4, 7, 7, 5),
        g3(4, 5, 4, 6, 3),
        g3(2, 128, 14, 14, 32),
        g3(3, 32, 9, 11, 128),
        g3(1, 130, 57, 57, 3),
    ] {
        let x = lcg_data(g.n * g.c * g.h * g.w, 5 + g.h as u64);
        let gr = lcg_data(g.n * g.o * g.h * g.w, 6 + g.w as u64);
        let (h, w) = (g.h as isize, g.w as isize);
        let mut want = vec![0.0f64; g.o * g.c * 9];
        for n in 0..g.n {
            for o in 0..g.o {
                for c in 0..g.c {
                    for i in 0..3isize {
                        for j in 0..3isize {
                            let mut s = 0.0f64;
                            for y in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) = (y + i - 1, xx + j - 1);
                                    if iy < 0 || ix < 0 || iy >= h || ix >= w {
                                        continue;
                                    }
                                    let at = |ch: usize, cs: usize, yy: isize, xq: isize| {
                                        ((n * cs + ch) * g.h + yy as usize) * g.w + xq as usize
                                    };
                                    s +=
                                        gr[at(o, g.o, y, xx)] as f64 * x[at(c, g.c, iy, ix)] as f64;
                                }
                            }
                            want[(o * g.c + c) * 9 + (i * 3 + j) as usize] += s;
                        }
                    }
                }
            }
        }
        let wino = err_f64(&winograd::weight_grad(&x, &gr, g), &want);
        assert!(
            wino < 2e-5,
            "Winograd's weight gradient: error {wino:e} ({g:?})"
        );
    }
}

/// `conv` through the kernel and through burn's `Conv2d` on `base` (permuted to NCHW by
/// `permute`, so it may arrive strided): the output, both gradients of a random weighted
/// sum, and inference on a graph-free copy, all within 1e-5 of the scale.
fn compare_with_burn(name: &str, conv: &Conv2d, base: Tensor<4>, permute: [usize; 4]) {
    compare_prepared(name, conv, base, &|x| x.permute(permute));
}

/// [`compare_with_burn`] with any view of `base` as the input (`prep`): a permutation,
/// or a flip as the mirror views make.
fn compare_prepared(
    name: &str,
    conv: &Conv2d,
    base: Tensor<4>,
    prep: &dyn Fn(Tensor<4>) -> Tensor<4>,
) {
    let out = conv.valid().forward(prep(base.clone())).dims();
    let gw = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &Device::flex());
    let run = |fused: bool| {
        let x = base.clone().autodiff().require_grad();
        let xin = prep(x.clone());
        let y = if fused {
            conv2d(conv, xin)
        } else {
            conv.forward(xin)
        };
        let grads = (y.clone() * gw.clone().autodiff()).sum().backward();
        (
            vals(y),
            vals(x.grad(&grads).unwrap()),
            vals(conv.weight.val().grad(&grads).unwrap()),
        )
    };
    let before = CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let a = run(true);
    assert!(
        CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed) > before,
        "{name}: the kernel never ran"
    );
    let b = run(false);
    close_to_scale(&a.0, &b.0, 1e-5, &format!("{name} output"));
    close_to_scale(&a.1, &b.1, 1e-5, &format!("{name} input gradient"));
    close_to_scale(&a.2, &b.2, 1e-5, &format!("{name} weight gradient"));
    // Inference: plain CPU tensors, no graph.
    let plain = conv.valid();
    let x = prep(base);
    close_to_scale(
        &vals(conv2d(&plain, x.clone())),
        &vals(plain.forward(x)),
        1e-5,
        &format!("{name} inference"),
    );
}

fn dense_conv(c: usize, o: usize, dev: &Device) -> Conv2d {
    Conv2dConfig::new([c, o], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(dev)
}

fn stem_conv(c: usize, o: usize, dev: &Device) -> Conv2d {
    Conv2dConfig::new([c, o], [7, 7])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
        .with_bias(false)
        .init(dev)
}

/// The dense layers' 3x3 and the stem's 7x7 stride 2, on a permuted (non-contiguous)
/// input with odd sizes; a convolution with a bias takes burn's path.
#[test]
fn equals_burns_conv2d_in_training_and_inference() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(4);
    let random = || {
        Tensor::<4>::random(
            [3, 7, 5, 6],
            Distribution::Normal(0.0, 1.0),
            &Device::flex(),
        )
    };
    compare_with_burn("3x3", &dense_conv(6, 5, &dev), random(), [0, 3, 1, 2]);
    compare_with_burn("7x7/2", &stem_conv(6, 4, &dev), random(), [0, 3, 1, 2]);
    let with_bias: Conv2d = Conv2dConfig::new([6, 5], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&Device::flex());
    let calls = CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let x = Tensor::<4>::random(
        [1, 6, 4, 4],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let _ = conv2d(&with_bias, x);
    assert_eq!(CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed), calls);
}

/// Inputs flipped left/right and up/down, as the fundus method's mirror views reach the
/// backbone: the same output and gradients as burn's path. (The weight gradient of the
/// stem's convolution once differed by about 1% here; the GPU parity test found it.)
#[test]
fn flipped_inputs_equal_burns_conv2d() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(9);
    let random = || {
        Tensor::<4>::random(
            [2, 3, 12, 10],
            Distribution::Normal(0.0, 1.0),
            &Device::flex(),
        )
    };
    for (what, axis) in [("left/right", 3usize), ("up/down", 2)] {
        let flip = move |x: Tensor<4>| x.flip([axis]);
        compare_prepared(
            &format!("3x3, {what} flip"),
            &dense_conv(3, 5, &dev),
            random(),
            &flip,
        );
        compare_prepared(
            &format!("7x7/2, {what} flip"),
            &stem_conv(3, 4, &dev),
            random(),
            &flip,
        );
    }
}

/// Shapes large enough that the kernel works in several tiles of output rows (a tile's
/// im2col block is kept near a megabyte): the 3x3 with 64 input channels on 32x20 maps
/// (its input gradient, 8 to 64 channels, in two im2col tiles), a 3x3 that goes through
/// Winograd both ways, the stem's 7x7 stride 2 on a 160-pixel image (four), against burn.
#[test]
fn tiled_shapes_equal_burns_conv2d() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(5);
    let random =
        |shape| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
    let id = [0, 1, 2, 3];
    compare_with_burn("3x3", &dense_conv(64, 8, &dev), random([2, 64, 32, 20]), id);
    // Large enough for Winograd on the forward and on the input gradient's transposed
    // convolution (`winograd::applies`).
    let g = Geom::same3x3(2, 48, 28, 30, 32);
    assert!(winograd::applies(&g) && winograd::applies(&Geom::same3x3(2, 32, 28, 30, 48)));
    compare_with_burn(
        "3x3 Winograd",
        &dense_conv(48, 32, &dev),
        random([2, 48, 28, 30]),
        id,
    );
    compare_with_burn(
        "7x7/2",
        &stem_conv(3, 4, &dev),
        random([1, 3, 160, 160]),
        id,
    );
}

/// Timing of the raw kernel at DenseNet-121 block-1 shapes (`--ignored --nocapture`).
#[test]
#[ignore]
fn raw_kernel_timing() {
    let (n, c, h, w, o) = (8, 128, 32, 32, 32);
    let geom = Geom::same3x3(n, c, h, w, o);
    let x = lcg_data(n * c * h * w, 1);
    let wt = lcg_data(o * c * 9, 2);
    let g = lcg_data(n * o * h * w, 3);
    let _ = forward(&x, &wt, geom);
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let _ = forward(&x, &wt, geom);
    }
    let f = t.elapsed().as_secs_f64() * 200.0;
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let _ = backward(&x, &wt, &g, geom, true);
    }
    let b = t.elapsed().as_secs_f64() * 200.0;
    eprintln!("raw forward {f:.2} ms, backward {b:.2} ms");
}
