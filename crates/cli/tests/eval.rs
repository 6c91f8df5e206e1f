//! `medret eval` on a tiny chest model: report.json holds every figure for every k asked,
//! with intervals, reference levels, baselines, timings and the model card; report.html
//! holds every section, self-contained; a tampered model folder and an empty split stop
//! with a clear message.

mod common;

use common::{fails, ok, s, synth};

#[test]
fn report_for_a_tiny_model_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    synth("cxr", &data, 60, 64, 4);
    let model = tmp.path().join("model");
    ok(&[
        "train",
        "hash",
        "--data",
        s(&data),
        "--arch",
        "densenet-tiny",
        "--size",
        "32",
        "--bits",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--seed",
        "1",
        "--out",
        s(&model),
    ]);
    let out = tmp.path().join("report");
    ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "-k",
        "5,20",
        "--baselines",
        "--gallery",
        "2",
        "--resamples",
        "200",
        "--out",
        s(&out),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for k in [
        "map@5", "p@5", "ndcg@5", "map@20", "p@20", "ndcg@20", "p@h<=2",
    ] {
        let v = r["metrics"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing"));
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
        let ci = &r["scores"]["intervals"][k];
        let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
        assert!(
            lo <= v + 1e-12 && v <= hi + 1e-12,
            "{k}: {v} outside [{lo}, {hi}]"
        );
        for level in ["chance", "majority"] {
            assert!(r["scores"][level][k].as_f64().is_some(), "{level} {k}");
        }
    }
    assert!(r["metrics"].get("map@100").is_none(), "only the k asked");
    for k in ["map_all", "map_all_expected_over_ties"] {
        let v = r["scores"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
    }
    // The PR curve over radii stops at the code length: radii 0..=16.
    let pr = r["scores"]["pr_curve"].as_array().unwrap();
    assert_eq!(pr.len(), 17);
    assert_eq!(pr[16]["at"], 16);
    let recall: Vec<f64> = pr.iter().map(|p| p["recall"].as_f64().unwrap()).collect();
    assert!(
        recall.windows(2).all(|w| w[0] <= w[1] + 1e-12),
        "recall grows with the radius"
    );
    assert!(
        recall[16] > 0.5,
        "the whole ball holds every relevant case: {}",
        recall[16]
    );
    for b in ["raw-pixel LSH", "raw-pixel ITQ", "random-init feature LSH"] {
        assert!(
            r["baselines"][b]["metrics"]["map@20"].as_f64().is_some(),
            "{b}"
        );
    }
    assert!(r["timing"]["encode_images_per_second"].as_f64().unwrap() > 0.0);
    assert!(r["timing"]["query_latency_ms_p99"].as_f64().unwrap() >= 0.0);
    assert_eq!(r["model_card"]["format"], "medret-model");
    // The phantoms have lesion masks: localisation is scored, or the note says why not
    // (a one-epoch model's maps can be flat).
    assert!(
        r["saliency_localisation"]["images"]
            .as_u64()
            .is_some_and(|n| n > 0)
            || r["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains("saliency localisation")),
        "{}",
        r["notes"]
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for section in [
        "<h2>Protocol",
        "<h2>Retrieval",
        "<h2>Precision and recall",
        "<svg",
        "<h2>AP per class",
        "<h2>Where the saliency falls",
        "<h2>Timing",
        "<h2>Gallery",
        "<h2>Model card",
        "data:image/png;base64,",
        "raw-pixel LSH",
    ] {
        assert!(html.contains(section), "report.html lacks {section}");
    }
    // Self-contained: nothing fetched from elsewhere (the SVG namespace is a name, not a
    // fetch).
    for fetch in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script",
        "src=\"/",
        "url(",
    ] {
        assert!(!html.contains(fetch), "report.html fetches: {fetch}");
    }
    assert!(html.contains("(Hamming "), "code distances in whole bits");
    assert!(!out.join("report.json.partial").exists());
    // 2 gallery rows of a query and 5 results.
    assert_eq!(html.matches("<figure").count(), 12);

    // A --c2l file that is not a backbone of the model's architecture.
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--baselines",
        "--c2l",
        s(&model.join("model.safetensors")),
        "--out",
        s(&out),
    ]);
    assert!(
        e.contains("model.safetensors") && e.contains("not a C2L backbone"),
        "{e}"
    );
    // A tampered model folder: the card's checksum no longer matches.
    let card = model.join("model.json");
    let text = std::fs::read_to_string(&card).unwrap();
    std::fs::write(&card, text.replacen("\"seed\": 1", "\"seed\": 2", 1)).unwrap();
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("model.json"), "{e}");
    std::fs::write(&card, text).unwrap();
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "-k",
        "0",
        "--out",
        s(&out),
    ]);
    assert!(e.contains("-k needs positive depths"), "{e}");
    // An empty split: no image listed for testing.
    std::fs::write(data.join("test_list.txt"), "").unwrap();
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert!(
        e.contains("the query split (test) holds no usable image"),
        "{e}"
    );
}
