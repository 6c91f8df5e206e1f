//! The ablation table of `medret ablate`: for each variant (and code length), the mean
//! and standard deviation of each metric over seeds, and the paired bootstrap 95%
//! interval of its difference to the full method over the same seeds and queries. The
//! bootstrap has two levels: each resample draws seeds with replacement, then queries with
//! replacement within each drawn seed, so the interval carries the variation between
//! training seeds as well as between queries (resampling (seed, query) pairs as if
//! independent would not). A difference is established only where that interval excludes
//! 0.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::html::esc;
use crate::report::clustered_bootstrap_interval;

/// One finished run: a variant at a code length and seed, with its metrics and their
/// per-query values (in the split's query order, the same for every run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: String,
    pub bits: Option<usize>,
    pub seed: u64,
    pub metrics: BTreeMap<String, f64>,
    pub per_query: BTreeMap<String, Vec<f64>>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub variant: String,
    pub bits: Option<usize>,
    pub seeds: usize,
    pub mean: BTreeMap<String, f64>,
    pub sd: BTreeMap<String, f64>,
    /// `[mean difference, low, high]` of (this variant - the full method), paired over
    /// seeds and queries, the interval a two-level bootstrap (seeds, then queries within
    /// each seed); absent for the full method itself.
    pub vs_full: BTreeMap<String, [f64; 3]>,
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    // The sample standard deviation; 0 for a single seed.
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// Builds the table; rows in the order variants first appear, then by code length.
pub fn table(
    runs: &[RunResult],
    full: &str,
    metrics: &[String],
    resamples: usize,
    seed: u64,
) -> Vec<Row> {
    let mut order: Vec<(String, Option<usize>)> = Vec::new();
    for r in runs {
        let key = (r.variant.clone(), r.bits);
        if !order.contains(&key) {
            order.push(key);
        }
    }
    order.sort_by_key(|(v, b)| {
        (
            b.unwrap_or(0),
            runs.iter().position(|r| &r.variant == v).unwrap_or(0),
        )
    });
    order
        .into_iter()
        .map(|(variant, bits)| {
            let mine: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.variant == variant && r.bits == bits)
                .collect();
            let (mut mean, mut sd, mut vs_full) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            for m in metrics {
                let xs: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.metrics.get(m).copied())
                    .collect();
                if xs.is_empty() {
                    continue;
                }
                let (a, b) = mean_sd(&xs);
                mean.insert(m.clone(), a);
                sd.insert(m.clone(), b);
                if variant == full {
                    continue;
                }
                // The paired differences, one group per seed.
                let mut diffs: Vec<Vec<f64>> = Vec::new();
                for r in &mine {
                    let Some(f) = runs
                        .iter()
                        .find(|f| f.variant == full && f.bits == bits && f.seed == r.seed)
                    else {
                        continue;
                    };
                    if let (Some(x), Some(y)) = (r.per_query.get(m), f.per_query.get(m))
                        && x.len() == y.len()
                        && !x.is_empty()
                    {
                        diffs.push(x.iter().zip(y).map(|(a, b)| a - b).collect());
                    }
                }
                if !diffs.is_empty() {
                    let n: usize = diffs.iter().map(Vec::len).sum();
                    let d = diffs.iter().flatten().sum::<f64>() / n as f64;
                    let [lo, hi] = clustered_bootstrap_interval(&diffs, resamples, seed);
                    vs_full.insert(m.clone(), [d, lo, hi]);
                }
            }
            Row {
                variant,
                bits,
                seeds: mine.len(),
                mean,
                sd,
                vs_full,
            }
        })
        .collect()
}

fn cells(row: &Row, m: &str) -> (String, String) {
    let v = match (row.mean.get(m), row.sd.get(m)) {
        (Some(a), Some(b)) => format!("{a:.4} ± {b:.4}"),
        _ => "-".into(),
    };
    let d = match row.vs_full.get(m) {
        Some([d, lo, hi]) => {
            let mark = if *lo > 0.0 || *hi < 0.0 { " *" } else { "" };
            format!("{d:+.4} [{lo:+.4}, {hi:+.4}]{mark}")
        }
        None => "(full method)".into(),
    };
    (v, d)
}

/// The table as markdown.
pub fn markdown(rows: &[Row], metrics: &[String], full: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Mean ± sd over seeds; beside each, the difference to the full method (`{full}`) with its paired bootstrap 95% interval (two levels: seeds resampled, then queries within each seed), `*` where it excludes 0.\n"
    );
    o.push_str("| variant | bits | seeds |");
    for m in metrics {
        let _ = write!(o, " {m} | vs full |");
    }
    o.push_str("\n|---|---|---|");
    for _ in metrics {
        o.push_str("---|---|");
    }
    o.push('\n');
    for r in rows {
        let _ = write!(
            o,
            "| {} | {} | {} |",
            r.variant,
            r.bits.map_or("-".into(), |b| b.to_string()),
            r.seeds
        );
        for m in metrics {
            let (v, d) = cells(r, m);
            let _ = write!(o, " {v} | {d} |");
        }
        o.push('\n');
    }
    o
}

