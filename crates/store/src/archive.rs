//! A store with one model's in-memory index kept in step with it: loaded from the store
//! when opened, updated on every ingest and delete that goes through it. This is what a
//! long-running search server holds; `medret search` opens one per query.
//!
//! Writes go to the store first. Only a committed ingest or delete touches the index, so
//! the index never holds a case the store does not. Another writer's changes (another
//! process, a replica on the same store) are applied from the store's change log when
//! the generation moved; a full reload happens only when the log no longer reaches back,
//! or when the index was marked stale.
//!
//! Code models stored with their relaxed outputs (`ModelKind::Codes { relaxed: true }`)
//! are searched in two stages: the Hamming index finds every case up to the k-th
//! distance (all of that distance's ties, not just the first k), then cases at equal
//! distance are ordered by the squared Euclidean distance between the query's and the
//! case's relaxed outputs, then by id. Without relaxed outputs ties stay ordered by id.

use std::collections::HashMap;

use medret_eval::codes::pack_bytes;
use medret_eval::ranking::squared_l2;
use medret_index::{FloatHit, FloatIndex, HammingIndex, Hit, HnswIndex, HnswParams};

use crate::error::{Result, StoreError};
use crate::{CaseStore, ModelInfo, ModelKind, NewCase};

/// One search result: the store's case id and the distance (Hamming, `1 - cosine`, or
/// squared L2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub id: u64,
    pub distance: f64,
}

enum Index {
    /// The Hamming index, and each case's relaxed outputs when the model stores them.
    Codes(HammingIndex, Option<HashMap<u64, Vec<f32>>>),
    Floats(FloatIndex),
    Graph(HnswIndex),
}

/// How an archive searches float descriptors. Binary codes always use the exact scan
/// (it runs at memory speed; multi-index hashing is there for larger archives).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FloatSearch {
    /// The exact scan unless the archive is large enough for the graph to pay
    /// ([`medret_index::hnsw::prefers_graph`]), then an HNSW graph with default parameters.
    /// For long-running holders (a server): the graph is built at open.
    #[default]
    Auto,
    /// Always the exact scan.
    Exact,
    /// Always an HNSW graph with these parameters (approximate: recall below 1).
    Graph(HnswParams),
}

impl std::str::FromStr for FloatSearch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(FloatSearch::Auto),
            "exact" => Ok(FloatSearch::Exact),
            "hnsw" => Ok(FloatSearch::Graph(HnswParams::default())),
            _ => Err(format!("float search {s:?}: expected auto, exact or hnsw")),
        }
    }
}

pub struct Archive<S: CaseStore> {
    store: S,
    model: ModelInfo,
    index: Index,
    float: FloatSearch,
    /// The store's generation the index reflects.
    generation: u64,
    /// The index could not follow a committed write (or a holder's lock was poisoned):
    /// reload it from the store before the next use.
    stale: bool,
    /// Times the index was loaded from every stored vector (opening included).
    full_loads: u64,
}

fn floats(v: &[u8]) -> Vec<f32> {
    v.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn index_err(model: &str) -> impl Fn(medret_index::IndexError) -> StoreError + '_ {
    move |e| StoreError::VectorSize {
        model: model.to_string(),
        message: e.to_string(),
    }
}

impl<S: CaseStore> Archive<S> {
    /// Loads `model`'s vectors from `store` into an index ([`FloatSearch::Auto`]).
    pub fn open(store: S, model: &str) -> Result<Self> {
        Self::open_with(store, model, FloatSearch::Auto)
    }

    /// Loads `model`'s vectors from `store` into the index `float` asks for.
    pub fn open_with(mut store: S, model: &str, float: FloatSearch) -> Result<Self> {
        // Read before the vectors: a write in between makes the index newer than its
        // generation, which costs one needless reload, never a missed change.
        let generation = store.generation()?;
        let (model, index) = load(&mut store, model, float)?;
        Ok(Archive {
            store,
            model,
            index,
            float,
            generation,
            stale: false,
            full_loads: 1,
        })
    }

    /// Reloads the index if another connection (another process, or a replica on the
    /// same PostgreSQL store) changed the archive since it was loaded. True if it did.
    pub fn sync(&mut self) -> Result<bool> {
        let g = self.store.generation()?;
        if g == self.generation && !self.stale {
            return Ok(false);
        }
        // What changed, from the store's change log: one new case costs one read, not a
        // reload of every vector (a graph rebuild at a million cases).
        if !self.stale
            && g > self.generation
            && let Some(changes) = self.store.changes(&self.model.name, self.generation, g)?
        {
            let name = self.model.name.clone();
            let applied = changes.iter().try_for_each(|c| {
                remove(&mut self.index, c.case_id).map_err(index_err(&name))?;
                match &c.vector {
                    Some(v) => add(&mut self.index, c.case_id, v).map_err(index_err(&name)),
                    None => Ok(()),
                }
            });
            if applied.is_ok() {
                self.generation = g;
                return Ok(true);
            }
            tracing::warn!(model = %name, "the change log could not be applied; reloading");
        }
        let (model, index) = load(&mut self.store, &self.model.name, self.float)?;
        self.model = model;
        self.index = index;
        self.generation = g;
        self.stale = false;
        self.full_loads += 1;
        Ok(true)
    }

