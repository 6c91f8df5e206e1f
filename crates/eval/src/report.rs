//! The scores of `medret eval`: for every k asked, mAP@k, P@k and NDCG@k with a bootstrap
//! 95% interval over queries, beside the chance level (random rankings) and the
//! always-majority level scored with the same code; P@H<=2 and the precision-recall curve
//! over Hamming radii (up to the code length) for codes, over ranks for descriptors; and
//! AP per class.
//!
//! Every figure is a mean over queries of a per-query value from [`crate::metrics`], so
//! the interval resamples queries (percentile bootstrap, seeded) and a paired difference
//! between two models resamples the same queries for both ([`paired_interval`]).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::baseline::majority_label;
use crate::metrics::{
    average_precision, expected_average_precision_ties, ndcg_at, precision_at,
    precision_within_radius,
};
use crate::ranking::Ranked;
use crate::relevance::{Relevance, Truth};

/// How intervals and chance levels are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Bootstrap resamples of the queries.
    pub resamples: usize,
    /// Random rankings averaged for the chance level.
    pub chance_rankings: usize,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            resamples: 1000,
            chance_rankings: 5,
            seed: 0,
        }
    }
}

/// One point of a precision-recall curve: a Hamming radius, or a rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    pub at: usize,
    pub precision: f64,
    pub recall: f64,
}

/// The scores of one ranking of a query set against a database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub queries: usize,
    pub database: usize,
    /// `"map@10"`, `"p@10"`, `"ndcg@10"` for each k; `"p@h<=2"` for codes.
    pub metrics: BTreeMap<String, f64>,
    /// Bootstrap 95% interval of each metric, over queries.
    pub intervals: BTreeMap<String, [f64; 2]>,
    /// A random ranking's expected value (the mean of `chance_rankings` seeded shuffles).
    pub chance: BTreeMap<String, f64>,
    /// The always-majority ranking's value (see [`crate::baseline`]).
    pub majority: BTreeMap<String, f64>,
    /// `"radius"` (codes) or `"rank"` (descriptors).
    pub pr_over: String,
    /// Mean precision and recall over the queries with at least one relevant case in the
    /// database: such a query has no recall, and its precision is 0 at every point, so
    /// both averages leave it out and every point is over the same queries. (The metrics
    /// above, `p@h<=2` included, stay means over all queries.)
    pub pr_curve: Vec<PrPoint>,
    /// How many queries the PR curve averages (0 gives a curve of zeros).
    #[serde(default)]
    pub pr_curve_queries: usize,
    /// Mean AP@k (k the largest asked) over the queries carrying each class.
    pub per_class_ap: BTreeMap<String, f64>,
    /// mAP over the whole ranking, ties broken by database order (the tie rule)...
    pub map_all: f64,
    /// ...and its exact expectation over random orders of tied items: where codes collide
    /// (many cases at one Hamming distance), the two differ and the second is the fair one.
    pub map_all_expected_over_ties: f64,
}

impl Scores {
    /// Metric names in reading order: by metric, then by ascending k (`map@10` before
    /// `map@100`), where the map's string order would put `map@100` before `map@50`.
    pub fn ordered_metrics(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.metrics.keys().collect();
        names.sort_by_key(|n| {
            let (m, k) = n.split_once('@').unwrap_or((n.as_str(), ""));
            (
                m.to_string(),
                k.parse::<usize>().unwrap_or(usize::MAX),
                k.to_string(),
            )
        });
        names
    }
}

/// The per-query values of every metric, in a fixed order of names.
struct PerQuery {
    names: Vec<String>,
    values: Vec<Vec<f64>>, // [query][metric]
}

fn metric_names(ks: &[usize], hamming: bool) -> Vec<String> {
    let mut names = Vec::new();
    for &k in ks {
        names.push(format!("map@{k}"));
        names.push(format!("p@{k}"));
        names.push(format!("ndcg@{k}"));
    }
    if hamming {
        names.push("p@h<=2".into());
    }
    names
}

