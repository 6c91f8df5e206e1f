//! The max-pooling kernel (`kernels/max_pool.rs`) against a hand-computed case and burn's
//! own `MaxPool2d` (output, input gradient, inference).

use burn::nn::PaddingConfig2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::kernels::max_pool::{POOL_CALLS, Pool, backward, forward, max_pool2d};

mod common;
use common::vals;

/// A 4x4 plane, 3x3 windows, stride 2, padding 1: four outputs, each the maximum of the
/// in-image part of its window; the gradient goes to the first maximum.
#[test]
fn hand_computed_plane() {
    #[rustfmt::skip]
    let x = [
        1.0, 9.0, 2.0, 0.0,
        3.0, 4.0, 9.0, 5.0,
        -1.0, 6.0, 7.0, 8.0,
        2.0, 2.0, -3.0, 1.0,
    ];
    let g = Pool {
        h: 4,
        w: 4,
        k: [3, 3],
        s: [2, 2],
        p: [1, 1],
    };
    let (y, idx) = forward(&x, 1, g, true);
    // Windows: rows -1..=1 x cols -1..=1 -> {1, 9, 3, 4}; cols 1..=3 -> {9, 2, 0, 4, 9, 5}
    // (the first 9, at 1); rows 1..=3, cols -1..=1 -> {3, 4, -1, 6, 2, 2}; cols 1..=3 ->
    // {4, 9, 5, 6, 7, 8, 2, -3, 1}.
    assert_eq!(y, vec![9.0, 9.0, 6.0, 9.0]);
    assert_eq!(idx, vec![1, 1, 9, 6]);
    // Inference computes the maxima in two separable passes: the same values.
    assert_eq!(forward(&x, 1, g, false).0, y);
    // A NaN wins its windows (as in PyTorch), with places and without: x[6] (row 1,
    // col 2) lies in the windows of outputs 1 and 3 (cols 1..=3), not of 0 and 2.
    let mut xn = x;
    xn[6] = f32::NAN;
    for with_index in [true, false] {
        let (yn, _) = forward(&xn, 1, g, with_index);
        assert_eq!(yn[0], 9.0, "with_index {with_index}");
        assert!(
            yn[1].is_nan() && yn[3].is_nan(),
            "with_index {with_index}: {yn:?}"
        );
        assert_eq!(yn[2], 6.0, "with_index {with_index}");
    }
    let dx = backward(&[1.0, 10.0, 100.0, 1000.0], &idx, 1, g);
    let mut want = vec![0.0; 16];
    want[1] = 11.0;
    want[9] = 100.0;
    want[6] = 1000.0;
    assert_eq!(dx, want);
}

#[test]
fn equals_burns_max_pool_in_training_and_inference() {
    let dev = Device::flex().autodiff();
    dev.seed(3);
    for (k, s, p, shape) in [
        (3, 2, 1, [2, 3, 9, 8]),
        (2, 2, 0, [3, 2, 6, 7]),
        (3, 1, 1, [1, 4, 5, 5]),
    ] {
        let pool: MaxPool2d = MaxPool2dConfig::new([k, k])
            .with_strides([s, s])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .init();
        let base = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
        let out = pool.forward(base.clone()).dims();
        let gw = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &Device::flex());
        let run = |ours: bool| {
            let x = base.clone().autodiff().require_grad();
            let y = if ours {
                max_pool2d(&pool, x.clone())
            } else {
                pool.forward(x.clone())
            };
            let grads = (y.clone() * gw.clone().autodiff()).sum().backward();
            (vals(y), vals(x.grad(&grads).unwrap()))
        };
        let before = POOL_CALLS.load(std::sync::atomic::Ordering::Relaxed);
        let a = run(true);
        assert!(POOL_CALLS.load(std::sync::atomic::Ordering::Relaxed) > before);
        let b = run(false);
        assert_eq!(a.0, b.0, "output, {k}x{k}/{s} pad {p}");
        assert_eq!(a.1, b.1, "input gradient, {k}x{k}/{s} pad {p}");
        assert_eq!(
            vals(max_pool2d(&pool, base.clone())),
            vals(pool.forward(base)),
            "inference, {k}x{k}/{s} pad {p}"
        );
    }
}
