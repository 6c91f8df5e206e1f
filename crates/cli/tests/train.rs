//! `medret train classify` end to end: phantoms in, checkpoints, logs and a test report
//! out; interruption and resume; bad input.

use std::path::Path;

mod common;
use common::{medret, ok};

fn synth(dir: &Path) {
    common::synth("cxr", dir, 40, 64, 2);
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "classify",
        "--data",
        data,
        "--arch",
        "tiny",
        "--size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--out",
        out,
    ]
}

#[test]
fn train_classify_interrupt_resume_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    synth(&data);
    let (d, straight, resumed) = (
        data.to_str().unwrap(),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );

    let mut args = train_args(d, straight.to_str().unwrap());
    args.push("--json");
    let report: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert!(report["test_images"].as_u64().unwrap() > 0);
    let auc = report["test"]["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
    // One AUC entry per finding (null where the test split lacks a class).
    let per_class = report["test_auc_per_class"].as_object().unwrap();
    assert_eq!(per_class.len(), 14, "{per_class:?}");
    assert!(per_class.contains_key("Mass"));
    assert!(per_class.values().any(|v| v.is_number()));
    for f in [
        "config.json",
        "test_report.json",
        "log/steps.csv",
        "log/epochs.csv",
        "log/epochs.jsonl",
        "checkpoints/epoch-0003/model.safetensors",
    ] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }

    // The same run, stopped after one epoch and resumed twice, ends with the same weights.
    let b = resumed.to_str().unwrap();
    let mut first = train_args(d, b);
    first.extend(["--stop-after-epochs", "1"]);
    ok(&first);
    assert!(!resumed.join("checkpoints/epoch-0002").exists());
    let mut again = train_args(d, b);
    again.push("--resume");
    ok(&again);
    // Tensors compared, not bytes: the metadata's key order may differ between writes.
    let w = |p: &Path| {
        let bytes = std::fs::read(p.join("checkpoints/epoch-0003/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    let (wa, wb) = (w(&straight), w(&resumed));
    assert!(wa.len() > 50);
    assert!(wa == wb, "resumed run diverged");

    // Starting afresh in a folder with checkpoints is refused.
    let o = medret(&train_args(d, b));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds checkpoints"));
}

#[test]
fn bad_arguments_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    synth(&data);
    let d = data.to_str().unwrap();
    let out = tmp.path().join("o");
    let o_str = out.to_str().unwrap();

    let mut a = train_args(d, o_str);
    a[5] = "resnet9";
    let o = medret(&a);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown architecture `resnet9`"));

    let mut a = train_args(d, o_str);
    a.extend(["--device", "tpu"]);
    let o = medret(&a);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown device `tpu`"));

    // `--devices` (the spelling) is the same option, list included.
    let mut a = train_args(d, o_str);
    a.extend(["--devices", "cpu,tpu"]);
    let o = medret(&a);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown device `tpu`"));

    let mut a = train_args(d, o_str);
    a[13] = "0";
    let o = medret(&a);
    assert!(String::from_utf8_lossy(&o.stderr).contains("learning rate"));

    let missing = tmp.path().join("nope");
    let o = medret(&train_args(missing.to_str().unwrap(), o_str));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
    assert!(
        !out.join("checkpoints").exists(),
        "nothing may be written on bad input"
    );
}