fn per_query_values(
    ranked: &[Ranked],
    q: &Truth,
    db: &[Truth],
    rule: Relevance,
    ks: &[usize],
    hamming: bool,
) -> Vec<f64> {
    let rel: Vec<bool> = ranked
        .iter()
        .map(|x| rule.is_relevant(q, &db[x.index]))
        .collect();
    let gains: Vec<f64> = ranked.iter().map(|x| rule.gain(q, &db[x.index])).collect();
    let mut v = Vec::with_capacity(3 * ks.len() + 1);
    for &k in ks {
        v.push(average_precision(&rel, Some(k)));
        v.push(precision_at(&rel, k));
        v.push(ndcg_at(&gains, k));
    }
    if hamming {
        let dist: Vec<f64> = ranked.iter().map(|x| x.distance).collect();
        v.push(precision_within_radius(&dist, &rel, 2.0));
    }
    v
}

fn score_lists(
    lists: &[Vec<Ranked>],
    qt: &[Truth],
    dt: &[Truth],
    rule: Relevance,
    ks: &[usize],
    hamming: bool,
) -> PerQuery {
    PerQuery {
        names: metric_names(ks, hamming),
        values: lists
            .par_iter()
            .zip(qt)
            .map(|(r, q)| per_query_values(r, q, dt, rule, ks, hamming))
            .collect(),
    }
}

fn means(p: &PerQuery) -> Vec<f64> {
    let n = p.values.len().max(1) as f64;
    (0..p.names.len())
        .map(|j| p.values.iter().map(|v| v[j]).sum::<f64>() / n)
        .collect()
}

