//! Approximate nearest neighbours over float descriptors with HNSW (Malkov and Yashunin),
//! through `usearch`, for archives where the exact scan is too slow. Its recall against
//! the exact scan is measured, not assumed: see the tests and
//! `medret bench search-float --hnsw` (`bench/float_graph.sh` runs it on real descriptors).
//!
//! The exact [`crate::FloatIndex`] remains the reference and the default. The graph is
//! faster from about 10,000 descriptors, but its recall falls as the archive grows and
//! collapses where near-duplicates crowd together, while the exact scan still answers in
//! about 30 ms at 1M x 68 on 2 cores; so [`prefers_graph`] switches only where the scan
//! gets slow (`docs/search.md` has the measurements).
//!
//! Why `usearch` and not `instant-distance` (used before): that crate fixed `ef_search` at
//! build time, built single-threaded in practice (663 s for 100k x 128) and had no
//! incremental insert, removal or persistence; `usearch` builds in parallel, inserts and
//! removes in place, tunes `ef_search` per query batch, stores vectors as f32, f16 or i8,
//! and serves a saved graph memory-mapped.

use std::path::Path;

use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{IndexError, Result};
use crate::float::{FloatHit, Metric};

/// Stored floats (cases x dimension) above which [`prefers_graph`] picks the graph: about
/// 45 ms per exact query on the 2-core reference machine (1.5M x 68, or 100k x 1024).
pub const EXACT_SCAN_FLOATS: usize = 100_000_000;

/// Whether an archive of `n` descriptors of dimension `dim` is better served by the graph
/// than by the exact scan: only where the scan's latency becomes noticeable, since the
/// graph gives up exactness (see the module documentation).
pub fn prefers_graph(n: usize, dim: usize) -> bool {
    n.saturating_mul(dim) > EXACT_SCAN_FLOATS
}

/// How the graph stores vectors: f32 keeps the distances exact, f16 halves the memory,
/// i8 quarters it (cosine only), each at some cost in recall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    F32,
    F16,
    I8,
}

impl std::str::FromStr for Storage {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Storage::F32),
            "f16" => Ok(Storage::F16),
            "i8" => Ok(Storage::I8),
            _ => Err(IndexError::Parameter(format!(
                "vector storage {s:?}: expected f32, f16 or i8"
            ))),
        }
    }
}

/// Descriptors a build inserts one at a time before going parallel. usearch 2.26's
/// concurrent `add` can strand a node, stored but out of reach of every search
/// (unum-cloud/USearch#735; the fix, PR #772, is not released), and it does so most in
/// small graphs: built on 16 threads, 200 uniform 8-d descriptors lost 8% of the exact
/// top-5 even with efSearch at twice the archive size, 2,000 lost 2%, 20,000 0.4-0.6%;
/// one thread loses none. Graphs up to this size are therefore built exactly as a
/// sequential build (about a second of inserts); larger ones keep the parallel build and
/// its small residual loss (docs/search.md says why it is not repaired after the fact).
const SEQUENTIAL_SEED: usize = 4096;

/// The graph's parameters, with the paper's names. Larger values: better recall, slower.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// M: edges per node on the upper layers (2M on the base layer).
    pub connectivity: usize,
    /// efConstruction: candidate list length while inserting.
    pub ef_construction: usize,
    /// efSearch: candidate list length while searching (raised to `k` when smaller).
    pub ef_search: usize,
    pub storage: Storage,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            connectivity: 16,
            ef_construction: 128,
            ef_search: 64,
            storage: Storage::F32,
        }
    }
}

/// An HNSW graph over descriptors, each with a case id. Safe to search from many threads
/// at once; inserts take `&self` too (the library locks per node).
pub struct HnswIndex {
    index: Index,
    dim: usize,
    metric: Metric,
    /// efSearch as configured; a search for more than this many hits widens it for that
    /// search only.
    ef_search: std::sync::atomic::AtomicUsize,
}

