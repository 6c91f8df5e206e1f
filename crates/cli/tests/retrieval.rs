//! The chest method's product path end to end: `train hash` writes a model folder,
//! `encode` writes codes, `index build --model` ingests them with the model recorded,
//! `search --image` encodes a query exactly as `encode` did and explains it; and each bad
//! input stops with a message naming the file and the problem.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, s, train_hash};

/// Rows of a uint8 `.npy` (via the project's own reader).
fn codes(path: &Path) -> Vec<Vec<u8>> {
    let (shape, data) = medret_data::npy::read_u8_matrix(path).unwrap();
    data.chunks(shape[1]).map(<[u8]>::to_vec).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn image_in_similar_cases_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    ok(&[
        "synth",
        "cxr",
        "--n",
        "60",
        "--size",
        "64",
        "--seed",
        "5",
        "--out",
        s(&data),
    ]);
    let model = tmp.path().join("model");
    train_hash(&data, &model, "1", &[]);
    for f in [
        "model.json",
        "model.safetensors",
        "test_report.json",
        "best.safetensors",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("test_report.json")).unwrap())
            .unwrap();
    for k in [
        "map@100",
        "p@10",
        "chance_precision",
        "majority_map@100",
        "train_seconds",
    ] {
        assert!(
            report[k].as_f64().is_some(),
            "test_report.json lacks {k}: {report}"
        );
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["output"]["bits"], 16);
    assert_eq!(card["method"]["name"], "cxr-fusion-hash");

    // encode: codes of the test split and their ids, in the same order.
    let (npy, ids) = (tmp.path().join("test.npy"), tmp.path().join("test.csv"));
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
        "--out",
        s(&npy),
        "--ids-out",
        s(&ids),
    ]);
    let test_codes = codes(&npy);
    let id_rows: Vec<String> = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(id_rows[0], "path,labels,patient_id,split");
    assert_eq!(id_rows.len() - 1, test_codes.len());
    assert!(test_codes.iter().all(|c| c.len() == 2));

    // encode --precision bf16: the same codes but for bits whose value sits within bf16's
    // rounding of zero (docs/benchmarks.md measures 99.5% or more on real images).
    let bf16_npy = tmp.path().join("test_bf16.npy");
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
        "--out",
        s(&bf16_npy),
        "--ids-out",
        s(&ids),
        "--precision",
        "bf16",
    ]);
    let bf16_codes = codes(&bf16_npy);
    assert_eq!(bf16_codes.len(), test_codes.len());
    let differ: u32 = bf16_codes
        .iter()
        .flatten()
        .zip(test_codes.iter().flatten())
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    let bits = 8 * 2 * test_codes.len();
    assert!(
        (differ as f64) <= 0.05 * bits as f64,
        "bf16 codes differ from f32's in {differ} of {bits} bits"
    );

    // index build --model: the train split, encoded and ingested in one step.
    let store = tmp.path().join("archive.db");
    let out = ok(&[
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
    assert!(out.contains("indexed"), "{out}");

    // search --image: the query is encoded as `encode` encoded it.
    let first = id_rows[1].split(',').next().unwrap();
    let image = PathBuf::from(first);
    let explain = tmp.path().join("explain");
    let out = ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cxr",
        "--image",
        s(&image),
        "-k",
        "5",
        "--json",
        "--explain",
        s(&explain),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["query"]["code"],
        hex(&test_codes[0]),
        "search and encode disagree"
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        assert_eq!(r["patient_id"], "****", "ids are masked by default");
        assert!(r["distance"].as_f64().unwrap() <= 16.0);
    }
    let dist: Vec<f64> = results
        .iter()
        .map(|r| r["distance"].as_f64().unwrap())
        .collect();
    assert!(dist.windows(2).all(|w| w[0] <= w[1]), "{dist:?}");
    // The distance is the Hamming distance between the query code and the case's code.
    let train_npy = tmp.path().join("train.npy");
    let train_ids = tmp.path().join("train.csv");
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
        "--out",
        s(&train_npy),
        "--ids-out",
        s(&train_ids),
    ]);
    let train_codes = codes(&train_npy);
    let train_paths: Vec<String> = std::fs::read_to_string(&train_ids)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let top = results[0]["path"].as_str().unwrap();
    let row = train_paths.iter().position(|p| p == top).unwrap();
    let hamming: u32 = train_codes[row]
        .iter()
        .zip(&test_codes[0])
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(results[0]["distance"].as_f64().unwrap(), hamming as f64);
    assert!(explain.join("query.png").is_file());
    let overlays = std::fs::read_dir(&explain).unwrap().count();
    assert_eq!(overlays, 6, "query and five results");
    let crop = &v["query"]["crop_box"];
    assert!(
        crop["w"].as_u64().unwrap() >= 8 && crop["w"].as_u64().unwrap() <= 32,
        "{crop}"
    );

    // The crop's localisation score on the phantoms' masks and boxes.
    let out = ok(&[
        "bench",
        "crop",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(c["images"].as_u64().unwrap() > 0, "{c}");
    for k in [
        "centroid_hit_rate",
        "random_centroid_hit_rate",
        "lesion_fraction_in_box",
        "random_lesion_fraction_in_box",
        "box_area_fraction",
    ] {
        let x = c[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} {x}");
    }
    assert!(c["random_centroid_hit_rate"].as_f64().unwrap() > 0.0);

    // An RGB image given to this grey-film model is converted, not refused.
    let rgb = tmp.path().join("rgb.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]))
        .save(&rgb)
        .unwrap();
    ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cxr",
        "--image",
        s(&rgb),
        "-k",
        "3",
    ]);

    // A corrupt query image: a clear error naming it.
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cxr",
        "--image",
        s(&bad),
    ]);
    assert!(err.contains("bad.png"), "{err}");

    // Another model (other seed) may not add to this archive, nor encode its queries.
    let other = tmp.path().join("other");
    train_hash(&data, &other, "2", &[]);
    let err = fails(&[
        "index",
        "add",
        "--store",
        s(&store),
        "--name",
        "cxr",
        "--model",
        s(&other),
        "--data",
        s(&data),
        "--split",
        "test",
    ]);
    assert!(
        err.contains("`cxr`") && err.contains("must be encoded by the model that built"),
        "{err}"
    );
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cxr",
        "--image",
        s(&image),
        "--model-dir",
        s(&other),
    ]);
    assert!(
        err.contains("must be encoded by the model that built"),
        "{err}"
    );
    // The same model may add the test split.
    ok(&[
        "index",
        "add",
        "--store",
        s(&store),
        "--name",
        "cxr",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
    ]);

    // A model folder with an edited or missing model.json is refused by name.
    let card_path = model.join("model.json");
    let text = std::fs::read_to_string(&card_path).unwrap();
    std::fs::write(&card_path, text.replacen("\"bits\": 16", "\"bits\": 24", 1)).unwrap();
    let err = fails(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&npy),
        "--ids-out",
        s(&ids),
    ]);
    assert!(
        err.contains("model.json") && err.contains("edited"),
        "{err}"
    );
    std::fs::remove_file(&card_path).unwrap();
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cxr",
        "--image",
        s(&image),
    ]);
    assert!(
        err.contains("model.json") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn bad_training_input_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cxr");
    ok(&[
        "synth",
        "cxr",
        "--n",
        "24",
        "--size",
        "32",
        "--seed",
        "9",
        "--out",
        s(&data),
    ]);
    let out = tmp.path().join("out");
    let args = |bits: &'static str| -> Vec<String> {
        [
            "train",
            "hash",
            "--data",
            s(&data),
            "--arch",
            "densenet-tiny",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bits",
            bits,
            "--out",
            s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    for bits in ["12", "0", "264"] {
        let a = args(bits);
        let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains("multiple of 8"), "{err}");
    }
    assert!(!out.exists(), "nothing written for bad --bits");

    // --init weights of another architecture (full DenseNet-121 features vs the tiny one).
    let init = tmp.path().join("d121.safetensors");
    ok(&[
        "model",
        "summary",
        "--arch",
        "densenet121",
        "--classes",
        "0",
    ]);
    write_densenet121_features(&init);
    let mut a = args("16");
    a.extend(["--init".to_string(), s(&init).to_string()]);
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("d121.safetensors"), "{err}");
    assert!(!out.exists(), "nothing written for bad --init");
    // A file that is not safetensors at all.
    std::fs::write(&init, b"nope").unwrap();
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("d121.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}

/// A DenseNet-121 feature extractor's weights with torchvision names (random values).
fn write_densenet121_features(path: &Path) {
    use burn::prelude::*;
    let cfg = medret_models::Arch::DenseNet121.config(None);
    let net = cfg.init(&Device::flex());
    medret_models::save_torchvision(&net, &cfg, path).unwrap();
}

#[test]
fn fundus_descriptors_in_similar_cases_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fundus");
    ok(&[
        "synth",
        "fundus",
        "--n",
        "50",
        "--size",
        "64",
        "--seed",
        "3",
        "--out",
        s(&data),
    ]);
    let model = tmp.path().join("metric");
    ok(&[
        "train",
        "metric",
        "--data",
        s(&data),
        "--arch",
        "densenet-tiny",
        "--size",
        "64", // 2x2 maps: an attention map with something to show
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--lr",
        "0.003",
        "--dim",
        "24",
        "--binary-bits",
        "16",
        "--out",
        s(&model),
    ]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    // The default binarisation is ITQ, fitted on the training part's descriptors; the
    // Hamming index below checks that its codes are the ones the query gets.
    let learned = &card["method"]["binary_learned"];
    assert!(
        learned["method"].as_str().unwrap().starts_with("itq on "),
        "{learned}"
    );
    assert_eq!(learned["matrix"].as_array().unwrap().len(), 16 * 24);
    assert_eq!(learned["mean"].as_array().unwrap().len(), 24);
    assert_eq!(card["output"]["kind"], "descriptors");
    assert_eq!(card["output"]["dim"], 24);
    assert_eq!(card["method"]["name"], "fundus-metric");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("test_report.json")).unwrap())
            .unwrap();
    for k in [
        "map@10",
        "map@100",
        "ndcg@10",
        "p@10",
        "chance_precision",
        "majority_p@10",
    ] {
        assert!(
            report[k].as_f64().is_some(),
            "test_report.json lacks {k}: {report}"
        );
    }

    // encode writes float32 descriptors, unit rows.
    let (npy, ids) = (tmp.path().join("d.npy"), tmp.path().join("d.csv"));
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
        "--out",
        s(&npy),
        "--ids-out",
        s(&ids),
    ]);
    let (shape, descriptors) = medret_data::npy::read_f32_matrix(&npy).unwrap();
    assert_eq!(shape[1], 24);
    for row in descriptors.chunks(24) {
        let n: f32 = row.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }

    // The descriptor archive answers an image query by cosine distance.
    let store = tmp.path().join("fundus.db");
    ok(&[
        "index",
        "build",
        "--store",
        s(&store),
        "--name",
        "dr",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
    ]);
    let first = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let explain = tmp.path().join("explain");
    let out = ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr",
        "--image",
        &first,
        "-k",
        "4",
        "--json",
        "--explain",
        s(&explain),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for r in results {
        assert!(r["grade"].as_u64().is_some(), "{r}");
        let d = r["distance"].as_f64().unwrap();
        assert!((0.0..=2.0).contains(&d), "cosine distance {d}");
    }
    assert!(explain.join("query.png").is_file());

    // αQE and flip TTA at search time, against references computed here from `encode`'s
    // descriptors and from a mirrored image file.
    let query_in = |model: &str, k: &str, args: &[&str]| -> (Vec<f32>, serde_json::Value) {
        let mut all = vec![
            "search",
            "--store",
            s(&store),
            "--model",
            model,
            "-k",
            k,
            "--json",
        ];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&ok(&all)).unwrap();
        let hex = v["query"]["code"].as_str().unwrap().to_string();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let floats = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (floats, v)
    };
    let query_vector = |args: &[&str]| query_in("dr", "3", args);
    let (train_npy, train_ids) = (tmp.path().join("t.npy"), tmp.path().join("t.csv"));
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
        "--out",
        s(&train_npy),
        "--ids-out",
        s(&train_ids),
    ]);
    let (_, train_desc) = medret_data::npy::read_f32_matrix(&train_npy).unwrap();
    let train_rows: Vec<&[f32]> = train_desc.chunks(24).collect();
    let train_paths: Vec<String> = std::fs::read_to_string(&train_ids)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    let norm = |a: &[f32]| dot(a, a).sqrt();
    let cos = |a: &[f32], b: &[f32]| dot(a, b) / (norm(a) * norm(b));
    let (plain, _) = query_vector(&["--image", &first]);
    assert!(
        plain
            .iter()
            .zip(&descriptors[..24])
            .all(|(a, b)| (a - b).abs() < 1e-5),
        "search and encode disagree"
    );
    let mut order: Vec<usize> = (0..train_rows.len()).collect();
    order.sort_by(|&a, &b| cos(&plain, train_rows[b]).total_cmp(&cos(&plain, train_rows[a])));
    // Radenović et al.: q + sum of w_i d_i / |d_i|, w_i = max(0, cos)^3, rescaled to |q|.
    let mut sum: Vec<f64> = plain.iter().map(|&x| x as f64 / norm(&plain)).collect();
    for &i in &order[..2] {
        let w = cos(&plain, train_rows[i]).max(0.0).powi(3);
        for (acc, &x) in sum.iter_mut().zip(train_rows[i]) {
            *acc += w * x as f64 / norm(train_rows[i]);
        }
    }
    let scale = norm(&plain) / sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (expanded, answer) = query_vector(&["--image", &first, "--qe", "2"]);
    for (got, want) in expanded.iter().zip(&sum) {
        assert!(
            (*got as f64 - want * scale).abs() < 1e-5,
            "{expanded:?} vs {sum:?}"
        );
    }
    assert!(
        expanded
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "not expanded"
    );
    // The archive was searched with the expanded vector.
    let top = &answer["results"][0];
    let row = train_paths
        .iter()
        .position(|p| p == top["path"].as_str().unwrap())
        .unwrap();
    let d = top["distance"].as_f64().unwrap();
    assert!(
        (d - (1.0 - cos(&expanded, train_rows[row]))).abs() < 1e-4,
        "{d}"
    );
    // Flip TTA, an archive-wide choice: the query is the mean of the image's descriptor
    // and its mirror's, and so is every stored case (the nearest is at the distance
    // between those two means).
    let mirror_of = |p: &str, name: &str| -> Vec<f32> {
        let m = tmp.path().join(name);
        image::open(p).unwrap().fliph().save(&m).unwrap();
        query_vector(&["--image", s(&m)]).0
    };
    let mirrored = mirror_of(&first, "mirror.png");
    ok(&[
        "index",
        "build",
        "--store",
        s(&store),
        "--name",
        "dr-tta",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
        "--flip-tta",
    ]);
    let (tta, answer) = query_in("dr-tta", "3", &["--image", &first]);
    for ((t, a), b) in tta.iter().zip(&plain).zip(&mirrored) {
        assert!((t - 0.5 * (a + b)).abs() < 1e-5, "{tta:?}");
    }
    let top = &answer["results"][0];
    let path = top["path"].as_str().unwrap();
    let row = train_paths.iter().position(|p| p == path).unwrap();
    let other = mirror_of(path, "mirror-top.png");
    let stored: Vec<f32> = train_rows[row]
        .iter()
        .zip(&other)
        .map(|(a, b)| 0.5 * (a + b))
        .collect();
    let d = top["distance"].as_f64().unwrap();
    assert!((d - (1.0 - cos(&tta, &stored))).abs() < 1e-4, "{d}");
    // `index add` follows the archive: the query image itself, added, is found at 0.
    ok(&[
        "index",
        "add",
        "--store",
        s(&store),
        "--name",
        "dr-tta",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
    ]);
    let (_, answer) = query_in("dr-tta", "1", &["--image", &first]);
    assert!(
        answer["results"][0]["distance"].as_f64().unwrap() < 1e-5,
        "{answer}"
    );
    let err = fails(&[
        "index",
        "add",
        "--store",
        s(&store),
        "--name",
        "dr",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
        "--flip-tta",
    ]);
    assert!(err.contains("without --flip-tta"), "{err}");
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr",
        "--image",
        &first,
        "--qe",
        "51",
    ]);
    assert!(err.contains("at most 50"), "{err}");
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr",
        "--case",
        "x",
        "--qe",
        "2",
    ]);
    assert!(err.contains("image queries"), "{err}");

    // A descriptor model explains twice: where the attention falls, and the Grad-CAM of
    // the similarity (the query's to its results, each result's to the query).
    let written: Vec<&str> = v["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let cams: Vec<&&str> = written
        .iter()
        .filter(|p| p.ends_with("-gradcam.png"))
        .collect();
    assert_eq!(cams.len(), 5, "{written:?}");
    assert!(explain.join("query-gradcam.png").is_file());
    for p in &written {
        let img = image::open(p).unwrap().to_rgb8();
        assert!(img.width() >= 384, "{p}: {}", img.width());
    }
    // Where the attention falls, on the phantoms' lesion masks.
    let out = ok(&[
        "bench",
        "saliency",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "all",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["images"].as_u64().unwrap() > 0, "{v}");
    for k in [
        "pointing_hit_rate",
        "energy_in_lesions",
        "lesion_area_share",
    ] {
        let x = v[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} {x}");
    }
    assert!(v["lesion_area_share"].as_f64().unwrap() > 0.0);
    // The same model's binarised descriptors in a Hamming index: the query's code is the
    // row `encode --binary` wrote, and distances are Hamming distances.
    ok(&[
        "index",
        "build",
        "--store",
        s(&store),
        "--name",
        "dr-codes",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
        "--binary",
    ]);
    let codes_npy = tmp.path().join("c.npy");
    ok(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "test",
        "--binary",
        "--out",
        s(&codes_npy),
        "--ids-out",
        s(&ids),
    ]);
    let codes = codes(&codes_npy);
    assert_eq!(codes[0].len(), 2);
    // Each code is the signs of (descriptor - mean) through the card's ITQ matrix,
    // recomputed here from `encode`'s descriptors; only bits near zero may differ (the
    // two computations sum in different orders).
    let mean: Vec<f64> = learned["mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let matrix: Vec<f64> = learned["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (code, desc) in codes.iter().zip(descriptors.chunks(24)) {
        for (bit, row) in matrix.chunks(24).enumerate() {
            let h: f64 = row
                .iter()
                .zip(desc)
                .zip(&mean)
                .map(|((a, x), m)| a * (*x as f64 - m))
                .sum();
            let got = code[bit / 8] >> (bit % 8) & 1 == 1;
            assert!(
                got == (h >= 0.0) || h.abs() < 1e-5,
                "bit {bit}: projection {h}, code bit {got}"
            );
        }
    }
    let out = ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr-codes",
        "--image",
        &first,
        "-k",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for r in v["results"].as_array().unwrap() {
        let d = r["distance"].as_f64().unwrap();
        assert!(d.fract() == 0.0 && d <= 16.0, "Hamming distance {d}");
    }
    let out = ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr-codes",
        "--image",
        &first,
        "--radius",
        "16",
        "--json",
    ]);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        all["results"].as_array().unwrap().len() >= 4,
        "radius 16 holds every case"
    );
    let out = ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr-codes",
        "--image",
        &first,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["query"]["code"],
        hex(&codes[0]),
        "search and encode --binary disagree"
    );
    // Codes alone hold nothing to expand: a clear error.
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr-codes",
        "--image",
        &first,
        "--qe",
        "2",
    ]);
    assert!(
        err.contains("continuous vectors") && err.contains("dr-codes"),
        "{err}"
    );
    // Radius search is for codes only.
    let err = fails(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "dr",
        "--image",
        &first,
        "--radius",
        "2",
    ]);
    assert!(err.contains("binary codes"), "{err}");
}
