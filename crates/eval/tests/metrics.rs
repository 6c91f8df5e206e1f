//! Metrics against cases worked out by hand, and properties.

use medret_eval::codes::{cosine, hamming, pack_bits, pack_bytes, pack_signs};
use medret_eval::metrics::*;
use medret_eval::ranking::{rank_hamming, rank_similarity};
use medret_eval::{HammingSet, Relevance, Truth, evaluate_cosine, evaluate_hamming};
use proptest::prelude::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {
        assert!(
            close($a, $b),
            "{} = {}, expected {}",
            stringify!($a),
            $a,
            $b
        )
    };
}

#[test]
fn codes_pack_and_hamming_by_hand() {
    // Bits 0, 1, 3 set: 0b1011 = 11; bits 1, 2: 0b0110 = 6. XOR 0b1101: 3 bits.
    let a = pack_bits(&[true, true, false, true]);
    let b = pack_signs(&[-1.0, 0.5, 2.0, 0.0]);
    assert_eq!(a, vec![11]);
    assert_eq!(b, vec![6]);
    assert_eq!(hamming(&a, &b), 3);
    // 72 bits span two words; bit 70 lives in word 1, bit 6.
    let mut bits = vec![false; 72];
    bits[70] = true;
    assert_eq!(pack_bits(&bits), vec![0, 1 << 6]);
    // Little-endian bytes: byte 0 = 0x01 (bit 0), byte 8 = 0x80 (bit 71).
    let mut bytes = vec![0u8; 9];
    bytes[0] = 1;
    bytes[8] = 0x80;
    assert_eq!(pack_bytes(&bytes), vec![1, 1 << 7]);
    assert_eq!(hamming(&pack_bytes(&bytes), &[0, 0]), 2);
    assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
}

#[test]
fn ranking_breaks_ties_by_database_index() {
    let q = vec![0b0000u64];
    let db = vec![
        vec![0b0011],
        vec![0b0001],
        vec![0b1000],
        vec![0b0000],
        vec![0b0110],
    ];
    let r = rank_hamming(&q, &db, None);
    let order: Vec<usize> = r.iter().map(|x| x.index).collect();
    let dist: Vec<f64> = r.iter().map(|x| x.distance).collect();
    assert_eq!(order, vec![3, 1, 2, 0, 4]);
    assert_eq!(dist, vec![0.0, 1.0, 1.0, 2.0, 2.0]);
    let r = rank_hamming(&q, &db, Some(3));
    assert_eq!(
        r.iter().map(|x| x.index).collect::<Vec<_>>(),
        vec![1, 2, 0, 4]
    );
    let s = rank_similarity(&[0.1, 0.9, 0.5, 0.9], None);
    assert_eq!(
        s.iter().map(|x| x.index).collect::<Vec<_>>(),
        vec![1, 3, 2, 0]
    );
}

#[test]
fn ap_precision_recall_by_hand() {
    // Relevant at ranks 1, 3 and 6 of 6.
    let rel = [true, false, true, false, false, true];
    // AP@all = (1/1 + 2/3 + 3/6) / 3 = 0.722222...
    assert_close!(average_precision(&rel, None), (1.0 + 2.0 / 3.0 + 0.5) / 3.0);
    // AP@3: two relevant in the top 3: (1 + 2/3) / 2.
    assert_close!(average_precision(&rel, Some(3)), (1.0 + 2.0 / 3.0) / 2.0);
    // AP@2: one relevant in the top 2: 1/1.
    assert_close!(average_precision(&rel, Some(2)), 1.0);
    assert_close!(average_precision(&[false, false], None), 0.0);
    assert_close!(precision_at(&rel, 5), 2.0 / 5.0);
    assert_close!(precision_at(&rel, 10), 3.0 / 6.0);
    assert_close!(recall_at(&rel, 5, 3), 2.0 / 3.0);
    assert_close!(recall_at(&rel, 5, 0), 0.0);
}