fn backend(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Parameter(format!("HNSW {what}: {e}"))
}

fn check(v: &[f32], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::NonFinite);
    }
    Ok(())
}

fn metric_kind(metric: Metric) -> MetricKind {
    match metric {
        Metric::Cosine => MetricKind::Cos,
        Metric::L2 => MetricKind::L2sq,
    }
}

impl HnswIndex {
    /// An empty graph.
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Result<Self> {
        if dim == 0 {
            return Err(IndexError::Parameter(
                "descriptor dimension must be at least 1".into(),
            ));
        }
        if params.connectivity < 2 || params.ef_construction == 0 || params.ef_search == 0 {
            return Err(IndexError::Parameter(format!(
                "HNSW parameters {params:?}: connectivity must be at least 2 and both ef at least 1"
            )));
        }
        if params.storage == Storage::I8 && metric != Metric::Cosine {
            return Err(IndexError::Parameter(
                "i8 storage needs the cosine metric (it quantises unit vectors)".into(),
            ));
        }
        let options = IndexOptions {
            dimensions: dim,
            metric: metric_kind(metric),
            quantization: match params.storage {
                Storage::F32 => ScalarKind::F32,
                Storage::F16 => ScalarKind::F16,
                Storage::I8 => ScalarKind::I8,
            },
            connectivity: params.connectivity,
            expansion_add: params.ef_construction,
            expansion_search: params.ef_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| backend("creation", e))?;
        Ok(HnswIndex {
            index,
            dim,
            metric,
            ef_search: params.ef_search.into(),
        })
    }

    /// Builds the graph from all `items`, inserting on every rayon thread. The result
    /// depends on the insertion interleaving, so two builds may differ slightly in recall
    /// (never in correctness of the distances they report).
    pub fn build(
        dim: usize,
        metric: Metric,
        params: HnswParams,
        items: &[(u64, Vec<f32>)],
    ) -> Result<Self> {
        let graph = HnswIndex::new(dim, metric, params)?;
        for (_, v) in items {
            check(v, dim)?;
        }
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        if let Some((id, _)) = items.iter().find(|(id, _)| !seen.insert(*id)) {
            return Err(IndexError::DuplicateId(*id));
        }
        graph.fill(items.len(), |i| (items[i].0, &items[i].1))?;
        Ok(graph)
    }

