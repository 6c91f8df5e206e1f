//! Whole-protocol evaluation: every query against the database, metrics averaged over
//! queries (a query with no relevant item counts as 0), protocol spelled out in the report.
//! The one exception is the precision-recall curve, averaged over the queries with at
//! least one relevant item in the database only (see [`Report::pr_curve`]).

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::codes::cosine;
use crate::metrics::*;
use crate::ranking::{Ranked, rank_hamming, rank_hamming_refined, rank_similarity};
use crate::relevance::{Relevance, Truth};

/// The k values reported for mAP, P and R (and NDCG).
pub const MAP_KS: [usize; 2] = [100, 1000];
pub const P_KS: [usize; 6] = [1, 5, 10, 20, 50, 100];

/// What was compared, and how.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Protocol {
    pub queries: usize,
    pub database: usize,
    pub relevance: Relevance,
    pub relevance_rule: String,
    pub distance: String,
    pub tie_rule: String,
    pub ndcg_gain: String,
    /// True when queries are drawn from the database and each is excluded from its own list.
    pub exclude_self: bool,
}

/// Every figure, averaged over queries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub protocol: Protocol,
    /// `"100"`, `"1000"`, `"all"`.
    pub map: BTreeMap<String, f64>,
    pub precision: BTreeMap<String, f64>,
    pub recall: BTreeMap<String, f64>,
    pub ndcg: BTreeMap<String, f64>,
    /// Hashing only.
    pub precision_hamming_radius_2: Option<f64>,
    /// Hashing only: `(radius, precision, recall)`, each the mean over the queries with at
    /// least one relevant item in the database: such a query has no recall, and its
    /// precision is 0 at every radius, so both averages leave it out (every point is over
    /// the same queries). `precision_hamming_radius_2` stays a mean over all queries.
    pub pr_curve: Option<Vec<(u32, f64, f64)>>,
    /// Hashing only: how many queries the PR curve averages (0 gives a curve of zeros).
    pub pr_curve_queries: Option<usize>,
    /// Expected mAP@all over random orders of tied items (exact).
    pub map_all_expected_over_ties: f64,
}

/// Inputs of a codes evaluation.
pub struct HammingSet<'a> {
    pub codes: &'a [Vec<u64>],
    pub truth: &'a [Truth],
    /// The code length: the precision-recall curve over radii stops here (a 48-bit code
    /// packed in a 64-bit word has no radius beyond 48).
    pub bits: usize,
}

struct PerQuery {
    ap: Vec<f64>,
    p: Vec<f64>,
    r: Vec<f64>,
    ndcg: Vec<f64>,
    ap_ties: f64,
    ph2: f64,
    pr: Vec<(f64, f64)>,
    /// Whether the database holds a relevant item for this query.
    has_relevant: bool,
}

fn per_query(
    ranked: &[Ranked],
    q: &Truth,
    db: &[Truth],
    rule: Relevance,
    radii: Option<u32>,
) -> PerQuery {
    let rel: Vec<bool> = ranked
        .iter()
        .map(|x| rule.is_relevant(q, &db[x.index]))
        .collect();
    let gains: Vec<f64> = ranked.iter().map(|x| rule.gain(q, &db[x.index])).collect();
    let dist: Vec<f64> = ranked.iter().map(|x| x.distance).collect();
    let total = rel.iter().filter(|&&x| x).count();
    let mut ap: Vec<f64> = MAP_KS
        .iter()
        .map(|&k| average_precision(&rel, Some(k)))
        .collect();
    ap.push(average_precision(&rel, None));
    let mut ndcg: Vec<f64> = P_KS.iter().map(|&k| ndcg_at(&gains, k)).collect();
    ndcg.push(ndcg_at(&gains, 1000));
    PerQuery {
        ap,
        p: P_KS.iter().map(|&k| precision_at(&rel, k)).collect(),
        r: P_KS.iter().map(|&k| recall_at(&rel, k, total)).collect(),
        ndcg,
        ap_ties: expected_average_precision_ties(&dist, &rel),
        ph2: radii.map_or(0.0, |_| precision_within_radius(&dist, &rel, 2.0)),
        pr: radii.map_or_else(Vec::new, |m| pr_over_radii(&dist, &rel, m)),
        has_relevant: total > 0,
    }
}

fn mean(xs: impl Iterator<Item = f64>, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        xs.sum::<f64>() / n as f64
    }
}

fn aggregate(per: &[PerQuery], protocol: Protocol, radii: Option<u32>) -> Report {
    let n = per.len();
    let col = |f: &dyn Fn(&PerQuery) -> f64| mean(per.iter().map(f), n);
    let mut map = BTreeMap::new();
    for (i, k) in MAP_KS.iter().enumerate() {
        map.insert(k.to_string(), col(&|q| q.ap[i]));
    }
    map.insert("all".into(), col(&|q| q.ap[MAP_KS.len()]));
    let (mut precision, mut recall, mut ndcg) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (i, k) in P_KS.iter().enumerate() {
        precision.insert(k.to_string(), col(&|q| q.p[i]));
        recall.insert(k.to_string(), col(&|q| q.r[i]));
        ndcg.insert(k.to_string(), col(&|q| q.ndcg[i]));
    }
    ndcg.insert("1000".into(), col(&|q| q.ndcg[P_KS.len()]));
    let answerable: Vec<&PerQuery> = per.iter().filter(|q| q.has_relevant).collect();
    let pr_col =
        |f: &dyn Fn(&PerQuery) -> f64| mean(answerable.iter().map(|q| f(q)), answerable.len());
    let pr_curve = radii.map(|m| {
        (0..=m as usize)
            .map(|r| (r as u32, pr_col(&|q| q.pr[r].0), pr_col(&|q| q.pr[r].1)))
            .collect()
    });
    Report {
        protocol,
        map,
        precision,
        recall,
        ndcg,
        precision_hamming_radius_2: radii.map(|_| col(&|q| q.ph2)),
        pr_curve,
        pr_curve_queries: radii.map(|_| answerable.len()),
        map_all_expected_over_ties: col(&|q| q.ap_ties),
    }
}

