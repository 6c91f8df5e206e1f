//! Hash codes that use their bits: a chest model trained on phantoms gives its database
//! images codes that are mostly distinct with no constant bit, as `train hash`'s report,
//! `eval`'s report and `index info` all say; the same training without the bit
//! decorrelation term collapses (which is what this test exists to catch).

mod common;

use std::path::Path;

use common::{ok, s, synth, train_hash_epochs};

/// The common tiny model (densenet-tiny, 32 px, 16 bits) trained for 12 epochs: two
/// epochs leave the hash layer's running statistics and the validation choice too early
/// to say anything about codes.
fn train(data: &Path, out: &Path, extra: &[&str]) -> String {
    train_hash_epochs(data, out, "2", "12", extra)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn health(report: &serde_json::Value) -> medret_eval::CodeHealth {
    serde_json::from_value(report["code_health"]["database"].clone())
        .unwrap_or_else(|e| panic!("no database code health in {report}: {e}"))
}

#[test]
fn trained_codes_spread_and_every_report_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    synth("cxr", &data, 160, 64, 11);
    let model = tmp.path().join("model");
    let out = train(&data, &model, &[]);
    let h = health(&json(&model.join("test_report.json")));
    eprintln!("with decorrelation: {}", h.summary());
    assert!(out.contains("code health of the database"), "{out}");
    assert_eq!(h.bits, 16);
    assert!(
        h.is_healthy(),
        "codes collapsed on phantoms: {}",
        h.summary()
    );

    // The same run without the decorrelation term: whole classes share codes.
    let plain = tmp.path().join("plain");
    train(&data, &plain, &["--decorrelation", "0"]);
    let p = health(&json(&plain.join("test_report.json")));
    eprintln!("without: {}", p.summary());
    assert!(
        p.distinct < h.distinct,
        "decorrelation should spread codes: {} vs {} distinct",
        h.distinct,
        p.distinct
    );

    // eval's report carries the same figures for the same database (the train split).
    let ev = tmp.path().join("eval");
    ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "-k",
        "10,100",
        "--gallery",
        "0",
        "--out",
        s(&ev),
    ]);
    let r = json(&ev.join("report.json"));
    let e: medret_eval::CodeHealth = serde_json::from_value(r["code_health"].clone()).unwrap();
    assert_eq!((e.codes, e.distinct), (h.codes, h.distinct), "{r}");
    assert!(
        r["hamming_only_metrics"]["map@100"].as_f64().is_some(),
        "{r}"
    );
    assert!(
        r["protocol"]["tie_rule"]
            .as_str()
            .unwrap()
            .contains("relaxed codes"),
        "{r}"
    );

    // index info: the stored codes' health, per code model.
    let store = tmp.path().join("cases.db");
    ok(&[
        "index",
        "build",
        "--store",
        s(&store),
        "--name",
        "cxr",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["index", "info", "--store", s(&store), "--json"])).unwrap();
    let stored = info["code_health"]
        .as_object()
        .and_then(|m| m.values().next())
        .unwrap_or_else(|| panic!("no code health in index info: {info}"));
    let stored: medret_eval::CodeHealth = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!((stored.codes, stored.distinct), (h.codes, h.distinct));
    let text = ok(&["index", "info", "--store", s(&store)]);
    assert!(text.contains("distinct of"), "{text}");
}
