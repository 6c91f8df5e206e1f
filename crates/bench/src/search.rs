//! Search speed on data generated in process (or read from files), so that the figures
//! compare with FAISS on the same machine (`bench/search_vs_faiss.sh`): exact Hamming
//! top-k (`IndexBinaryFlat`), multi-index hashing, and exact float top-k (`IndexFlatIP`).

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use medret_index::{HammingIndex, MultiIndex};
use rand::{Rng, SeedableRng};

#[derive(Args)]
pub struct FloatArgs {
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    #[arg(long, default_value_t = 20)]
    queries: usize,
    #[arg(short, long, default_value_t = 100)]
    k: usize,
    /// Read the database from a float32 .npy (N x d) instead of generating it, e.g. the
    /// descriptors `medret encode` wrote for a training split.
    #[arg(long)]
    data_file: Option<std::path::PathBuf>,
    /// Read the queries from a float32 .npy (Q x d), e.g. the test split's descriptors.
    #[arg(long)]
    queries_file: Option<std::path::PathBuf>,
    /// Grow the database read from --data-file to this many rows: the originals, then
    /// noisy copies (each row plus Gaussian noise of --noise times its norm), so a graph
    /// index is timed on the structure of real descriptors rather than uniform noise.
    #[arg(long)]
    replicate_to: Option<usize>,
    /// Relative noise of the copies made by --replicate-to.
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also build an HNSW graph (usearch) and report its build time, and queries/s and
    /// recall@10 against the exact scan for each --ef.
    #[arg(long)]
    hnsw: bool,
    /// HNSW M (edges per node).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW efConstruction.
    #[arg(long, default_value_t = 128)]
    ef_construction: usize,
    /// HNSW efSearch values to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    ef: Vec<usize>,
    /// How the graph stores vectors: f32, f16 or i8.
    #[arg(long, default_value = "f32")]
    storage: medret_index::Storage,
    #[arg(long)]
    json: bool,
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
    /// Read the database codes from a uint8 .npy (N x bits/8) instead of generating them,
    /// e.g. to time FAISS on the same codes (`bench/search_vs_faiss.sh`).
    #[arg(long)]
    codes_file: Option<std::path::PathBuf>,
    /// Read the query codes from a uint8 .npy (Q x bits/8).
    #[arg(long)]
    queries_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print `{"qps": ..., "ms_per_query": ...}` (and more fields) as JSON.
    #[arg(long)]
    json: bool,
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

pub fn search(a: &SearchArgs) -> Result<()> {
    if a.n == 0 || a.queries == 0 {
        bail!("--n and --queries must be at least 1");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let from_file = |p: &std::path::Path| -> Result<(usize, Vec<Vec<u64>>)> {
        let (shape, bytes) = medret_data::npy::read_u8_matrix(p)?;
        let rows = bytes
            .chunks_exact(shape[1].max(1))
            .map(medret_eval::codes::pack_bytes)
            .collect();
        Ok((shape[1] * 8, rows))
    };
    let (bits, db) = match &a.codes_file {
        Some(p) => from_file(p)?,
        None => (
            a.bits,
            (0..a.n).map(|_| random_code(&mut rng, a.bits)).collect(),
        ),
    };
    let mut index = HammingIndex::new(bits)?;
    let t = Instant::now();
    for (id, c) in db.iter().enumerate() {
        index.add(id as u64, c)?;
    }
    drop(db);
    let build_s = t.elapsed().as_secs_f64();
    let queries: Vec<Vec<u64>> = match &a.queries_file {
        Some(p) => {
            let (qb, q) = from_file(p)?;
            if qb != bits {
                bail!("{}: {qb}-bit queries for {bits}-bit codes", p.display());
            }
            q
        }
        None => (0..a.queries)
            .map(|_| random_code(&mut rng, bits))
            .collect(),
    };
    let a = &SearchArgs {
        n: index.len(),
        bits,
        queries: queries.len(),
        codes_file: None,
        queries_file: None,
        substring_bits: a.substring_bits,
        ..*a
    };

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

pub fn search_float(a: &FloatArgs) -> Result<()> {
    use medret_index::{FloatIndex, HnswIndex, HnswParams, Metric, hnsw::recall};
    use rand_distr::{Distribution, StandardNormal};
    use rayon::prelude::*;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let load = |p: &std::path::Path| -> Result<(usize, usize, Vec<f32>)> {
        let (shape, v) = medret_data::npy::read_f32_matrix(p)?;
        if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
            bail!(
                "{}: expected a non-empty N x d matrix, found {shape:?}",
                p.display()
            );
        }
        Ok((shape[0], shape[1], v))
    };
    let (mut n, dim, mut data) = match &a.data_file {
        Some(p) => load(p)?,
        None => (
            a.n,
            a.dim,
            (0..a.n * a.dim)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect(),
        ),
    };
    if let Some(target) = a.replicate_to {
        if a.data_file.is_none() {
            bail!("--replicate-to grows the rows of --data-file; give one");
        }
        let base = n;
        data.reserve(target.saturating_sub(n) * dim);
        let scale = a.noise / (dim as f32).sqrt();
        while n < target {
            let src = &data[(n % base) * dim..(n % base + 1) * dim];
            let norm = src.iter().map(|x| x * x).sum::<f32>().sqrt();
            let row: Vec<f32> = src
                .iter()
                .map(|x| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    x + scale * norm * z
                })
                .collect();
            data.extend_from_slice(&row);
            n += 1;
        }
    }
    let (nq, queries) = match &a.queries_file {
        Some(p) => {
            let (q, d, v) = load(p)?;
            if d != dim {
                bail!("{}: dimension {d}, the database has {dim}", p.display());
            }
            (q, v)
        }
        None => (
            a.queries,
            (0..a.queries * dim)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect(),
        ),
    };
    let mut index = FloatIndex::new(dim, Metric::Cosine)?;
    for (i, row) in data.chunks_exact(dim).enumerate() {
        index.add(i as u64, row)?;
    }
    let hnsw = if a.hnsw {
        let params = HnswParams {
            connectivity: a.m,
            ef_construction: a.ef_construction,
            ef_search: a.ef.first().copied().unwrap_or(64),
            storage: a.storage,
        };
        let t = Instant::now();
        let h = HnswIndex::build_rows(dim, Metric::Cosine, params, &data)?;
        Some((h, t.elapsed().as_secs_f64()))
    } else {
        None
    };
    drop(data);
    let _ = index.search(&queries[..dim], a.k)?;
    let t = Instant::now();
    let mut exact10 = Vec::with_capacity(nq);
    for q in queries.chunks_exact(dim) {
        let _ = index.search(q, a.k)?;
    }
    let qps = nq as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for q in queries.chunks_exact(dim) {
        exact10.push(index.search(q, 10)?);
    }
    let qps10 = nq as f64 / t.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "n": n, "dim": dim, "k": a.k, "queries": nq,
        "threads": rayon::current_num_threads(),
        "qps": qps, "ms_per_query": 1e3 / qps, "qps_top10": qps10,
        "scan_gb_per_s": (n * dim * 4) as f64 * qps / 1e9,
    });
    if !a.json {
        println!(
            "exact cosine top-{} over {n} x {dim} float32, {} threads: {qps:.2} queries/s, {:.2} ms/query ({qps10:.2} queries/s for top-10)",
            a.k,
            rayon::current_num_threads(),
            1e3 / qps
        );
    }
    if let Some((h, build_s)) = &hnsw {
        let mut rows = Vec::new();
        for &ef in &a.ef {
            h.set_ef_search(ef);
            let _ = h.search(&queries[..dim], 10)?;
            // One query at a time (latency, one core) and all queries across the rayon
            // threads (throughput): the exact scan above already uses every thread per query.
            let t = Instant::now();
            let mut approx = Vec::with_capacity(nq);
            for q in queries.chunks_exact(dim) {
                approx.push(h.search(q, 10)?);
            }
            let seq = nq as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            queries
                .par_chunks_exact(dim)
                .try_for_each(|q| h.search(q, 10).map(|_| ()))?;
            let par = nq as f64 / t.elapsed().as_secs_f64();
            let r = exact10
                .iter()
                .zip(&approx)
                .map(|(e, g)| recall(e, g))
                .sum::<f64>()
                / nq as f64;
            // Recall counts ids, which is harsh where many cases lie at nearly the same
            // distance (near-duplicates): the distance ratio says how much farther the
            // graph's top-10 are than the true top-10 (1.0: as near).
            let ratios: Vec<f64> = exact10
                .iter()
                .zip(&approx)
                .filter_map(|(e, g)| {
                    let de: f64 = e.iter().map(|h| h.distance as f64).sum();
                    let dg: f64 = g.iter().map(|h| h.distance as f64).sum();
                    (de > 0.0 && g.len() == e.len()).then_some(dg / de)
                })
                .collect();
            let ratio = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
            if !a.json {
                println!(
                    "HNSW (M {}, efConstruction {}, efSearch {ef}, {:?}): recall@10 {r:.3}, distance ratio {ratio:.4}, {seq:.0} queries/s one at a time ({:.1}x the exact top-10), {par:.0} queries/s on {} threads",
                    a.m,
                    a.ef_construction,
                    a.storage,
                    seq / qps10,
                    rayon::current_num_threads()
                );
            }
            rows.push(serde_json::json!({
                "ef_search": ef, "recall_at_10": r, "distance_ratio": ratio, "qps_top10": seq,
                "qps_top10_parallel": par, "speedup_over_exact_top10": seq / qps10,
            }));
        }
        if !a.json {
            println!("HNSW built in {build_s:.1} s");
        }
        out["hnsw"] = serde_json::json!({
            "m": a.m, "ef_construction": a.ef_construction, "storage": a.storage,
            "build_s": build_s, "by_ef": rows,
        });
    }
    if a.json {
        println!("{out}");
    }
    Ok(())
}
