//! The convolutions under `Precision::Bf16` (kernels/bf16.rs): each geometry DenseNet uses
//! against the f64 convolution of the bf16-rounded image and weights. The bound is that of
//! f32 accumulation, far below bf16's own rounding (2^-9 relative), so a product that
//! skipped the rounding, or took Winograd's transformed tiles, fails as surely as a wrong
//! one. Its own test binary: the precision is process-wide.

use std::sync::Mutex;

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use medret_models::kernels::conv::{Geom, forward};
use medret_models::kernels::{self, Precision, bf16};

/// The precision is process-wide: one test at a time sets it.
static PRECISION: Mutex<()> = Mutex::new(());

/// Sets bf16 for the guard's life, f32 after (a failing test included).
struct Bf16(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl Bf16 {
    fn on() -> Self {
        let g = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
        kernels::set_precision(Precision::Bf16);
        Bf16(g)
    }
}

impl Drop for Bf16 {
    fn drop(&mut self) {
        kernels::set_precision(Precision::F32);
    }
}

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
        // As many images as threads or more: the 3x3 takes the shifted-tile path
        // (`conv3x3` in bf16.rs), fewer take the column split.
        geom(rayon::current_num_threads().max(2), 40, 9, 6, 36, 3, 1, 1),
    ];
    let guard = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    assert!(medret_models::kernels::winograd::applies(&geoms[1]));
    drop(guard);
    let _bf16 = Bf16::on();
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
}

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v, shape), &Device::flex())
}

/// An inference BatchNorm with every statistic and parameter its own per channel.
fn batch_norm(c: usize, seed: u64) -> BatchNorm {
    let mut bn = BatchNormConfig::new(c).init(&Device::flex());
    let pos = |s: u64| {
        noise(c, s)
            .into_iter()
            .map(|v| 0.5 + v.abs())
            .collect::<Vec<_>>()
    };
    bn.gamma = Param::from_tensor(tensor(pos(seed), [c]));
    bn.beta = Param::from_tensor(tensor(noise(c, seed + 1), [c]));
    bn.running_mean = RunningState::new(tensor(noise(c, seed + 2), [c]));
    bn.running_var = RunningState::new(tensor(pos(seed + 3), [c]));
    bn
}

fn floats(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// `bn_relu_conv` (BatchNorm, ReLU and convolution in one pass) against the f64
/// convolution of the bf16-rounded activations `max(0, a x + b)` (computed in f32 as the
/// kernel does) and weights; zero padding pads the activation. Without AMX the fused path
/// must decline.
#[test]
fn bn_relu_conv_is_the_convolution_of_the_rounded_activations() {
    let _bf16 = Bf16::on();
    for (gi, (c, o, k, pad, hw)) in [(40, 48, 1, 0, 9), (24, 16, 3, 1, 7)]
        .into_iter()
        .enumerate()
    {
        let bn = batch_norm(c, 10 * gi as u64);
        let conv = Conv2dConfig::new([c, o], [k, k])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(&Device::flex());
        let n = 2;
        let xv = noise(n * c * hw * hw, 7 + gi as u64);
        let x = tensor(xv.clone(), [n, c, hw, hw]);
        let got = bf16::bn_relu_conv(&bn, &conv, &x);
        if !bf16::amx_available() {
            assert!(got.is_none(), "the fused path needs AMX");
            eprintln!("no AMX: the fused path declines, as it must");
            return;
        }
        let y = got
            .expect("the fused path applies")
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let (gamma, beta) = (floats(bn.gamma.val()), floats(bn.beta.val()));
        let (mean, var) = (
            floats(bn.running_mean.value()),
            floats(bn.running_var.value()),
        );
        let w = conv.weight.val().into_data().try_into_vec::<f32>().unwrap();
        let act = |i: usize, ch: usize, yy: isize, xx: isize| -> f64 {
            if yy < 0 || xx < 0 || yy >= hw as isize || xx >= hw as isize {
                return 0.0;
            }
            let a = gamma[ch] / (var[ch] + bn.epsilon as f32).sqrt();
            let b = beta[ch] - mean[ch] * a;
            let v = xv[((i * c + ch) * hw + yy as usize) * hw + xx as usize];
            bf16::round((a * v + b).max(0.0)) as f64
        };
        let kk = c * k * k;
        for i in 0..n {
            for oc in 0..o {
                for oy in 0..hw {
                    for ox in 0..hw {
                        let (mut r, mut mag) = (0f64, 0f64);
                        for ch in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let p = act(
                                        i,
                                        ch,
                                        (oy + ky) as isize - pad as isize,
                                        (ox + kx) as isize - pad as isize,
                                    ) * bf16::round(w[((oc * c + ch) * k + ky) * k + kx])
                                        as f64;
                                    r += p;
                                    mag += p.abs();
                                }
                            }
                        }
                        let v = y[((i * o + oc) * hw + oy) * hw + ox] as f64;
                        let bound = 2.0 * (kk + 1) as f64 * 2f64.powi(-24) * mag + 1e-30;
                        assert!(
                            (v - r).abs() <= bound,
                            "{k}x{k} at ({i}, {oc}, {oy}, {ox}): {v} against {r} (bound {bound:e})"
                        );
                    }
                }
            }
        }
    }
}

/// The small DenseNet in bf16 against itself in f32: close (bf16 keeps 8 bits), not equal
/// (the bf16 path ran), and through the fused BatchNorm-ReLU-convolution where AMX is.
#[test]
fn a_densenet_in_bf16_is_close_to_f32() {
    let model = medret_models::DenseNetConfig::tiny().init(&Device::flex());
    let x = Tensor::<4>::random(
        [2, 3, 64, 64],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &Device::flex(),
    );
    let run = || {
        model
            .forward(x.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let f32_out = {
        let _g = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
        run()
    };
    let _bf16 = Bf16::on();
    let fused = bf16::FUSED_CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let bf16_out = run();
    let scale = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = f32_out
        .iter()
        .zip(&bf16_out)
        .map(|(a, b)| {
            if a.is_finite() && b.is_finite() {
                (a - b).abs() / scale
            } else {
                f32::INFINITY
            }
        })
        .fold(0f32, f32::max);
    assert!(
        worst < 0.05,
        "bf16 logits off f32's by {worst} of their scale"
    );
    assert!(
        worst > 0.0,
        "bf16 gave f32's exact logits: the bf16 products did not run"
    );
    if bf16::amx_available() {
        let layers: usize = medret_models::DenseNetConfig::tiny()
            .block_config
            .iter()
            .sum();
        let calls = bf16::FUSED_CONV_CALLS.load(std::sync::atomic::Ordering::Relaxed) - fused;
        assert!(
            calls >= 2 * layers,
            "{calls} fused convolutions for {layers} dense layers"
        );
    }
}

/// The commands' entry: bf16 on the CPU is set, and said to be emulated exactly where
/// there is no AMX; f32 is never emulated.
#[test]
fn set_precision_for_the_cpu() {
    let _g = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    let emulated = kernels::set_precision_for(Precision::Bf16, &cpu).unwrap();
    assert_eq!(kernels::precision(), Precision::Bf16);
    assert_eq!(emulated, !bf16::amx_available());
    assert!(!kernels::set_precision_for(Precision::F32, &cpu).unwrap());
    assert_eq!(kernels::precision(), Precision::F32);
}