#[test]
fn ndcg_by_hand() {
    // Gains 2, 0, 1, 2. DCG@3 = 2/log2(2) + 0 + 1/log2(4) = 2.5.
    // Ideal 2, 2, 1: IDCG@3 = 2 + 2/log2(3) + 1/2.
    let g = [2.0, 0.0, 1.0, 2.0];
    let idcg = 2.0 + 2.0 / 3f64.log2() + 0.5;
    assert_close!(ndcg_at(&g, 3), 2.5 / idcg);
    assert_close!(ndcg_at(&[0.0, 0.0], 2), 0.0);
    assert_close!(ndcg_at(&[2.0, 1.0, 0.0], 3), 1.0);
}

#[test]
fn hamming_radius_precision_and_pr_curve_by_hand() {
    let dist = [0.0, 1.0, 2.0, 2.0, 3.0];
    let rel = [true, false, true, false, true];
    // Ball r <= 2 holds 4 items, 2 relevant.
    assert_close!(precision_within_radius(&dist, &rel, 2.0), 0.5);
    assert_close!(precision_within_radius(&[3.0], &[true], 2.0), 0.0);
    let pr = pr_over_radii(&dist, &rel, 3);
    assert_eq!(pr.len(), 4);
    assert!(close(pr[0].0, 1.0) && close(pr[0].1, 1.0 / 3.0));
    assert!(close(pr[1].0, 0.5) && close(pr[1].1, 1.0 / 3.0));
    assert!(close(pr[2].0, 0.5) && close(pr[2].1, 2.0 / 3.0));
    assert!(close(pr[3].0, 0.6) && close(pr[3].1, 1.0));
}