    /// Makes the next [`Archive::sync`] reload the index from the store: for a holder
    /// that cannot vouch for it (a request panicked while holding it).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Times the index was loaded from every stored vector, opening included: a replica
    /// that follows the change log stays at 1.
    pub fn full_loads(&self) -> u64 {
        self.full_loads
    }

    /// Whether the index waits for a reload (see [`Archive::mark_stale`]).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// After our own committed write: bring the index along with `follow`, or mark it
    /// stale when that fails. The store holds the write either way, so the caller is told
    /// it succeeded; the index catches up on the next sync.
    fn follow_commit(&mut self, before: u64, follow: impl FnOnce(&mut Index) -> Result<()>) {
        let done = follow(&mut self.index).and_then(|_| self.after_write(before));
        if let Err(e) = done {
            tracing::warn!(
                model = %self.model.name,
                error = %e,
                "the index could not follow a committed write; it reloads on next use"
            );
            self.stale = true;
        }
    }

    /// After a write of our own that raised the generation by one from `before`: adopt
    /// the new generation, or reload when someone else wrote in between.
    fn after_write(&mut self, before: u64) -> Result<()> {
        let g = self.store.generation()?;
        if g == before + 1 {
            self.generation = g;
            Ok(())
        } else {
            self.sync().map(|_| ())
        }
    }

