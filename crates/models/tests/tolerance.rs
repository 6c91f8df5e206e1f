//! The tolerance helpers of the kernel tests fail on any non-finite value: folding with
//! `f32::max` skips NaN, which once let an all-NaN output pass every parity check.

mod common;

use common::{close_per_element, close_to_scale, rel_err, rel_per_element, worst};

fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}

#[test]
fn an_all_nan_output_fails_every_helper() {
    let want = [0.5f32, -2.0, 3.0, 0.0];
    let nan = [f32::NAN; 4];
    assert_eq!(worst([0.1, f32::NAN, 0.2]), f32::INFINITY);
    assert_eq!(worst([f32::NAN, 0.1]), f32::INFINITY, "NaN first");
    assert_eq!(rel_err(&nan, &want), f32::INFINITY, "rel_err of NaNs");
    assert_eq!(rel_per_element(&nan, &want), f32::INFINITY, "per element");
    assert!(fails(|| close_per_element(&nan, &want, 1.0, "nan")));
    assert!(fails(|| close_to_scale(&nan, &want, 1.0, "nan")));
    // One NaN or infinity among finite values, in the output or the reference.
    let mut one = want;
    one[2] = f32::NAN;
    assert!(fails(|| close_per_element(&one, &want, 1.0, "one nan")));
    assert!(fails(|| close_to_scale(&one, &want, 1.0, "one nan")));
    assert!(fails(|| close_to_scale(&want, &one, 1.0, "nan reference")));
    one[2] = f32::INFINITY;
    assert!(fails(|| close_per_element(&one, &one, 1.0, "inf")));
    assert!(fails(|| close_to_scale(&one, &one, 1.0, "inf")));
    // Finite and close still passes, and a real difference still fails.
    close_per_element(&want, &want, 1e-6, "equal");
    close_to_scale(&want, &want, 1e-6, "equal");
    let mut off = want;
    off[1] += 0.5;
    assert_eq!(rel_err(&off, &want), 0.5 / 3.0);
    assert!(fails(|| close_to_scale(&off, &want, 1e-3, "off")));
}
