//! `medret model summary` and `medret features` end to end.

use std::path::PathBuf;

mod common;
use common::medret;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn summary_prints_torchvision_counts() {
    let o = medret(&["model", "summary", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["parameters"], 7_978_856);
    assert_eq!(v["summary"]["feature_extractor_parameters"], 6_953_856);
    let o = medret(&["model", "summary", "--classes", "14"]);
    let text = String::from_utf8(o.stdout).unwrap();
    // 6,953,856 + 1024 * 14 + 14.
    assert!(
        text.contains(&format!(
            "parameters             {}",
            6_953_856 + 1024 * 14 + 14
        )),
        "{text}"
    );
}

#[test]
fn features_of_png_files_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f.npy");
    let f = fixtures();
    let o = medret(&[
        "features",
        "--arch",
        "densenet-tiny",
        "--weights",
        f.join("densenet_tiny_weights.safetensors")
            .to_str()
            .unwrap(),
        "--images",
        f.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"], serde_json::json!(["a_grey.png", "b_rgb.png"]));
    let (shape, got) = medret_data::npy::read_f32_matrix(&out).unwrap();
    assert_eq!(shape, vec![2, 34]);
    let bytes = std::fs::read(f.join("densenet_tiny_png_pooled.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = st
        .tensor("pooled")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // The folds below skip NaN: every value must be finite first.
    assert!(
        got.iter().chain(&want).all(|v| v.is_finite()),
        "non-finite features"
    );
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale;
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn features_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let w = f.join("densenet_tiny_weights.safetensors");
    let out = tmp.path().join("f.npy");
    // Tiny weights into DenseNet-121: shape/key mismatch, named.
    let o = medret(&[
        "features",
        "--weights",
        w.to_str().unwrap(),
        "--images",
        f.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("densenet_tiny_weights.safetensors") && err.contains("missing"),
        "{err}"
    );
    let o = medret(&[
        "features",
        "--arch",
        "densenet-tiny",
        "--weights",
        w.to_str().unwrap(),
        "--images",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no PNG, JPEG or DICOM images"), "{err}");
    let o = medret(&[
        "features",
        "--arch",
        "densenet-tiny",
        "--weights",
        w.to_str().unwrap(),
        "--images",
        f.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cuda:0",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("without GPU support"), "{err}");
    assert!(!out.exists(), "nothing written on failure");
}
