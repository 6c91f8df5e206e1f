//! `medret ablate` trains and evaluates every variant, writes the table in three forms,
//! and, killed part-way, resumes without redoing finished variants.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{ok, s};

fn modified(p: &std::path::Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn fundus_ablation_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fundus");
    ok(&[
        "synth",
        "fundus",
        "--n",
        "48",
        "--size",
        "48",
        "--seed",
        "5",
        "--out",
        s(&data),
    ]);
    let out = tmp.path().join("ablate");
    let args = [
        "ablate",
        "--method",
        "fundus",
        "--data",
        s(&data),
        "--quick",
        "--out",
        s(&out),
    ];
    // Start, and kill -9 once the first variant is done (its report is written).
    let first = out.join("runs/mirror-fine-triplet-full-s0/eval/report.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_medret"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !first.is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the first variant never finished"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ablate exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("ablation.md").exists(), "killed before the table");
    let kept = modified(&first);
    let weights = out.join("runs/mirror-fine-triplet-full-s0/model.safetensors");
    let kept_weights = modified(&weights);
    // The next variant may have been killed while writing its first checkpoint; make sure
    // it was, as that leaves only a partial one: the rerun must start that variant afresh
    // rather than ask the engine to resume from nothing.
    let partial = out.join("runs/backbone-triplet-s0/checkpoints/epoch-0001.partial");
    if !partial.exists() {
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("model.safetensors"), b"cut short").unwrap();
    }

    let text = ok(&args);
    assert!(
        text.contains("mirror-fine-triplet-full-s0: done before, kept"),
        "{text}"
    );
    assert_eq!(
        modified(&first),
        kept,
        "a finished variant was evaluated again"
    );
    assert_eq!(
        modified(&weights),
        kept_weights,
        "a finished variant was trained again"
    );
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    for v in [
        "mirror + fine triplet (full)",
        "backbone + triplet",
        "mirror + triplet",
        "backbone + fine triplet",
    ] {
        assert!(
            md.contains(&format!("| {v} | - | 1 |")),
            "{v} missing:\n{md}"
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows[0]["vs_full"].as_object().unwrap().is_empty());
    let d = &rows[1]["vs_full"]["map@10"];
    let (mean, lo, hi) = (
        d[0].as_f64().unwrap(),
        d[1].as_f64().unwrap(),
        d[2].as_f64().unwrap(),
    );
    assert!(lo <= mean + 1e-12 && mean <= hi + 1e-12, "{d}");
    assert!(
        std::fs::read_to_string(out.join("ablation.html"))
            .unwrap()
            .contains("<table>")
    );
}