#[test]
fn expected_ap_over_ties_by_hand() {
    // Tie group at ranks 2-3 with one relevant item: AP is 1/2 or 1/3, mean 5/12.
    assert_close!(
        expected_average_precision_ties(&[0.0, 1.0, 1.0], &[false, true, false]),
        5.0 / 12.0
    );
    // All three tied, two relevant: orders give AP 1, 5/6, 7/12; mean 29/36.
    assert_close!(
        expected_average_precision_ties(&[0.0, 0.0, 0.0], &[true, true, false]),
        29.0 / 36.0
    );
    // No ties: equals AP.
    let rel = [true, false, true];
    assert_close!(
        expected_average_precision_ties(&[0.0, 1.0, 2.0], &rel),
        average_precision(&rel, None)
    );
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

proptest! {
    #[test]
    fn expected_ap_matches_enumerating_every_tie_order(d in proptest::collection::vec(0u8..3, 1..7), r in proptest::collection::vec(any::<bool>(), 7)) {
        let mut items: Vec<(f64, bool)> = d.iter().zip(&r).map(|(&d, &r)| (d as f64, r)).collect();
        items.sort_by(|a, b| a.0.total_cmp(&b.0));
        let dist: Vec<f64> = items.iter().map(|x| x.0).collect();
        let rel: Vec<bool> = items.iter().map(|x| x.1).collect();
        // Average AP over every permutation that respects the distance order.
        let (mut sum, mut count) = (0.0, 0usize);
        for p in permutations(items.len()) {
            let ranked: Vec<(f64, bool)> = p.iter().map(|&i| items[i]).collect();
            if ranked.windows(2).all(|w| w[0].0 <= w[1].0) {
                let rr: Vec<bool> = ranked.iter().map(|x| x.1).collect();
                sum += average_precision(&rr, None);
                count += 1;
            }
        }
        prop_assert!((expected_average_precision_ties(&dist, &rel) - sum / count as f64).abs() < 1e-9);
    }

    #[test]
    fn perfect_ranking_scores_one_and_reversed_scores_the_minimum(n in 2usize..60, frac in 0.05f64..0.95) {
        let r = ((n as f64 * frac).ceil() as usize).clamp(1, n - 1);
        let perfect: Vec<bool> = (0..n).map(|i| i < r).collect();
        prop_assert!(close(average_precision(&perfect, None), 1.0));
        let gains: Vec<f64> = perfect.iter().map(|&x| f64::from(u8::from(x))).collect();
        prop_assert!(close(ndcg_at(&gains, n), 1.0));
        let reversed: Vec<bool> = perfect.iter().rev().copied().collect();
        // Relevant items at ranks n-r+1..n: AP = (1/r) sum_i i / (n - r + i).
        let min = (1..=r).map(|i| i as f64 / (n - r + i) as f64).sum::<f64>() / r as f64;
        prop_assert!(close(average_precision(&reversed, None), min));
    }

    #[test]
    fn permuting_the_database_without_ties_keeps_map(seed in 0u64..1000) {
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let db: Vec<Vec<f32>> = (0..30).map(|_| (0..8).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let dt: Vec<Truth> = (0..30).map(|_| Truth::labels(vec![rng.random_range(0..3)])).collect();
        let q: Vec<Vec<f32>> = (0..5).map(|_| (0..8).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let qt: Vec<Truth> = (0..5).map(|_| Truth::labels(vec![rng.random_range(0..3)])).collect();
        let a = evaluate_cosine(&q, &qt, &db, &dt, Relevance::SharesLabel, false);
        let mut perm: Vec<usize> = (0..30).collect();
        perm.shuffle(&mut rng);
        let db2: Vec<Vec<f32>> = perm.iter().map(|&i| db[i].clone()).collect();
        let dt2: Vec<Truth> = perm.iter().map(|&i| dt[i].clone()).collect();
        let b = evaluate_cosine(&q, &qt, &db2, &dt2, Relevance::SharesLabel, false);
        prop_assert!(close(a.map["all"], b.map["all"]));
        prop_assert!(close(a.ndcg["10"], b.ndcg["10"]));
    }
}

#[test]
fn relevance_rules_and_graded_gain() {
    let q = Truth::labels(vec![3, 1]);
    assert!(Relevance::SharesLabel.is_relevant(&q, &Truth::labels(vec![1, 7])));
    assert!(!Relevance::SharesLabel.is_relevant(&q, &Truth::labels(vec![2])));
    assert!(Relevance::SameLabelSet.is_relevant(&q, &Truth::labels(vec![1, 3])));
    assert!(!Relevance::SameLabelSet.is_relevant(&q, &Truth::labels(vec![1])));
    let g = Truth::grade(2);
    assert_eq!(Relevance::SameGrade.gain(&g, &Truth::grade(2)), 2.0);
    assert_eq!(Relevance::SameGrade.gain(&g, &Truth::grade(3)), 1.0);
    assert_eq!(Relevance::SameGrade.gain(&g, &Truth::grade(0)), 0.0);
}

#[test]
fn whole_hamming_protocol_by_hand() {
    // Database: 4 codes with labels; two queries.
    let db = vec![vec![0b000u64], vec![0b001], vec![0b011], vec![0b111]];
    let dt = vec![
        Truth::labels(vec![0]),
        Truth::labels(vec![1]),
        Truth::labels(vec![0]),
        Truth::labels(vec![1]),
    ];
    let q = vec![vec![0b000u64], vec![0b111]];
    let qt = vec![Truth::labels(vec![0]), Truth::labels(vec![0])];
    let rep = evaluate_hamming(
        &HammingSet {
            codes: &q,
            truth: &qt,
            bits: 3,
        },
        &HammingSet {
            codes: &db,
            truth: &dt,
            bits: 3,
        },
        Relevance::SharesLabel,
        false,
    );
    // Query 0 ranks 0,1,2,3 (distances 0,1,2,3): relevant at 1 and 3: AP = (1 + 2/3)/2 = 5/6.
    // Query 1 ranks 3,2,1,0 (distances 0,1,2,3): relevant at 2 and 4: AP = (1/2 + 2/4)/2 = 1/2.
    assert_close!(rep.map["all"], (5.0 / 6.0 + 0.5) / 2.0);
    // P@1: 1 and 0.
    assert_close!(rep.precision["1"], 0.5);
    // P@H<=2: query 0 ball {0,1,2}: 2/3; query 1 ball {3,2,1}: 1/3.
    assert_close!(rep.precision_hamming_radius_2.unwrap(), 0.5);
    assert_eq!(rep.protocol.queries, 2);
    // Radii 0..=3 for 3-bit codes, though they are packed in 64-bit words.
    let curve = rep.pr_curve.as_ref().unwrap();
    assert_eq!(curve.len(), 4);
    // The ball of radius = code length holds everything: recall 1, precision 1/2.
    assert_eq!(curve[3].0, 3);
    assert_close!(curve[3].1, 0.5);
    assert_close!(curve[3].2, 1.0);
    assert_close!(rep.map_all_expected_over_ties, rep.map["all"]);

    // Queries drawn from the database never see themselves.
    let me = evaluate_hamming(
        &HammingSet {
            codes: &db,
            truth: &dt,
            bits: 3,
        },
        &HammingSet {
            codes: &db,
            truth: &dt,
            bits: 3,
        },
        Relevance::SharesLabel,
        true,
    );
    // Item 0 (label 0): others 1,2,3 at distances 1,2,3, relevant is item 2 at rank 2: AP 1/2.
    // Item 1 (label 1): 0 (d1), 2 (d1), 3 (d2): relevant 3 at rank 3: AP 1/3.
    // Item 2 (label 0): 1,3 (d1, tie by index), 0 (d2): relevant 0 at rank 3: AP 1/3.
    // Item 3 (label 1): 2 (d1), 1 (d2), 0 (d3): relevant 1 at rank 2: AP 1/2.
    assert_close!(me.map["all"], (0.5 + 1.0 / 3.0 + 1.0 / 3.0 + 0.5) / 4.0);
    assert!(me.protocol.exclude_self);
}

#[test]
fn pr_curve_leaves_out_queries_with_no_relevant_case() {
    // Database 000 (label 0), 001 (1), 011 (0), 111 (1). Query A (label 0) at 000 sees
    // distances 0,1,2,3, relevant at 0 and 2 (2 relevant). Query B (label 5) at 000 has
    // no relevant case in the database.
    let db = vec![vec![0b000u64], vec![0b001], vec![0b011], vec![0b111]];
    let dt: Vec<Truth> = [0, 1, 0, 1]
        .iter()
        .map(|&l| Truth::labels(vec![l]))
        .collect();
    let q = vec![vec![0b000u64], vec![0b000]];
    let qt = vec![Truth::labels(vec![0]), Truth::labels(vec![5])];
    let rep = evaluate_hamming(
        &HammingSet {
            codes: &q,
            truth: &qt,
            bits: 3,
        },
        &HammingSet {
            codes: &db,
            truth: &dt,
            bits: 3,
        },
        Relevance::SharesLabel,
        false,
    );
    // The curve is query A's alone: balls {0}, {0,1}, {0,1,2}, all: precision 1, 1/2,
    // 2/3, 1/2; recall 1/2, 1/2, 1, 1. Counting B would halve every value (recall could
    // never reach 1).
    let curve = rep.pr_curve.as_ref().unwrap();
    let want = [
        (0, 1.0, 0.5),
        (1, 0.5, 0.5),
        (2, 2.0 / 3.0, 1.0),
        (3, 0.5, 1.0),
    ];
    assert_eq!(curve.len(), want.len());
    for (got, want) in curve.iter().zip(want) {
        assert_eq!(got.0, want.0);
        assert!(
            close(got.1, want.1) && close(got.2, want.2),
            "{got:?}, expected {want:?}"
        );
    }
    assert_eq!(rep.pr_curve_queries, Some(1));
    // The metrics stay means over both queries (B counts 0): P@H<=2 = (2/3 + 0) / 2.
    assert_close!(rep.precision_hamming_radius_2.unwrap(), 1.0 / 3.0);
    assert_close!(rep.map["all"], (1.0 + 2.0 / 3.0) / 2.0 / 2.0);
}