/// Percentile bootstrap 95% interval of the mean of `values`.
pub fn bootstrap_interval(values: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    if values.is_empty() || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = values.len();
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    stats.sort_by(f64::total_cmp);
    let at = |q: f64| stats[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    [at(0.025), at(0.975)]
}

/// Two-level percentile bootstrap 95% interval of the mean of `groups` pooled, for values
/// clustered in groups (per-query values of several training seeds): each resample first
/// draws `groups.len()` groups with replacement, then within each drawn group as many of
/// its values with replacement, and takes the mean of all drawn values. Resampling the
/// pooled values as if independent ignores the variation between groups (seeds), so its
/// interval is too narrow whenever groups disagree. Empty groups are ignored; with one
/// group this is [`bootstrap_interval`].
pub fn clustered_bootstrap_interval(groups: &[Vec<f64>], resamples: usize, seed: u64) -> [f64; 2] {
    let groups: Vec<&Vec<f64>> = groups.iter().filter(|g| !g.is_empty()).collect();
    if groups.is_empty() || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = groups.len();
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| {
            let (mut sum, mut count) = (0.0, 0usize);
            for _ in 0..s {
                // One group: no draw, so this is exactly the one-level bootstrap.
                let g = if s == 1 {
                    groups[0]
                } else {
                    groups[rng.random_range(0..s)]
                };
                let n = g.len();
                for _ in 0..n {
                    sum += g[rng.random_range(0..n)];
                }
                count += n;
            }
            sum / count as f64
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let at = |q: f64| stats[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    [at(0.025), at(0.975)]
}

/// Paired bootstrap 95% interval of `mean(a) - mean(b)` over the same queries: a
/// difference is established only when the interval excludes 0.
pub fn paired_interval(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    assert_eq!(a.len(), b.len(), "paired values over the same queries");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap_interval(&d, resamples, seed)
}

/// The always-majority ranking: database items carrying the most frequent label first,
/// then the rest, each in database order.
fn majority_ranking(dt: &[Truth]) -> Vec<Ranked> {
    let m = majority_label(dt);
    let has = |t: &Truth| m.is_some_and(|m| t.labels.contains(&m));
    let (first, rest): (Vec<usize>, Vec<usize>) = (0..dt.len()).partition(|&i| has(&dt[i]));
    first
        .into_iter()
        .map(|index| Ranked {
            index,
            distance: 0.0,
        })
        .chain(rest.into_iter().map(|index| Ranked {
            index,
            distance: 1.0,
        }))
        .collect()
}

/// Ranks at which the descriptor PR curve is drawn: 1, 2, 5, 10, 20, 50, ... up to `n`.
fn rank_grid(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut base = 1;
    'outer: loop {
        for m in [1, 2, 5] {
            let r = base * m;
            if r >= n {
                break 'outer;
            }
            out.push(r);
        }
        base *= 10;
    }
    if n > 0 {
        out.push(n);
    }
    out
}

/// Scores `lists[i]`, the ranking of the whole database for query `i` (ascending
/// distance; Hamming distances for codes). `bits` is the code length for codes (`None`
/// for descriptors); `class_names[l]` names label index `l`. Also returns each metric's
/// per-query values, in query order.
#[allow(clippy::too_many_arguments)]
pub fn score(
    lists: &[Vec<Ranked>],
    qt: &[Truth],
    dt: &[Truth],
    rule: Relevance,
    ks: &[usize],
    bits: Option<usize>,
    class_names: &[String],
    sampling: Sampling,
) -> (Scores, BTreeMap<String, Vec<f64>>) {
    assert_eq!(lists.len(), qt.len(), "one ranking per query");
    let hamming = bits.is_some();
    let model = score_lists(lists, qt, dt, rule, ks, hamming);
    let names = model.names.clone();
    let value = means(&model);
    let mut intervals = BTreeMap::new();
    for (j, name) in names.iter().enumerate() {
        let col: Vec<f64> = model.values.iter().map(|v| v[j]).collect();
        intervals.insert(
            name.clone(),
            bootstrap_interval(&col, sampling.resamples, sampling.seed ^ j as u64),
        );
    }
    // Chance: seeded shuffles of the database, each query its own.
    let mut chance = vec![0.0; names.len()];
    for r in 0..sampling.chance_rankings {
        let shuffled: Vec<Vec<Ranked>> = (0..qt.len())
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    sampling.seed.wrapping_add(1 + r as u64) * 1_000_003 + i as u64,
                );
                let mut idx: Vec<usize> = (0..dt.len()).collect();
                idx.shuffle(&mut rng);
                // Distances for P@H<=2: a random ranking has no ball, so every item sits
                // at distance 0 and the "ball" is the whole database (its precision is
                // the fraction relevant, which is chance).
                idx.into_iter()
                    .map(|index| Ranked {
                        index,
                        distance: 0.0,
                    })
                    .collect()
            })
            .collect();
        let m = means(&score_lists(&shuffled, qt, dt, rule, ks, hamming));
        chance.iter_mut().zip(m).for_each(|(c, x)| *c += x);
    }
    let runs = sampling.chance_rankings.max(1) as f64;
    chance.iter_mut().for_each(|c| *c /= runs);
    let maj = majority_ranking(dt);
    let maj_lists: Vec<Vec<Ranked>> = qt.iter().map(|_| maj.clone()).collect();
    let majority = means(&score_lists(&maj_lists, qt, dt, rule, ks, hamming));

    let total: Vec<usize> = qt
        .iter()
        .map(|q| dt.iter().filter(|d| rule.is_relevant(q, d)).count())
        .collect();
    let rels: Vec<Vec<bool>> = lists
        .par_iter()
        .zip(qt)
        .map(|(l, q)| {
            l.iter()
                .map(|x| rule.is_relevant(q, &dt[x.index]))
                .collect()
        })
        .collect();
    let nq = qt.len().max(1) as f64;
    // The PR curve averages the queries that have a relevant case.
    let pr_queries = total.iter().filter(|&&t| t > 0).count();
    let npr = pr_queries.max(1) as f64;
    let (pr_over, pr_curve) = match bits {
        Some(b) => (
            "radius",
            (0..=b)
                .map(|r| {
                    let (mut p, mut rc) = (0.0, 0.0);
                    for ((l, rel), &t) in lists.iter().zip(&rels).zip(&total) {
                        if t == 0 {
                            continue;
                        }
                        let n = l.partition_point(|x| x.distance <= r as f64);
                        let hits = rel[..n].iter().filter(|&&x| x).count();
                        if n > 0 {
                            p += hits as f64 / n as f64;
                        }
                        rc += hits as f64 / t as f64;
                    }
                    PrPoint {
                        at: r,
                        precision: p / npr,
                        recall: rc / npr,
                    }
                })
                .collect(),
        ),
        None => (
            "rank",
            rank_grid(dt.len())
                .into_iter()
                .map(|k| {
                    let (mut p, mut rc) = (0.0, 0.0);
                    for (rel, &t) in rels.iter().zip(&total) {
                        if t == 0 {
                            continue;
                        }
                        let hits = rel[..k.min(rel.len())].iter().filter(|&&x| x).count();
                        p += hits as f64 / k as f64;
                        rc += hits as f64 / t as f64;
                    }
                    PrPoint {
                        at: k,
                        precision: p / npr,
                        recall: rc / npr,
                    }
                })
                .collect(),
        ),
    };
    let kmax = ks.iter().copied().max().unwrap_or(100);
    let mut per_class_ap = BTreeMap::new();
    for (l, name) in class_names.iter().enumerate() {
        let aps: Vec<f64> = rels
            .iter()
            .zip(qt)
            .filter(|(_, q)| q.labels.contains(&(l as u32)))
            .map(|(rel, _)| average_precision(rel, Some(kmax)))
            .collect();
        if !aps.is_empty() {
            per_class_ap.insert(name.clone(), aps.iter().sum::<f64>() / aps.len() as f64);
        }
    }
    let to_map = |v: &[f64]| -> BTreeMap<String, f64> {
        names.iter().cloned().zip(v.iter().copied()).collect()
    };
    let scores = Scores {
        queries: qt.len(),
        database: dt.len(),
        metrics: to_map(&value),
        intervals,
        chance: to_map(&chance),
        majority: to_map(&majority),
        pr_over: pr_over.into(),
        pr_curve,
        pr_curve_queries: pr_queries,
        per_class_ap,
        map_all: rels.iter().map(|r| average_precision(r, None)).sum::<f64>() / nq,
        map_all_expected_over_ties: lists
            .par_iter()
            .zip(&rels)
            .map(|(l, r)| {
                let dist: Vec<f64> = l.iter().map(|x| x.distance).collect();
                expected_average_precision_ties(&dist, r)
            })
            .sum::<f64>()
            / nq,
    };
    let per_query = names
        .iter()
        .enumerate()
        .map(|(j, n)| (n.clone(), model.values.iter().map(|v| v[j]).collect()))
        .collect();
    (scores, per_query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_shrinks_with_n() {
        let small: Vec<f64> = (0..20).map(|i| f64::from(i % 2)).collect();
        let big: Vec<f64> = (0..2000).map(|i| f64::from(i % 2)).collect();
        let [a, b] = bootstrap_interval(&small, 2000, 1);
        let [c, d] = bootstrap_interval(&big, 2000, 1);
        assert!(a < 0.5 && 0.5 < b && c < 0.5 && 0.5 < d);
        // The standard error of a mean of n fair coins is 0.5 / sqrt(n): the 95% interval
        // is about +-1.96 of it.
        assert!(
            (b - a - 2.0 * 1.96 * 0.5 / 20f64.sqrt()).abs() < 0.1,
            "{a} {b}"
        );
        assert!(
            (d - c - 2.0 * 1.96 * 0.5 / 2000f64.sqrt()).abs() < 0.01,
            "{c} {d}"
        );
        // A constant has a zero-width interval; a paired difference of equal lists is 0.
        assert_eq!(bootstrap_interval(&[0.3; 7], 100, 0), [0.3, 0.3]);
        assert_eq!(paired_interval(&small, &small, 100, 0), [0.0, 0.0]);
    }

    #[test]
    fn pr_curves_leave_out_queries_with_no_relevant_case() {
        // Database labels 0,1,0,1 at distances 0,1,2,2 from both queries. Query A (label
        // 0) has relevant cases 0 and 2; query B (label 7) has none.
        let dt: Vec<Truth> = [0, 1, 0, 1]
            .iter()
            .map(|&l| Truth::labels(vec![l]))
            .collect();
        let qt = vec![Truth::labels(vec![0]), Truth::labels(vec![7])];
        let list: Vec<Ranked> = [(0, 0.0), (1, 1.0), (2, 2.0), (3, 2.0)]
            .iter()
            .map(|&(index, distance)| Ranked { index, distance })
            .collect();
        let lists = vec![list.clone(), list];
        let curve = |bits: Option<usize>| {
            let (s, _) = score(
                &lists,
                &qt,
                &dt,
                Relevance::SharesLabel,
                &[4],
                bits,
                &[],
                Sampling {
                    resamples: 10,
                    chance_rankings: 1,
                    seed: 0,
                },
            );
            assert_eq!(s.pr_curve_queries, 1);
            // The metrics stay means over both queries: B's P@4 is 0.
            assert_eq!(s.metrics["p@4"], 0.25);
            s.pr_curve
                .iter()
                .map(|p| (p.at, p.precision, p.recall))
                .collect::<Vec<_>>()
        };
        // Query A's curve alone; counting B would halve every value. Radii 0..=2: balls
        // {0}, {0,1}, all: precision 1, 1/2, 1/2; recall 1/2, 1/2, 1.
        assert_eq!(
            curve(Some(2)),
            vec![(0, 1.0, 0.5), (1, 0.5, 0.5), (2, 0.5, 1.0)]
        );
        // Ranks 1, 2, 4: precision 1, 1/2, 1/2; recall 1/2, 1/2, 1.
        assert_eq!(
            curve(None),
            vec![(1, 1.0, 0.5), (2, 0.5, 0.5), (4, 0.5, 1.0)]
        );
    }

    #[test]
    fn rank_grid_ends_at_the_database_size() {
        assert_eq!(rank_grid(1), vec![1]);
        assert_eq!(rank_grid(7), vec![1, 2, 5, 7]);
        assert_eq!(rank_grid(100), vec![1, 2, 5, 10, 20, 50, 100]);
    }

    #[test]
    fn hand_computed_scores_levels_and_curves() {
        // Database labels 0,1,0,1 (2-bit codes 00, 01, 11, 11 -> distances from 00:
        // 0,1,2,2); query label 0 at code 00.
        let dt: Vec<Truth> = [0, 1, 0, 1]
            .iter()
            .map(|&l| Truth::labels(vec![l]))
            .collect();
        let qt = vec![Truth::labels(vec![0])];
        let list: Vec<Ranked> = [(0, 0.0), (1, 1.0), (2, 2.0), (3, 2.0)]
            .iter()
            .map(|&(index, distance)| Ranked { index, distance })
            .collect();
        let names = vec!["a".to_string(), "b".to_string()];
        let (s, per) = score(
            &[list],
            &qt,
            &dt,
            Relevance::SharesLabel,
            &[1, 4],
            Some(2),
            &names,
            Sampling::default(),
        );
        // Relevant at ranks 1 and 3: AP@4 = (1 + 2/3) / 2, P@4 = 1/2, AP@1 = P@1 = 1.
        assert!((s.metrics["map@4"] - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            (s.metrics["map@1"], s.metrics["p@1"], s.metrics["p@4"]),
            (1.0, 1.0, 0.5)
        );
        // NDCG@4, binary gains: DCG = 1 + 1/log2(4) = 1.5; ideal 1 + 1/log2(3).
        let want = 1.5 / (1.0 + 1.0 / 3f64.log2());
        assert!((s.metrics["ndcg@4"] - want).abs() < 1e-12);
        // P@H<=2: the ball holds all four, two relevant.
        assert_eq!(s.metrics["p@h<=2"], 0.5);
        // Radii 0..=2: precision 1, 1/2, 1/2; recall 1/2, 1/2, 1.
        let pr: Vec<(usize, f64, f64)> = s
            .pr_curve
            .iter()
            .map(|p| (p.at, p.precision, p.recall))
            .collect();
        assert_eq!(pr, vec![(0, 1.0, 0.5), (1, 0.5, 0.5), (2, 0.5, 1.0)]);
        // Majority: labels 0 and 1 tie at 2, the smaller wins: items 0, 2 first.
        assert_eq!(s.majority["p@1"], 1.0);
        assert!((s.majority["map@4"] - 1.0).abs() < 1e-12);
        // Chance: any ranking of 2 relevant in 4 has P@4 = 1/2 exactly.
        assert!((s.chance["p@4"] - 0.5).abs() < 1e-12);
        assert_eq!(s.per_class_ap["a"], s.metrics["map@4"]);
        assert!(!s.per_class_ap.contains_key("b"), "no query carries b");
        assert_eq!(per["map@4"], vec![s.metrics["map@4"]]);
        assert_eq!(per["p@1"], vec![1.0]);
        // mAP@all in database order: (1 + 2/3) / 2. Over random orders of the tie at
        // distance 2 (items 2 relevant, 3 not): half the time the relevant one is 3rd
        // (AP 5/6), half the time 4th (AP (1 + 2/4) / 2 = 3/4).
        assert!((s.map_all - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.map_all_expected_over_ties - (5.0 / 6.0 + 0.75) / 2.0).abs() < 1e-12);
        // One query: the interval is the value itself.
        let [lo, hi] = s.intervals["map@4"];
        assert!((lo - 5.0 / 6.0).abs() < 1e-12 && (hi - 5.0 / 6.0).abs() < 1e-12);
    }
}