    /// Builds from a row-major `n x dim` matrix, case ids `0..n`.
    pub fn build_rows(
        dim: usize,
        metric: Metric,
        params: HnswParams,
        rows: &[f32],
    ) -> Result<Self> {
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(IndexError::Parameter(format!(
                "{} values do not make rows of dimension {dim}",
                rows.len()
            )));
        }
        let graph = HnswIndex::new(dim, metric, params)?;
        rows.par_chunks_exact(dim).try_for_each(|r| check(r, dim))?;
        graph.fill(rows.len() / dim, |i| {
            (i as u64, &rows[i * dim..(i + 1) * dim])
        })?;
        Ok(graph)
    }

    /// Inserts `n` items into an empty graph: the first [`SEQUENTIAL_SEED`] from this
    /// thread, the rest on every rayon thread.
    fn fill<'a>(&self, n: usize, item: impl Fn(usize) -> (u64, &'a [f32]) + Sync) -> Result<()> {
        self.reserve(n)?;
        let seed = n.min(SEQUENTIAL_SEED);
        for i in 0..seed {
            let (id, v) = item(i);
            self.insert(id, v)?;
        }
        (seed..n).into_par_iter().try_for_each(|i| {
            let (id, v) = item(i);
            self.insert(id, v)
        })?;
        Ok(())
    }

    fn reserve(&self, n: usize) -> Result<()> {
        // One slot per rayon worker plus the calling thread: the library hands each
        // concurrent insert its own scratch space.
        self.index
            .reserve_capacity_and_threads(n, rayon::current_num_threads() + 1)
            .map_err(|e| backend("reserve", e))
    }

    fn insert(&self, id: u64, v: &[f32]) -> Result<()> {
        self.index.add(id, v).map_err(|e| backend("insert", e))
    }

    /// Inserts one descriptor; the graph grows as needed.
    pub fn add(&self, id: u64, descriptor: &[f32]) -> Result<()> {
        check(descriptor, self.dim)?;
        if self.index.contains(id) {
            return Err(IndexError::DuplicateId(id));
        }
        if self.index.size() + 1 > self.index.capacity() {
            self.reserve((self.index.capacity() * 2).max(64))?;
        }
        self.insert(id, descriptor)
    }

    /// Removes a case; `false` when it was not there.
    pub fn remove(&self, id: u64) -> Result<bool> {
        let n = self.index.remove(id).map_err(|e| backend("removal", e))?;
        Ok(n > 0)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }

    /// Sets efSearch for later searches.
    pub fn set_ef_search(&self, ef: usize) {
        self.ef_search
            .store(ef.max(1), std::sync::atomic::Ordering::Relaxed);
        self.index.change_expansion_search(ef.max(1));
    }

    /// efSearch as configured (a search for more hits uses `k` for that search).
    pub fn ef_search(&self) -> usize {
        self.ef_search.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Approximate `k` nearest, ranked by (distance, id) among those found. Distances are
    /// those of [`crate::FloatIndex`] (`1 - cosine`, squared L2), up to the storage's
    /// rounding.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<FloatHit>> {
        check(query, self.dim)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        // Per search: a large k once must not leave every later search slower (the
        // library keeps one setting per index). Searches that overlap from several
        // threads may run with each other's setting; results stay correct, only their
        // effort varies.
        let ef = self.ef_search().max(k);
        if self.index.expansion_search() != ef {
            self.index.change_expansion_search(ef);
        }
        let m = self
            .index
            .search(query, k)
            .map_err(|e| backend("search", e))?;
        let mut hits: Vec<FloatHit> = m
            .keys
            .iter()
            .zip(&m.distances)
            .map(|(&id, &distance)| FloatHit { distance, id })
            .collect();
        hits.sort_unstable();
        Ok(hits)
    }

    /// Writes the graph and its vectors to `path` (the library's own format).
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = utf8(path)?;
        self.index
            .save(s)
            .map_err(|e| IndexError::Parameter(format!("{}: cannot save: {e}", path.display())))
    }

    /// Loads a saved graph into memory.
    pub fn load(path: &Path) -> Result<Self> {
        Self::open(path, false)
    }

    /// Serves a saved graph memory-mapped: opening costs no reading, pages load on use,
    /// and the graph is read-only (inserts fail).
    pub fn view(path: &Path) -> Result<Self> {
        Self::open(path, true)
    }

    fn open(path: &Path, mapped: bool) -> Result<Self> {
        let s = utf8(path)?;
        let bad = |e: &dyn std::fmt::Display| {
            IndexError::Parameter(format!(
                "{}: not a readable HNSW graph: {e}",
                path.display()
            ))
        };
        let meta = Index::metadata(s).map_err(|e| bad(&e))?;
        let metric = match meta.metric {
            MetricKind::Cos => Metric::Cosine,
            MetricKind::L2sq => Metric::L2,
            other => return Err(bad(&format!("metric {other:?} is not one medret writes"))),
        };
        let index = if mapped {
            Index::restore_view(s)
        } else {
            Index::restore(s)
        }
        .map_err(|e| bad(&e))?;
        Ok(HnswIndex {
            dim: index.dimensions(),
            ef_search: index.expansion_search().into(),
            index,
            metric,
        })
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| IndexError::Parameter(format!("{}: the path is not UTF-8", path.display())))
}

