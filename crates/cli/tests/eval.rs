//! `medret eval` on a tiny chest model: report.json holds every figure for every k asked,
//! with intervals, reference levels, baselines, timings and the model card; report.html
//! holds every section, self-contained; a tampered model folder and an empty split stop
//! with a clear message.

mod common;

use common::{fails, ok, s, synth};
use medret_data::labels::NihLabelSet;
use medret_data::{ReadOptions, Record, Split};

/// The metrics at depth k, by the conventions of docs/evaluation.md, written out here
/// independently of medret-eval: `AP@k = (1/R_k) sum_{i<=k} P(i) rel(i)` (0 when no hit),
/// `P@k = hits / k`, NDCG@k with binary gains.
fn ap_at(rel: &[bool], k: usize) -> f64 {
    let (mut hits, mut sum) = (0.0, 0.0);
    for (i, _) in rel.iter().enumerate().take(k).filter(|(_, r)| **r) {
        hits += 1.0;
        sum += hits / (i + 1) as f64;
    }
    if hits == 0.0 { 0.0 } else { sum / hits }
}

fn p_at(rel: &[bool], k: usize) -> f64 {
    rel.iter().take(k).filter(|&&r| r).count() as f64 / k.min(rel.len()) as f64
}

fn ndcg_at(rel: &[bool], k: usize) -> f64 {
    let dcg = |n: usize, hit: &dyn Fn(usize) -> bool| -> f64 {
        (0..n.min(k))
            .filter(|&i| hit(i))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum()
    };
    let total = rel.iter().filter(|&&r| r).count();
    let ideal = dcg(total, &|_| true);
    if ideal == 0.0 {
        0.0
    } else {
        dcg(rel.len(), &|i| rel[i]) / ideal
    }
}

/// `map@k`, `p@k`, `ndcg@k` of one query's ranked relevance.
fn metric(name: &str, rel: &[bool]) -> f64 {
    let (m, k) = name.split_once('@').unwrap();
    let k: usize = k.parse().unwrap();
    match m {
        "map" => ap_at(rel, k),
        "p" => p_at(rel, k),
        "ndcg" => ndcg_at(rel, k),
        _ => unreachable!("{name}"),
    }
}

/// A split's records with a label the model knows, and their label indices (the card's
/// class order), in dataset order: what `medret eval` ranks.
fn labelled(
    ds: &medret_data::Dataset,
    split: Split,
    classes: &[String],
) -> (Vec<Record>, Vec<Vec<usize>>) {
    ds.records
        .iter()
        .filter(|r| r.split == Some(split))
        .filter_map(|r| {
            let l: Vec<usize> = r
                .labels
                .iter()
                .filter_map(|x| classes.iter().position(|c| c == x))
                .collect();
            (!l.is_empty()).then(|| (r.clone(), l))
        })
        .unzip()
}

