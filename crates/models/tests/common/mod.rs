//! Helpers the kernel tests share.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use burn::prelude::*;

pub fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The largest of `errors`, or infinity when any of them is not finite. Folding with
/// `f32::max` would skip a NaN (`max` returns the other operand), so an output of NaNs
/// would compare as an exact match; here it can never pass a tolerance.
pub fn worst(errors: impl IntoIterator<Item = f32>) -> f32 {
    errors.into_iter().fold(0.0f32, |m, e| {
        if e.is_finite() {
            m.max(e)
        } else {
            f32::INFINITY
        }
    })
}

/// `b`'s largest magnitude, at least 1; infinity when `b` holds a non-finite value.
fn scale(b: &[f32]) -> f32 {
    worst(b.iter().map(|v| v.abs())).max(1.0)
}

/// The largest relative difference of any element of `a` from `b`'s, relative to that
/// element (at least 1); infinity where either holds a non-finite value.
pub fn rel_per_element(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    worst(a.iter().zip(b).map(|(x, y)| {
        if x.is_finite() && y.is_finite() {
            (x - y).abs() / y.abs().max(1.0)
        } else {
            f32::INFINITY
        }
    }))
}

/// Max |a - b| relative to `b`'s scale (its largest magnitude, at least 1); infinity
/// where either holds a non-finite value.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = scale(b);
    if !scale.is_finite() {
        return f32::INFINITY;
    }
    worst(a.iter().zip(b).map(|(x, y)| (x - y).abs())) / scale
}

/// Every element within `tol` of `b`'s, relative to that element (at least 1).
pub fn close_per_element(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = rel_per_element(a, b);
    assert!(worst < tol, "{what}: worst relative difference {worst}");
}

/// The largest difference within `tol` of `b`'s largest magnitude (at least 1).
pub fn close_to_scale(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = rel_err(a, b);
    assert!(
        worst < tol,
        "{what}: worst difference {worst} of scale {}",
        scale(b)
    );
}

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A float32 tensor of a safetensors fixture: values and shape.
pub fn f32s(st: &safetensors::SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, t.shape().to_vec())
}