/// The table as a self-contained HTML page.
pub fn html(rows: &[Row], metrics: &[String], full: &str, title: &str) -> String {
    let mut o = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}th{{background:#f4f4f4}}</style></head><body><h1>{0}</h1><p>Mean ± sd over seeds; beside each, the difference to the full method ({1}) with its paired bootstrap 95% interval (two levels: seeds resampled, then queries within each seed), * where it excludes 0.</p><table><tr><th>variant</th><th>bits</th><th>seeds</th>",
        esc(title),
        esc(full)
    );
    for m in metrics {
        let _ = write!(o, "<th>{}</th><th>vs full</th>", esc(m));
    }
    o.push_str("</tr>");
    for r in rows {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(&r.variant),
            r.bits.map_or("-".into(), |b| b.to_string()),
            r.seeds
        );
        for m in metrics {
            let (v, d) = cells(r, m);
            let _ = write!(o, "<td>{}</td><td>{}</td>", esc(&v), esc(&d));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    // Each metric against the code length, one line per variant, where there are several
    // lengths.
    let mut lengths: Vec<usize> = rows.iter().filter_map(|r| r.bits).collect();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.len() > 1 {
        for m in metrics {
            let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for r in rows {
                let (Some(b), Some(v)) = (r.bits, r.mean.get(m)) else {
                    continue;
                };
                match series.iter_mut().find(|(n, _)| n == &r.variant) {
                    Some((_, p)) => p.push((b as f64, *v)),
                    None => series.push((r.variant.clone(), vec![(b as f64, *v)])),
                }
            }
            series
                .iter_mut()
                .for_each(|(_, p)| p.sort_by(|a, b| a.0.total_cmp(&b.0)));
            match crate::html::lines_svg(&format!("{m} against code length"), "bits", m, &series) {
                Ok(svg) => o.push_str(&svg),
                Err(e) => {
                    let _ = write!(o, "<p>plot of {} not drawn: {}</p>", esc(m), esc(&e));
                }
            }
        }
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::bootstrap_interval;

    fn run(variant: &str, seed: u64, values: &[f64]) -> RunResult {
        let m = values.iter().sum::<f64>() / values.len() as f64;
        RunResult {
            variant: variant.into(),
            bits: Some(16),
            seed,
            metrics: BTreeMap::from([("map@10".to_string(), m)]),
            per_query: BTreeMap::from([("map@10".to_string(), values.to_vec())]),
        }
    }

    #[test]
    fn means_sds_and_paired_differences_by_hand() {
        let runs = vec![
            run("full", 0, &[0.5, 0.7]),
            run("full", 1, &[0.7, 0.9]),
            run("global", 0, &[0.4, 0.6]),
            run("global", 1, &[0.6, 0.8]),
        ];
        let metrics = vec!["map@10".to_string()];
        let rows = table(&runs, "full", &metrics, 500, 0);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].variant.as_str(), rows[0].seeds), ("full", 2));
        // Seed means 0.6 and 0.8: mean 0.7, sample sd sqrt(0.02) = 0.1414.
        assert!((rows[0].mean["map@10"] - 0.7).abs() < 1e-12);
        assert!((rows[0].sd["map@10"] - 0.02f64.sqrt()).abs() < 1e-12);
        assert!(rows[0].vs_full.is_empty());
        // Every paired difference is exactly -0.1: the interval is the point.
        let [d, lo, hi] = rows[1].vs_full["map@10"];
        assert!((d + 0.1).abs() < 1e-12 && (lo + 0.1).abs() < 1e-12 && (hi + 0.1).abs() < 1e-12);
        let md = markdown(&rows, &metrics, "full");
        assert!(
            md.contains("| global | 16 | 2 | 0.6000 ± 0.1414 | -0.1000 [-0.1000, -0.1000] * |"),
            "{md}"
        );
        assert!(html(&rows, &metrics, "full", "t").contains("<td>global</td>"));
        // Several code lengths: a plot of each metric against the length.
        let mut more = runs.clone();
        for r in &runs {
            more.push(RunResult {
                bits: Some(32),
                ..r.clone()
            });
        }
        let page = html(
            &table(&more, "full", &metrics, 100, 0),
            &metrics,
            "full",
            "t",
        );
        assert!(
            page.contains("<svg") && page.contains("map@10 against code length"),
            "{page}"
        );
        assert!(
            !html(&rows, &metrics, "full", "t").contains("<svg"),
            "one length, no plot"
        );
    }

    #[test]
    fn the_interval_carries_the_disagreement_between_seeds() {
        // 50 queries. Against the full method the variant loses 0.3 on every query with
        // seed 0 and gains 0.1 on every query with seed 1: within a seed the differences
        // are constant, so all the uncertainty is between the seeds. Resampling the 100
        // (seed, query) pairs as independent gives about -0.1 +- 0.04, which excludes 0;
        // resampling seeds first gives -0.3 (seed 0 twice), -0.1 or +0.1 (seed 1 twice).
        let q = 50;
        let runs = vec![
            run("full", 0, &vec![0.6; q]),
            run("full", 1, &vec![0.5; q]),
            run("variant", 0, &vec![0.3; q]),
            run("variant", 1, &vec![0.6; q]),
        ];
        let metrics = vec!["map@10".to_string()];
        let rows = table(&runs, "full", &metrics, 1000, 7);
        let [d, lo, hi] = rows[1].vs_full["map@10"];
        assert!((d + 0.1).abs() < 1e-9, "{d}");
        assert!(
            (lo + 0.3).abs() < 1e-9 && (hi - 0.1).abs() < 1e-9,
            "[{lo}, {hi}] should span both seeds' differences, -0.3 and +0.1"
        );
        let md = markdown(&rows, &metrics, "full");
        assert!(!md.contains(" * |"), "no established difference:\n{md}");
        // Within a seed the queries are still resampled: one seed of varying differences
        // gives the one-level query bootstrap.
        let one: Vec<f64> = (0..20).map(|i| f64::from(i % 2)).collect();
        assert_eq!(
            clustered_bootstrap_interval(std::slice::from_ref(&one), 500, 3),
            bootstrap_interval(&one, 500, 3)
        );
    }
}
