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

/// Each run's report in `out`, by run folder.
fn reports(out: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("eval/report.json"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_run_with_other_settings_is_trained_afresh_not_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fundus");
    common::synth("fundus", &data, 48, 48, 5);
    let out = tmp.path().join("ablate");
    let quick = [
        "ablate",
        "--method",
        "fundus",
        "--data",
        s(&data),
        "--quick",
        "--out",
        s(&out),
    ];
    ok(&quick);
    // Mark the quick figures, so the table shows whether they are reused.
    let quick_reports = reports(&out);
    assert_eq!(quick_reports.len(), 4);
    for p in &quick_reports {
        let mut r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        r["metrics"]["map@10"] = serde_json::json!(0.987654);
        std::fs::write(p, r.to_string()).unwrap();
    }
    // The same settings again: every finished run is kept, figures and all.
    let text = ok(&quick);
    assert_eq!(text.matches(": done before, kept").count(), 4, "{text}");
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("0.9877 ± 0.0000"), "{md}");

    // Other settings (a full run: 1 seed, 1 epoch) into the same folder: no run is the
    // one asked for, so each is trained and scored afresh, and the log says why.
    let text = ok(&[
        "ablate",
        "--method",
        "fundus",
        "--data",
        s(&data),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--size",
        "48",
        "--out",
        s(&out),
    ]);
    assert!(!text.contains("done before, kept"), "{text}");
    assert_eq!(
        text.matches("was run with other settings than those asked")
            .count(),
        4,
        "{text}"
    );
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(
        !md.contains("0.9877"),
        "the quick figures were reused:\n{md}"
    );
    for p in reports(&out) {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_ne!(r["metrics"]["map@10"], serde_json::json!(0.987654), "{p:?}");
        let run = p.parent().unwrap().parent().unwrap();
        let settings: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap())
                .unwrap();
        assert_eq!(settings["quick"], false, "{run:?}");
        let train: Vec<&str> = settings["train"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            train.windows(2).any(|w| w == ["--epochs", "1"]),
            "{train:?}"
        );
        // Trained once, for one epoch: the quick run's second epoch is gone.
        let epochs = std::fs::read_to_string(run.join("log/epochs.csv")).unwrap();
        assert_eq!(epochs.lines().count(), 2, "{run:?}:\n{epochs}");
    }
}