/// Fraction of the exact top-k ids that the approximate top-k found.
pub fn recall(exact: &[FloatHit], approx: &[FloatHit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact
        .iter()
        .filter(|e| approx.iter().any(|a| a.id == e.id))
        .count();
    found as f64 / exact.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FloatIndex;

    /// Clustered data (like trained descriptors), where a graph index should do well.
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<(u64, Vec<f32>)> {
        let mut s = seed;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| rnd()).collect()).collect();
        (0..n as u64)
            .map(|id| {
                let c = &centres[id as usize % centres.len()];
                (id, c.iter().map(|x| x + 0.3 * rnd()).collect())
            })
            .collect()
    }

    fn mean_recall(graph: &HnswIndex, exact: &FloatIndex, queries: &[(u64, Vec<f32>)]) -> f64 {
        queries
            .iter()
            .map(|(_, q)| {
                let e = exact.search(q, 10).unwrap();
                let a = graph.search(q, 10).unwrap();
                assert_eq!(a.len(), 10);
                recall(&e, &a)
            })
            .sum::<f64>()
            / queries.len() as f64
    }

    fn exact_of(items: &[(u64, Vec<f32>)], dim: usize, metric: Metric) -> FloatIndex {
        let mut exact = FloatIndex::new(dim, metric).unwrap();
        for (id, v) in items {
            exact.add(*id, v).unwrap();
        }
        exact
    }

    #[test]
    fn recall_at_10_and_distances_agree_with_the_exact_scan() {
        let dim = 32;
        let items = clustered(3000, dim, 5);
        let queries = clustered(50, dim, 99);
        for metric in [Metric::Cosine, Metric::L2] {
            let exact = exact_of(&items, dim, metric);
            let graph = HnswIndex::build(dim, metric, HnswParams::default(), &items).unwrap();
            assert_eq!(graph.len(), items.len());
            let r = mean_recall(&graph, &exact, &queries);
            assert!(r >= 0.95, "{metric:?}: recall@10 {r}");
            // The graph reports the exact scan's distances for the ids it finds.
            let e = exact.search(&queries[0].1, 10).unwrap();
            for h in graph.search(&queries[0].1, 10).unwrap() {
                if let Some(x) = e.iter().find(|x| x.id == h.id) {
                    let tol = 1e-4 * (1.0 + x.distance.abs());
                    assert!(
                        (x.distance - h.distance).abs() < tol,
                        "{metric:?} {x:?} {h:?}"
                    );
                }
            }
        }
        assert_eq!(recall(&[], &[]), 1.0);
    }

    /// A graph within the sequential seed, built from a 16-thread pool, misses no case: a
    /// search as wide as the archive returns exactly the exact scan's top-5. (Inserted
    /// concurrently, as before the seed, such builds lost 2 to 8% of those hits.)
    #[test]
    fn a_small_graph_built_on_many_threads_misses_no_case() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap();
        let dim = 8;
        let (mut lost, mut asked) = (0, 0);
        for (round, n) in [200, 1000, SEQUENTIAL_SEED].into_iter().enumerate() {
            // Uniform descriptors: no clusters for the graph to lean on.
            let mut s = 17 + round as u64;
            let mut rnd = move || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            let mut vectors = |n: usize| -> Vec<(u64, Vec<f32>)> {
                (0..n as u64)
                    .map(|id| (id, (0..dim).map(|_| rnd()).collect()))
                    .collect()
            };
            let items = vectors(n);
            let queries = vectors(100);
            let graph = pool
                .install(|| HnswIndex::build(dim, Metric::Cosine, HnswParams::default(), &items))
                .unwrap();
            graph.set_ef_search(2 * n);
            let exact = exact_of(&items, dim, Metric::Cosine);
            for (_, q) in &queries {
                let e = exact.search(q, 5).unwrap();
                let a = graph.search(q, 5).unwrap();
                lost += e.iter().filter(|h| !a.iter().any(|x| x.id == h.id)).count();
                asked += e.len();
            }
        }
        assert_eq!(lost, 0, "{lost} of {asked} exact top-5 hits out of reach");
    }

    #[test]
    fn compact_storage_keeps_most_of_the_recall() {
        let dim = 32;
        let items = clustered(2000, dim, 7);
        let queries = clustered(40, dim, 8);
        let exact = exact_of(&items, dim, Metric::Cosine);
        for storage in [Storage::F16, Storage::I8] {
            let p = HnswParams {
                storage,
                ..HnswParams::default()
            };
            let graph = HnswIndex::build(dim, Metric::Cosine, p, &items).unwrap();
            let r = mean_recall(&graph, &exact, &queries);
            assert!(r >= 0.85, "{storage:?}: recall@10 {r}");
        }
        assert!(
            HnswIndex::new(
                dim,
                Metric::L2,
                HnswParams {
                    storage: Storage::I8,
                    ..HnswParams::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn inserts_and_removals_in_place() {
        let dim = 8;
        let items = clustered(300, dim, 3);
        let graph = HnswIndex::new(dim, Metric::L2, HnswParams::default()).unwrap();
        for (id, v) in &items {
            graph.add(*id, v).unwrap();
        }
        assert_eq!(graph.len(), 300);
        assert_eq!(graph.add(5, &items[5].1), Err(IndexError::DuplicateId(5)));
        // A case finds itself at distance 0 until it is removed.
        let top = graph.search(&items[17].1, 1).unwrap();
        assert_eq!((top[0].id, top[0].distance), (17, 0.0));
        assert!(graph.remove(17).unwrap());
        assert!(!graph.contains(17));
        assert!(
            graph
                .search(&items[17].1, 10)
                .unwrap()
                .iter()
                .all(|h| h.id != 17)
        );
        assert!(!graph.remove(17).unwrap());
        assert_eq!(
            graph.add(1000, &[0.0; 7]),
            Err(IndexError::Dimension {
                expected: 8,
                got: 7
            })
        );
        assert_eq!(graph.add(1000, &[f32::NAN; 8]), Err(IndexError::NonFinite));
        let dup = vec![(1, vec![0.0; 8]), (1, vec![1.0; 8])];
        assert_eq!(
            HnswIndex::build(8, Metric::L2, HnswParams::default(), &dup).err(),
            Some(IndexError::DuplicateId(1))
        );
    }

    #[test]
    fn saved_graph_loads_and_maps_with_the_same_answers_and_truncation_is_an_error() {
        let dim = 16;
        let items = clustered(1000, dim, 11);
        let graph = HnswIndex::build(dim, Metric::Cosine, HnswParams::default(), &items).unwrap();
        let dir = std::env::temp_dir().join(format!("medret-hnsw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("graph.usearch");
        graph.save(&path).unwrap();
        let q = &items[42].1;
        let want = graph.search(q, 10).unwrap();
        for opened in [
            HnswIndex::load(&path).unwrap(),
            HnswIndex::view(&path).unwrap(),
        ] {
            assert_eq!(
                (opened.dim(), opened.metric(), opened.len()),
                (dim, Metric::Cosine, 1000)
            );
            assert_eq!(opened.search(q, 10).unwrap(), want);
        }
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.usearch");
        for keep in [10, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            for mapped in [false, true] {
                let e = HnswIndex::open(&cut, mapped)
                    .err()
                    .expect("a truncated graph opened");
                assert!(e.to_string().contains("cut.usearch"), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_k_does_not_raise_later_searches_ef() {
        let params = HnswParams::default();
        let items: Vec<(u64, Vec<f32>)> = (0..200u64)
            .map(|i| {
                (
                    i,
                    (0..8)
                        .map(|j| ((i * 7 + j * 13) % 17) as f32 - 8.0)
                        .collect(),
                )
            })
            .collect();
        let graph = HnswIndex::build(8, Metric::L2, params, &items).unwrap();
        assert_eq!(graph.ef_search(), params.ef_search);
        graph.search(&items[0].1, 150).unwrap();
        assert_eq!(graph.index.expansion_search(), 150);
        graph.search(&items[0].1, 5).unwrap();
        assert_eq!(graph.index.expansion_search(), params.ef_search);
    }
}
