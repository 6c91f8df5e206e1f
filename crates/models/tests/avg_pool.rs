//! The average-pooling kernel (`kernels/avg_pool.rs`) against a hand-computed case and
//! burn's own `AvgPool2d` (output, input gradient, inference).

use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::kernels::avg_pool::{AVG_POOL_CALLS, AvgPool, avg_pool2d, backward, forward};

mod common;
use common::vals;

/// A 3x5 plane, 2x2 windows, stride 2: two outputs; the last row and column lie in no
/// window and get no gradient.
#[test]
fn hand_computed_plane() {
    #[rustfmt::skip]
    let x = [
        1.0, 2.0, 3.0, 4.0, 100.0,
        5.0, 6.0, 7.0, 8.0, 100.0,
        100.0, 100.0, 100.0, 100.0, 100.0,
    ];
    let g = AvgPool {
        h: 3,
        w: 5,
        k: [2, 2],
        s: [2, 2],
    };
    assert_eq!(forward(&x, 1, g), vec![3.5, 5.5]);
    #[rustfmt::skip]
    let want = vec![
        1.0, 1.0, 10.0, 10.0, 0.0,
        1.0, 1.0, 10.0, 10.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(backward(&[4.0, 40.0], 1, g), want);
    // Overlapping windows (3x3, stride 1) on the same plane: the centre row's cells are
    // in every window of their column.
    let g = AvgPool {
        h: 3,
        w: 5,
        k: [3, 3],
        s: [1, 1],
    };
    // (The scale 1/9 is not exact in binary: equal within rounding.)
    let near = |a: &[f32], b: &[f32]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(u, v)| (u - v).abs() <= 1e-5 * v.abs().max(1.0))
    };
    let y = forward(&x, 1, g);
    let mean = |c: usize| {
        (0..3)
            .flat_map(|r| (c..c + 3).map(move |k| x[r * 5 + k]))
            .sum::<f32>()
            / 9.0
    };
    assert!(near(&y, &[mean(0), mean(1), mean(2)]), "{y:?}");
    let dx = backward(&[9.0, 18.0, 27.0], 1, g);
    for row in dx.chunks(5) {
        assert!(near(row, &[1.0, 3.0, 6.0, 5.0, 3.0]), "{dx:?}");
    }
}

#[test]
fn equals_burns_avg_pool_in_training_and_inference() {
    let dev = Device::flex().autodiff();
    dev.seed(5);
    for (k, s, shape) in [
        (2, 2, [2, 3, 8, 8]),
        (2, 2, [3, 2, 7, 9]),
        (3, 1, [1, 4, 5, 6]),
        (3, 2, [2, 2, 9, 7]),
    ] {
        let pool: AvgPool2d = AvgPool2dConfig::new([k, k]).with_strides([s, s]).init();
        let base = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
        let out = pool.forward(base.clone()).dims();
        let gw = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &Device::flex());
        let run = |ours: bool| {
            let x = base.clone().autodiff().require_grad();
            let y = if ours {
                avg_pool2d(&pool, x.clone())
            } else {
                pool.forward(x.clone())
            };
            let grads = (y.clone() * gw.clone().autodiff()).sum().backward();
            (vals(y), vals(x.grad(&grads).unwrap()))
        };
        let before = AVG_POOL_CALLS.load(std::sync::atomic::Ordering::Relaxed);
        let a = run(true);
        assert!(AVG_POOL_CALLS.load(std::sync::atomic::Ordering::Relaxed) > before);
        let b = run(false);
        let close = |p: &[f32], q: &[f32], what: &str| {
            assert_eq!(p.len(), q.len(), "{what}");
            for (u, v) in p.iter().zip(q) {
                assert!(
                    u.is_finite() && (u - v).abs() <= 1e-6 * (1.0 + v.abs()),
                    "{what}, {k}x{k}/{s} {shape:?}: {u} vs {v}"
                );
            }
        };
        close(&a.0, &b.0, "output");
        close(&a.1, &b.1, "input gradient");
        close(
            &vals(avg_pool2d(&pool, base.clone())),
            &vals(pool.forward(base)),
            "inference",
        );
    }
}
