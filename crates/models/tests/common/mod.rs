//! Helpers the kernel tests share.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use burn::prelude::*;

pub fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Every element within `tol` of `b`'s, relative to that element (at least 1).
pub fn close_per_element(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < tol, "{what}: worst relative difference {worst}");
}

/// The largest difference within `tol` of `b`'s largest magnitude (at least 1).
pub fn close_to_scale(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
        / scale;
    assert!(
        worst < tol,
        "{what}: worst difference {worst} of scale {scale}"
    );
}