fn shares(a: &[usize], b: &[usize]) -> bool {
    a.iter().any(|x| b.contains(x))
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        got.is_finite() && (got - want).abs() <= tol,
        "{what}: report {got}, expected {want} (tolerance {tol})"
    );
}

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
    let names = [
        "map@5", "p@5", "ndcg@5", "map@20", "p@20", "ndcg@20", "p@h<=2",
    ];

    // The splits as eval reads them (test queries, train database, NIH 14 labels), to
    // recompute the reference levels and a baseline independently of medret-eval.
    let ds = medret_data::open_dataset(
        &data,
        None,
        &ReadOptions {
            nih_labels: Some(NihLabelSet::ChestXray14),
            ..Default::default()
        },
    )
    .unwrap();
    let classes: Vec<String> =
        serde_json::from_value(r["model_card"]["class_names"].clone()).unwrap();
    let (queries, qt) = labelled(&ds, Split::Test, &classes);
    let (database, dt) = labelled(&ds, Split::Train, &classes);
    assert_eq!(r["scores"]["queries"], queries.len());
    assert_eq!(r["scores"]["database"], database.len());
    let n = dt.len();
    // Each query's relevant fraction of the database: a random ranking's expected P@k.
    let frac: Vec<f64> = qt
        .iter()
        .map(|q| dt.iter().filter(|d| shares(q, d)).count() as f64 / n as f64)
        .collect();
    let nq = qt.len() as f64;
    let mean_frac = frac.iter().sum::<f64>() / nq;
    let answerable: Vec<f64> = frac.iter().copied().filter(|&f| f > 0.0).collect();
    let answerable_frac = answerable.iter().sum::<f64>() / answerable.len() as f64;

    // Always-majority: the database items carrying the most frequent label first (ties to
    // the smaller label index), then the rest, each in database order; the same ranking
    // for every query, so every figure is exact.
    let mut counts = vec![0usize; classes.len()];
    dt.iter().flatten().for_each(|&l| counts[l] += 1);
    let top = counts.iter().max().unwrap();
    let m = counts.iter().position(|c| c == top).unwrap();
    let mut majority: Vec<usize> = (0..n).filter(|&i| dt[i].contains(&m)).collect();
    majority.extend((0..n).filter(|&i| !dt[i].contains(&m)));
    for k in &names[..6] {
        let want = qt
            .iter()
            .map(|q| {
                let rel: Vec<bool> = majority.iter().map(|&i| shares(q, &dt[i])).collect();
                metric(k, &rel)
            })
            .sum::<f64>()
            / nq;
        close(
            &format!("majority {k}"),
            r["scores"]["majority"][k].as_f64().unwrap(),
            want,
            1e-9,
        );
    }

    // Chance: the mean over `rankings` seeded shuffles, each query its own. Its
    // expectation is the relevant fraction for P@k (exactly) and, for AP@k and NDCG@k, is
    // estimated here from 2000 shuffles per query; the tolerance is 4 standard errors of
    // the report's `rankings`-shuffle mean (from the per-query variances) plus 4 of this
    // estimate's (0.02 to 0.12 here), so a seeded draw fails only ~1 in 10^4, while a level
    // off by more (not averaged over the rankings, another metric's) fails.
    let rankings: f64 = r["protocol"]["chance"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const DRAWS: usize = 2000;
    for k in &names[..6] {
        let (mut want, mut var_report, mut var_mc) = (0.0, 0.0, 0.0);
        for (qi, q) in qt.iter().enumerate() {
            let (mut sum, mut sq) = (0.0, 0.0);
            let mut order: Vec<usize> = (0..n).collect();
            for _ in 0..DRAWS {
                for i in (1..n).rev() {
                    order.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                let rel: Vec<bool> = order.iter().map(|&i| shares(q, &dt[i])).collect();
                let v = metric(k, &rel);
                (sum, sq) = (sum + v, sq + v * v);
            }
            let mean = sum / DRAWS as f64;
            let var = (sq / DRAWS as f64 - mean * mean).max(0.0);
            if let Some(kk) = k.strip_prefix("p@") {
                // The exact expectation and hypergeometric variance.
                let kk = kk.parse::<f64>().unwrap();
                let p = frac[qi];
                want += p;
                var_report += p * (1.0 - p) / kk * (n as f64 - kk) / (n as f64 - 1.0);
                // A check on this shuffle (7 standard errors of its mean).
                close(&format!("shuffled {k}, query {qi}"), mean, p, 0.02);
            } else {
                want += mean;
                var_report += var;
                var_mc += var;
            }
        }
        want /= nq;
        let se = (var_report / rankings).sqrt() / nq + (var_mc / DRAWS as f64).sqrt() / nq;
        close(
            &format!("chance {k}"),
            r["scores"]["chance"][k].as_f64().unwrap(),
            want,
            4.0 * se,
        );
    }
    // P@H<=2 of a random ranking: no ball, the whole database, so the relevant fraction.
    close(
        "chance p@h<=2",
        r["scores"]["chance"]["p@h<=2"].as_f64().unwrap(),
        mean_frac,
        1e-12,
    );

    // The model's codes and every baseline's: the PR curve over radii stops at the code
    // length (radii 0..=16); recall grows with the radius and the whole ball (radius 16)
    // holds every relevant case, so its recall is exactly 1 and its precision the relevant
    // fraction, over the queries with a relevant case; P@H<=2 is the curve's radius-2
    // precision spread over all queries (those without a relevant case score 0).
    // Baselines share the model's splits, so their reference levels are the model's.
    let mut all = vec![("model", &r["scores"])];
    for b in [
        "raw-pixel LSH",
        "raw-pixel ITQ",
        "random-init feature LSH",
        "random-init feature ITQ",
    ] {
        assert!(r["baselines"][b].is_object(), "baseline {b} missing");
        all.push((b, &r["baselines"][b]));
    }
    for (who, sc) in &all {
        assert_eq!(sc["pr_curve_queries"], answerable.len(), "{who}");
        let pr = sc["pr_curve"].as_array().unwrap();
        assert_eq!(pr.len(), 17, "{who}");
        assert_eq!(pr[16]["at"], 16, "{who}");
        let recall: Vec<f64> = pr.iter().map(|p| p["recall"].as_f64().unwrap()).collect();
        let precision: Vec<f64> = pr
            .iter()
            .map(|p| p["precision"].as_f64().unwrap())
            .collect();
        assert!(
            recall
                .iter()
                .chain(&precision)
                .all(|v| (0.0..=1.0).contains(v)),
            "{who}: {pr:?}"
        );
        assert!(
            recall.windows(2).all(|w| w[0] <= w[1] + 1e-12),
            "{who}: recall grows with the radius: {recall:?}"
        );
        close(
            &format!("{who}: recall of the whole ball"),
            recall[16],
            1.0,
            1e-12,
        );
        close(
            &format!("{who}: precision of the whole ball"),
            precision[16],
            answerable_frac,
            1e-12,
        );
        for k in names {
            let v = sc["metrics"][k]
                .as_f64()
                .unwrap_or_else(|| panic!("{who} {k} missing"));
            assert!((0.0..=1.0).contains(&v), "{who} {k} {v}");
        }
        close(
            &format!("{who}: p@h<=2 against the curve at radius 2"),
            sc["metrics"]["p@h<=2"].as_f64().unwrap() * nq,
            precision[2] * answerable.len() as f64,
            1e-9,
        );
        for level in ["chance", "majority"] {
            assert_eq!(sc[level], r["scores"][level], "{who}: {level}");
        }
    }
    // Raw-pixel LSH recomputed: 32 x 32 grey thumbnails, sign random projections with
    // eval's seed (0) at the model's 16 bits, then ranked by Hamming distance (ties by
    // database index) and scored here.
    let thumbs = |rs: &[Record]| medret_data::transform::grey_thumbnails(rs, 32, 0).unwrap();
    let (pd, pq) = (thumbs(&database), thumbs(&queries));
    let dcodes = medret_eval::baseline::lsh_codes(&pd, &pd, 16, 0);
    let qcodes = medret_eval::baseline::lsh_codes(&pd, &pq, 16, 0);
    let lsh = &r["baselines"]["raw-pixel LSH"]["metrics"];
    let mut sums = vec![0.0; names.len()];
    // The per-query values that paired differences against the baseline resample, in
    // query order.
    let per_query = &r["baseline_per_query"]["raw-pixel LSH"];
    for (qi, (q, c)) in qt.iter().zip(&qcodes).enumerate() {
        let dist: Vec<u32> = dcodes
            .iter()
            .map(|d| c.iter().zip(d).map(|(a, b)| (a ^ b).count_ones()).sum())
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| dist[i]);
        let rel: Vec<bool> = order.iter().map(|&i| shares(q, &dt[i])).collect();
        for (s, k) in sums.iter_mut().zip(&names[..6]) {
            let m = metric(k, &rel);
            *s += m;
            close(
                &format!("raw-pixel LSH {k}, query {qi}"),
                per_query[k][qi].as_f64().unwrap(),
                m,
                1e-9,
            );
        }
        let ball = order.iter().take_while(|&&i| dist[i] <= 2).count();
        if ball > 0 {
            sums[6] += rel[..ball].iter().filter(|&&x| x).count() as f64 / ball as f64;
        }
    }
    for (k, s) in names.iter().zip(&sums) {
        close(
            &format!("raw-pixel LSH {k}"),
            lsh[k].as_f64().unwrap(),
            s / nq,
            1e-9,
        );
    }

    assert!(r["timing"]["encode_images_per_second"].as_f64().unwrap() > 0.0);
    // An exact scan of 45 codes takes microseconds (p50 about 0.001 ms, p99 0.01 ms):
    // a latency not measured (null or 0), percentiles swapped, or a second or more is
    // wrong.
    let (p50, p99) = (
        r["timing"]["query_latency_ms_p50"].as_f64().unwrap(),
        r["timing"]["query_latency_ms_p99"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 < 1000.0,
        "latency p50 {p50} ms, p99 {p99} ms"
    );
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

    // Validation queries: the model's own validation part (its seed 1, 15% of patients)
    // against the rest of the training split, every labelled training image exactly
    // once; αQE, DBA and relevance-first ranking are recorded in the protocol.
    let val = tmp.path().join("val");
    ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--query-split",
        "val",
        "-k",
        "5",
        "--gallery",
        "0",
        "--resamples",
        "50",
        "--qe",
        "2",
        "--dba",
        "1",
        "--relevance-first",
        "classifier",
        "--flip-tta",
        "--out",
        s(&val),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(val.join("report.json")).unwrap()).unwrap();
    let (train_part, val_part) = medret_data::record::split_train_val(&ds.records, 0.15, 1);
    let known = |rs: &[Record]| {
        rs.iter()
            .filter(|r| r.labels.iter().any(|l| classes.contains(l)))
            .count()
    };
    assert!(known(&val_part) > 0 && known(&train_part) > 0);
    assert_eq!(v["scores"]["queries"], known(&val_part));
    assert_eq!(v["scores"]["database"], known(&train_part));
    assert_eq!(known(&val_part) + known(&train_part), database.len());
    let protocol = |k: &str| v["protocol"][k].as_str().unwrap_or("").to_string();
    assert!(
        protocol("expansion").contains("DBA n=1") && protocol("expansion").contains("αQE n=2"),
        "{}",
        v["protocol"]
    );
    assert!(protocol("relevance_first").contains("classifier"));
    assert_eq!(v["protocol"]["flip_tta"], "both");
    assert!(protocol("queries").starts_with("validation part"));
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--query-split",
        "val",
        "--database-split",
        "test",
        "--out",
        s(&val),
    ]);
    assert!(e.contains("--database-split train"), "{e}");

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
