//! medret's metrics against an independent implementation: `tools/check_metrics.py`
//! (numpy) computed `fixtures/*-expected.json` from the `medret encode` outputs beside
//! them (48-bit codes of the chest model on `chest_xray_nih64`, shares-label relevance;
//! 68-d descriptors of the fundus model on `fundus_idrid`, same-grade relevance and
//! graded NDCG), test split against training split. Both must agree to 1e-6.
//!
//! To regenerate after changing a convention on purpose:
//! `tools/check_metrics.py --queries Q.npy --query-ids Q.csv --database D.npy
//! --database-ids D.csv --relevance R [--bits 48] -k 1,10,100 > fixtures/NAME-expected.json`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medret_eval::codes::{cosine, pack_bytes};
use medret_eval::ranking::{rank_hamming, rank_similarity};
use medret_eval::report::{Sampling, score};
use medret_eval::{Relevance, Truth};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The labels column of an ids CSV, `|`-separated.
fn labels(name: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let labels = l.split(',').nth(1).unwrap();
            labels
                .split('|')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

fn expected(name: &str) -> BTreeMap<String, f64> {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn check(got: &BTreeMap<String, f64>, want: &BTreeMap<String, f64>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same metrics"
    );
    for (k, w) in want {
        assert!(
            (got[k] - w).abs() < 1e-6,
            "{k}: medret {} numpy {w}",
            got[k]
        );
    }
}

#[test]
fn codes_shares_label_match_numpy() {
    let (qs, q) = medret_data::npy::read_u8_matrix(&fixture("nih64-test.npy")).unwrap();
    let (ds, d) = medret_data::npy::read_u8_matrix(&fixture("nih64-train.npy")).unwrap();
    let qc: Vec<Vec<u64>> = q.chunks(qs[1]).map(pack_bytes).collect();
    let dc: Vec<Vec<u64>> = d.chunks(ds[1]).map(pack_bytes).collect();
    let (ql, dl) = (labels("nih64-test.csv"), labels("nih64-train.csv"));
    let mut names: Vec<String> = ql.iter().chain(&dl).flatten().cloned().collect();
    names.sort();
    names.dedup();
    let truth = |ls: &[Vec<String>]| -> Vec<Truth> {
        ls.iter()
            .map(|l| {
                Truth::labels(
                    l.iter()
                        .map(|x| names.binary_search(x).unwrap() as u32)
                        .collect(),
                )
            })
            .collect()
    };
    let (qt, dt) = (truth(&ql), truth(&dl));
    let lists: Vec<_> = qc.iter().map(|c| rank_hamming(c, &dc, None)).collect();
    let (s, _) = score(
        &lists,
        &qt,
        &dt,
        Relevance::SharesLabel,
        &[1, 10, 100],
        Some(48),
        &names,
        Sampling::default(),
    );
    check(&s.metrics, &expected("nih64-expected.json"));
    assert_eq!(s.pr_curve.len(), 49, "radii 0..=48");
}

#[test]
fn descriptors_same_grade_match_numpy() {
    let (qs, q) = medret_data::npy::read_f32_matrix(&fixture("idrid-test.npy")).unwrap();
    let (_, d) = medret_data::npy::read_f32_matrix(&fixture("idrid-train.npy")).unwrap();
    let dim = qs[1];
    let db: Vec<&[f32]> = d.chunks(dim).collect();
    // Ungraded images (no label) are relevant to nothing, with gain 0, in both.
    let grade = |l: &Vec<String>| -> Truth {
        match l.first() {
            Some(x) => Truth::grade(
                x.trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap(),
            ),
            None => Truth::labels(Vec::new()),
        }
    };
    let qt: Vec<Truth> = labels("idrid-test.csv").iter().map(grade).collect();
    let dt: Vec<Truth> = labels("idrid-train.csv").iter().map(grade).collect();
    let lists: Vec<_> = q
        .chunks(dim)
        .map(|v| {
            let sims: Vec<f32> = db.iter().map(|x| cosine(v, x)).collect();
            rank_similarity(&sims, None)
        })
        .collect();
    let (s, _) = score(
        &lists,
        &qt,
        &dt,
        Relevance::SameGrade,
        &[1, 10, 100],
        None,
        &[],
        Sampling::default(),
    );
    check(&s.metrics, &expected("idrid-expected.json"));
    assert_eq!(s.pr_over, "rank");
}