    /// Whether float searches are approximate (an HNSW graph).
    pub fn is_approximate(&self) -> bool {
        matches!(self.index, Index::Graph(_))
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// The store generation the index reflects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The stored vector of case `id` (one row, not the model's every vector).
    pub fn vector(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        let name = self.model.name.clone();
        self.store.vector(&name, id)
    }
}

/// Loads `model`'s vectors from `store` into the index `float` asks for.
fn load<S: CaseStore>(
    store: &mut S,
    model: &str,
    float: FloatSearch,
) -> Result<(ModelInfo, Index)> {
    let model = store.model(model)?;
    let name = model.name.clone();
    let err = index_err(&name);
    let vectors = store.vectors(&model.name)?;
    let mut index = match model.kind {
        ModelKind::Codes { bits, relaxed } => Index::Codes(
            HammingIndex::new(bits).map_err(&err)?,
            relaxed.then(HashMap::new),
        ),
        ModelKind::Descriptors { dim, metric } => {
            let graph = match float {
                FloatSearch::Exact => None,
                FloatSearch::Graph(p) => Some(p),
                FloatSearch::Auto => {
                    medret_index::hnsw::prefers_graph(vectors.len(), dim).then(HnswParams::default)
                }
            };
            match graph {
                Some(p) => {
                    let items: Vec<(u64, Vec<f32>)> =
                        vectors.iter().map(|(id, v)| (*id, floats(v))).collect();
                    Index::Graph(HnswIndex::build(dim, metric, p, &items).map_err(&err)?)
                }
                None => Index::Floats(FloatIndex::new(dim, metric).map_err(&err)?),
            }
        }
    };
    if !matches!(index, Index::Graph(_)) {
        for (id, v) in &vectors {
            add(&mut index, *id, v).map_err(&err)?;
        }
    }
    Ok((model, index))
}

impl<S: CaseStore> Archive<S> {
    pub fn len(&self) -> usize {
        match &self.index {
            Index::Codes(i, _) => i.len(),
            Index::Floats(i) => i.len(),
            Index::Graph(i) => i.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ingests into the store (one transaction), then into the index. An error means
    /// the store did not commit; once it has, this returns the ids even if the index
    /// could not follow (it is then reloaded before the next search).
    pub fn ingest(&mut self, items: &[(NewCase, Vec<u8>)]) -> Result<Vec<u64>> {
        self.sync()?;
        let before = self.generation;
        let ids = self.store.ingest(&self.model.name, items)?;
        let name = self.model.name.clone();
        self.follow_commit(before, |index| {
            for (id, (_, v)) in ids.iter().zip(items) {
                add(index, *id, v).map_err(index_err(&name))?;
            }
            Ok(())
        });
        Ok(ids)
    }

    /// Deletes a case from the store (every model), then from the index.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        self.sync()?;
        let Some(case) = self.store.case_by_key(key)? else {
            return Ok(false);
        };
        let before = self.generation;
        let deleted = self.store.delete(key)?;
        if deleted {
            let name = self.model.name.clone();
            self.follow_commit(before, |index| {
                remove(index, case.id).map_err(index_err(&name))
            });
        }
        Ok(deleted)
    }

    /// The `k` nearest to `query` (the model's stored byte layout; a code model with
    /// relaxed outputs also takes the code alone, whose relaxed outputs are then its
    /// signs), by (distance, id), or by (distance, relaxed distance, id) for codes with
    /// relaxed outputs.
    pub fn search(&self, query: &[u8], k: usize) -> Result<Vec<Found>> {
        let err = index_err(&self.model.name);
        Ok(match &self.index {
            Index::Codes(i, None) => found(i.search(&pack_bytes(query), k).map_err(&err)?),
            Index::Codes(i, Some(relaxed)) => {
                let (code, q) = self.split_query(query)?;
                let first = i.search(&pack_bytes(code), k).map_err(&err)?;
                // Every case as close as the k-th, so that the second stage sees the
                // whole tie at the cut.
                let all = match first.last() {
                    Some(last) if first.len() == k => {
                        i.radius(&pack_bytes(code), last.distance).map_err(&err)?
                    }
                    _ => first,
                };
                let mut ranked = refine(all, &q, relaxed);
                ranked.truncate(k);
                ranked
            }
            Index::Floats(i) => found(i.search(&floats(query), k).map_err(&err)?),
            Index::Graph(i) => found(i.search(&floats(query), k).map_err(&err)?),
        })
    }

    /// Every case within Hamming distance `radius` (binary codes only).
    pub fn radius(&self, query: &[u8], radius: u32) -> Result<Vec<Found>> {
        match &self.index {
            Index::Codes(i, None) => Ok(found(
                i.radius(&pack_bytes(query), radius)
                    .map_err(index_err(&self.model.name))?,
            )),
            Index::Codes(i, Some(relaxed)) => {
                let (code, q) = self.split_query(query)?;
                let hits = i
                    .radius(&pack_bytes(code), radius)
                    .map_err(index_err(&self.model.name))?;
                Ok(refine(hits, &q, relaxed))
            }
            Index::Floats(_) | Index::Graph(_) => Err(StoreError::InvalidCase(
                "radius search applies to binary codes only".into(),
            )),
        }
    }
}

impl<S: CaseStore> Archive<S> {
    /// A code query's packed code and relaxed outputs: the stored layout, or the code
    /// alone with its signs (+-1) as relaxed outputs (a query given as a hex code).
    fn split_query<'a>(&self, query: &'a [u8]) -> Result<(&'a [u8], Vec<f32>)> {
        let ModelKind::Codes { bits, .. } = self.model.kind else {
            unreachable!("only code models have relaxed outputs")
        };
        let code_len = bits / 8;
        if query.len() == code_len {
            let signs = (0..bits)
                .map(|i| {
                    if query[i / 8] >> (i % 8) & 1 == 1 {
                        1.0
                    } else {
                        -1.0
                    }
                })
                .collect();
            return Ok((query, signs));
        }
        if query.len() != self.model.kind.vector_bytes() {
            return Err(StoreError::VectorSize {
                model: self.model.name.clone(),
                message: format!(
                    "query has {} bytes; the model stores {} (a {bits}-bit code and its relaxed outputs) or takes the code alone ({code_len})",
                    query.len(),
                    self.model.kind.vector_bytes()
                ),
            });
        }
        Ok((&query[..code_len], floats(&query[code_len..])))
    }
}

/// Hamming hits ordered by (distance, squared Euclidean distance between `query` and the
/// case's relaxed outputs, id).
fn refine(hits: Vec<Hit>, query: &[f32], relaxed: &HashMap<u64, Vec<f32>>) -> Vec<Found> {
    let l2 = |id: u64| {
        relaxed
            .get(&id)
            .map_or(f32::INFINITY, |r| squared_l2(r, query))
    };
    let mut keyed: Vec<(u32, f32, u64)> =
        hits.iter().map(|h| (h.distance, l2(h.id), h.id)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    keyed
        .into_iter()
        .map(|(d, _, id)| Found {
            id,
            distance: d as f64,
        })
        .collect()
}

/// Either index's hits as `Found`.
fn found<H: Into<Found>>(hits: Vec<H>) -> Vec<Found> {
    hits.into_iter().map(Into::into).collect()
}

impl From<Hit> for Found {
    fn from(h: Hit) -> Self {
        Found {
            id: h.id,
            distance: h.distance as f64,
        }
    }
}

impl From<FloatHit> for Found {
    fn from(h: FloatHit) -> Self {
        Found {
            id: h.id,
            distance: h.distance as f64,
        }
    }
}

/// Removes `id` from the index if it is there.
fn remove(index: &mut Index, id: u64) -> medret_index::Result<()> {
    match index {
        Index::Codes(i, relaxed) => {
            if let Some(r) = relaxed {
                r.remove(&id);
            }
            i.remove(id);
        }
        Index::Floats(i) => {
            i.remove(id);
        }
        Index::Graph(i) => {
            i.remove(id)?;
        }
    }
    Ok(())
}

fn add(index: &mut Index, id: u64, v: &[u8]) -> medret_index::Result<()> {
    match index {
        Index::Codes(i, None) => i.add(id, &pack_bytes(v)),
        Index::Codes(i, Some(relaxed)) => {
            // The stored layout is the code then `bits` floats: bits / 8 + 4 bits bytes.
            let code_len = v.len() / 33;
            i.add(id, &pack_bytes(&v[..code_len]))?;
            relaxed.insert(id, floats(&v[code_len..]));
            Ok(())
        }
        Index::Floats(i) => i.add(id, &floats(v)),
        Index::Graph(i) => i.add(id, &floats(v)),
    }
}