fn protocol(nq: usize, nd: usize, rule: Relevance, distance: &str, exclude_self: bool) -> Protocol {
    Protocol {
        queries: nq,
        database: nd,
        relevance: rule,
        relevance_rule: rule.describe().into(),
        distance: distance.into(),
        tie_rule: "ascending distance, then ascending database index".into(),
        ndcg_gain: match rule {
            Relevance::SameGrade => "linear gain max(0, 2 - |g_q - g_d|)".into(),
            _ => "binary gain (1 if relevant)".into(),
        },
        exclude_self,
    }
}

/// Scores every query's ranking by `rank` (query index -> ranked database) with the
/// Hamming protocol; `tie_rule` replaces the default rule's description.
fn hamming_report(
    queries: &HammingSet,
    database: &HammingSet,
    rule: Relevance,
    exclude_self: bool,
    rank: &(dyn Fn(usize) -> Vec<Ranked> + Sync),
    tie_rule: Option<&str>,
) -> Report {
    assert_eq!(
        queries.bits, database.bits,
        "queries and database of different code lengths"
    );
    let bits = database.bits as u32;
    let per: Vec<PerQuery> = (0..queries.codes.len())
        .into_par_iter()
        .map(|i| {
            per_query(
                &rank(i),
                &queries.truth[i],
                database.truth,
                rule,
                Some(bits),
            )
        })
        .collect();
    let mut protocol = protocol(
        queries.codes.len(),
        database.codes.len(),
        rule,
        "hamming",
        exclude_self,
    );
    if let Some(t) = tie_rule {
        protocol.tie_rule = t.into();
    }
    aggregate(&per, protocol, Some(bits))
}

/// Evaluates Hamming retrieval. With `exclude_self`, queries are the database itself and
/// query `i` never sees database item `i`.
pub fn evaluate_hamming(
    queries: &HammingSet,
    database: &HammingSet,
    rule: Relevance,
    exclude_self: bool,
) -> Report {
    let rank =
        |i: usize| rank_hamming(&queries.codes[i], database.codes, exclude_self.then_some(i));
    hamming_report(queries, database, rule, exclude_self, &rank, None)
}

/// Evaluates two-stage Hamming retrieval ([`rank_hamming_refined`]): Hamming distance,
/// then within a tie the distance between the relaxed codes `query_raw[i]` and
/// `database_raw[j]`. Radius figures (P@H<=2, the PR curve) and the expected mAP over
/// ties are those of the codes alone.
pub fn evaluate_hamming_refined(
    queries: &HammingSet,
    query_raw: &[Vec<f32>],
    database: &HammingSet,
    database_raw: &[Vec<f32>],
    rule: Relevance,
    exclude_self: bool,
) -> Report {
    assert_eq!(
        queries.codes.len(),
        query_raw.len(),
        "one relaxed code a query"
    );
    assert_eq!(
        database.codes.len(),
        database_raw.len(),
        "one relaxed code a case"
    );
    let rank = |i: usize| {
        rank_hamming_refined(
            &queries.codes[i],
            database.codes,
            &query_raw[i],
            database_raw,
            exclude_self.then_some(i),
        )
    };
    hamming_report(
        queries,
        database,
        rule,
        exclude_self,
        &rank,
        Some(REFINED_TIE_RULE),
    )
}

/// The two-stage tie rule, as reports state it.
pub const REFINED_TIE_RULE: &str = "ascending Hamming distance, then ascending squared Euclidean distance between the relaxed codes (the hash layer's outputs), then ascending database index";

/// Evaluates cosine-similarity retrieval over float descriptors.
pub fn evaluate_cosine(
    queries: &[Vec<f32>],
    query_truth: &[Truth],
    database: &[Vec<f32>],
    database_truth: &[Truth],
    rule: Relevance,
    exclude_self: bool,
) -> Report {
    let per: Vec<PerQuery> = (0..queries.len())
        .into_par_iter()
        .map(|i| {
            let sims: Vec<f32> = database.iter().map(|d| cosine(&queries[i], d)).collect();
            let ranked = rank_similarity(&sims, exclude_self.then_some(i));
            per_query(&ranked, &query_truth[i], database_truth, rule, None)
        })
        .collect();
    aggregate(
        &per,
        protocol(
            queries.len(),
            database.len(),
            rule,
            "cosine (distance 1 - cos)",
            exclude_self,
        ),
        None,
    )
}
