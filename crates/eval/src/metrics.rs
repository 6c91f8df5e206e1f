//! Per-query retrieval metrics over a ranked list. Each takes the ranked relevance (and
//! where needed distances or gains) of one query; [`crate::evaluate`] averages them.
//!
//! Conventions (see `docs/evaluation.md`):
//! - `AP@k = (1/R_k) * sum_{i<=k} P(i) rel(i)`, `R_k` the relevant items in the top k,
//!   0 when `R_k = 0`. `k = None` means all (`AP@all`).
//! - `P@k = hits in top k / k`; when the database has fewer than k items, `/ N`.
//! - `R@k = hits in top k / all relevant items in the database` (0 when there are none).
//! - `NDCG@k` with linear gains: `DCG = sum_{i<=k} g_i / log2(i + 1)`, normalised by the
//!   DCG of the gains sorted descending (0 when that is 0).

/// Average precision over the top `k` (all when `None`).
pub fn average_precision(rel: &[bool], k: Option<usize>) -> f64 {
    let k = k.unwrap_or(rel.len()).min(rel.len());
    let (mut hits, mut sum) = (0usize, 0.0f64);
    for (i, &r) in rel[..k].iter().enumerate() {
        if r {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    if hits == 0 { 0.0 } else { sum / hits as f64 }
}

/// Precision at k.
pub fn precision_at(rel: &[bool], k: usize) -> f64 {
    let k = k.min(rel.len());
    if k == 0 {
        return 0.0;
    }
    rel[..k].iter().filter(|&&r| r).count() as f64 / k as f64
}

/// Recall at k, given the number of relevant items in the whole database.
pub fn recall_at(rel: &[bool], k: usize, total_relevant: usize) -> f64 {
    if total_relevant == 0 {
        return 0.0;
    }
    let k = k.min(rel.len());
    rel[..k].iter().filter(|&&r| r).count() as f64 / total_relevant as f64
}

fn dcg(gains: impl Iterator<Item = f64>) -> f64 {
    gains
        .enumerate()
        .map(|(i, g)| g / ((i + 2) as f64).log2())
        .sum()
}

/// NDCG at k from the ranked gains.
pub fn ndcg_at(ranked_gains: &[f64], k: usize) -> f64 {
    let mut ideal = ranked_gains.to_vec();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg = dcg(ideal.into_iter().take(k));
    if idcg == 0.0 {
        0.0
    } else {
        dcg(ranked_gains.iter().copied().take(k)) / idcg
    }
}

/// Precision among the items within Hamming radius `r` (0 when none is). `dist` ascending.
pub fn precision_within_radius(dist: &[f64], rel: &[bool], r: f64) -> f64 {
    let n = dist.partition_point(|&d| d <= r);
    if n == 0 {
        0.0
    } else {
        rel[..n].iter().filter(|&&x| x).count() as f64 / n as f64
    }
}

/// Precision and recall of the Hamming ball of each radius `0..=max_radius`.
/// Precision is 0 for an empty ball (the P@H<=2 rule); recall is 0 without relevant items,
/// and [`crate::evaluate`] leaves such a query out of the curve's averages.
pub fn pr_over_radii(dist: &[f64], rel: &[bool], max_radius: u32) -> Vec<(f64, f64)> {
    let total = rel.iter().filter(|&&x| x).count();
    (0..=max_radius)
        .map(|r| {
            let n = dist.partition_point(|&d| d <= r as f64);
            let hits = rel[..n].iter().filter(|&&x| x).count();
            let p = if n == 0 { 0.0 } else { hits as f64 / n as f64 };
            let rc = if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            };
            (p, rc)
        })
        .collect()
}

/// Expected AP@all when items at equal distance are ordered uniformly at random, exactly.
///
/// For a tie group at ranks `s+1..s+n` holding `r` relevant items, with `c` relevant items
/// ranked before it: rank `s+t` is relevant with probability `r/n`, and given that, the
/// other relevant items ahead of it in the group number `(t-1)(r-1)/(n-1)` on average
/// (hypergeometric), so the expected precision contribution is
/// `sum_t (r/n) (c + 1 + (t-1)(r-1)/(n-1)) / (s+t)`. AP@k with the `R_k` denominator is a
/// ratio of random quantities, so only AP@all has this closed form.
pub fn expected_average_precision_ties(dist: &[f64], rel: &[bool]) -> f64 {
    let total = rel.iter().filter(|&&x| x).count();
    if total == 0 {
        return 0.0;
    }
    let (mut s, mut c, mut sum) = (0usize, 0usize, 0.0f64);
    while s < dist.len() {
        let mut e = s + 1;
        while e < dist.len() && dist[e] == dist[s] {
            e += 1;
        }
        let n = e - s;
        let r = rel[s..e].iter().filter(|&&x| x).count();
        if r > 0 {
            for t in 1..=n {
                let ahead = if n > 1 {
                    (t - 1) as f64 * (r - 1) as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                sum += (r as f64 / n as f64) * (c as f64 + 1.0 + ahead) / (s + t) as f64;
            }
        }
        c += r;
        s = e;
    }
    sum / total as f64
}
