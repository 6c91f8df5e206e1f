//! `medret bench search`: exact Hamming top-k speed on random codes generated in process,
//! so the figure can be compared with FAISS `IndexBinaryFlat` on the same machine.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use medret_index::{HammingIndex, MultiIndex};
use rand::{Rng, SeedableRng};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Queries per second of the exact Hamming top-k scan over N random codes.
    Search(SearchArgs),
}

#[derive(Args)]
pub struct SearchArgs {
    /// Database size.
    #[arg(long, default_value_t = 1_000_000)]
    n: usize,
    /// Code length in bits (a multiple of 8, at most 1024).
    #[arg(long, default_value_t = 64)]
    bits: usize,
    /// Number of queries.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    #[arg(short, long, default_value_t = 100)]
    k: usize,
    /// Also time multi-index hashing (and check it returns the scan's results).
    #[arg(long)]
    mih: bool,
    /// Substring length of multi-index hashing (default: about log2 N).
    #[arg(long)]
    substring_bits: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print `{"qps": ..., "ms_per_query": ...}` (and more fields) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Search(a) => search(a),
    }
}

fn random_code(rng: &mut impl Rng, bits: usize) -> Vec<u64> {
    let words = bits.div_ceil(64);
    let mut c: Vec<u64> = (0..words).map(|_| rng.random()).collect();
    let spare = words * 64 - bits;
    if spare > 0 {
        c[words - 1] &= u64::MAX >> spare;
    }
    c
}

fn search(a: &SearchArgs) -> Result<()> {
    if a.n == 0 || a.queries == 0 {
        bail!("--n and --queries must be at least 1");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut index = HammingIndex::new(a.bits)?;
    let t = Instant::now();
    for id in 0..a.n as u64 {
        index.add(id, &random_code(&mut rng, a.bits))?;
    }
    let build_s = t.elapsed().as_secs_f64();
    let queries: Vec<Vec<u64>> = (0..a.queries)
        .map(|_| random_code(&mut rng, a.bits))
        .collect();

    // One warm-up query, then the timed ones, one at a time as a server would answer them.
    let _ = index.search(&queries[0], a.k)?;
    let t = Instant::now();
    let mut scan_results = Vec::with_capacity(queries.len());
    for q in &queries {
        scan_results.push(index.search(q, a.k)?);
    }
    let secs = t.elapsed().as_secs_f64();
    let qps = a.queries as f64 / secs;
    let bytes = (a.n * index.words() * 8) as f64;
    let mut out = serde_json::json!({
        "n": a.n,
        "bits": a.bits,
        "k": a.k,
        "queries": a.queries,
        "threads": rayon::current_num_threads(),
        "kernel": index.kernel().name(),
        "qps": qps,
        "ms_per_query": 1e3 / qps,
        "scan_gb_per_s": bytes * qps / 1e9,
        "build_s": build_s,
    });

    if a.mih {
        let sub = a
            .substring_bits
            .unwrap_or_else(|| MultiIndex::substring_bits_for(a.bits, a.n, a.k));
        let mut mih = MultiIndex::new(a.bits, sub)?;
        let t = Instant::now();
        for (i, &id) in index.ids().iter().enumerate() {
            let w = index.words();
            mih.add(id, &index.raw_codes()[i * w..(i + 1) * w])?;
        }
        let mih_build = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut same = true;
        for (q, want) in queries.iter().zip(&scan_results) {
            same &= mih.search(q, a.k)? == *want;
        }
        let mih_qps = a.queries as f64 / t.elapsed().as_secs_f64();
        if !same {
            bail!("multi-index hashing disagreed with the scan: a bug, please report it");
        }
        out["mih"] = serde_json::json!({
            "substring_bits": mih.substring_len(),
            "tables": mih.tables(),
            "qps": mih_qps,
            "ms_per_query": 1e3 / mih_qps,
            "speedup_over_scan": mih_qps / qps,
            "build_s": mih_build,
            "identical_to_scan": same,
        });
    }

    if a.json {
        println!("{out}");
    } else {
        println!(
            "exact Hamming top-{} over {} random {}-bit codes, {} threads ({}): {:.1} queries/s, {:.3} ms/query, {:.2} GB/s scanned",
            a.k,
            a.n,
            a.bits,
            rayon::current_num_threads(),
            index.kernel().name(),
            qps,
            1e3 / qps,
            bytes * qps / 1e9
        );
        if let Some(m) = out.get("mih") {
            println!(
                "multi-index hashing ({} tables of {} bits): {:.1} queries/s, {:.1}x the scan, identical results",
                m["tables"],
                m["substring_bits"],
                m["qps"].as_f64().unwrap_or(0.0),
                m["speedup_over_scan"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
