//! A store with one model's in-memory index kept in step with it: loaded from the store
//! when opened, updated on every ingest and delete that goes through it. This is what a
//! long-running search server holds; `medret search` opens one per query.
//!
//! Writes go to the store first. Only a committed ingest or delete touches the index, so
//! the index never holds a case the store does not.

use medret_eval::codes::pack_bytes;
use medret_index::{FloatHit, FloatIndex, HammingIndex, Hit};

use crate::error::{Result, StoreError};
use crate::{CaseStore, Metric, ModelInfo, ModelKind, NewCase};

/// One search result: the store's case id and the distance (Hamming, `1 - cosine`, or
/// squared L2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub id: u64,
    pub distance: f64,
}

enum Index {
    Codes(HammingIndex),
    Floats(FloatIndex),
}

pub struct Archive<S: CaseStore> {
    store: S,
    model: ModelInfo,
    index: Index,
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
    /// Loads `model`'s vectors from `store` into an index.
    pub fn open(mut store: S, model: &str) -> Result<Self> {
        let model = store.model(model)?;
        let name = model.name.clone();
        let err = index_err(&name);
        let mut index = match model.kind {
            ModelKind::Codes { bits } => Index::Codes(HammingIndex::new(bits).map_err(&err)?),
            ModelKind::Descriptors { dim, metric } => Index::Floats(
                FloatIndex::new(
                    dim,
                    match metric {
                        Metric::Cosine => medret_index::Metric::Cosine,
                        Metric::L2 => medret_index::Metric::L2,
                    },
                )
                .map_err(&err)?,
            ),
        };
        for (id, v) in store.vectors(&model.name)? {
            add(&mut index, id, &v).map_err(&err)?;
        }
        Ok(Archive {
            store,
            model,
            index,
        })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn len(&self) -> usize {
        match &self.index {
            Index::Codes(i) => i.len(),
            Index::Floats(i) => i.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ingests into the store (one transaction), then into the index.
    pub fn ingest(&mut self, items: &[(NewCase, Vec<u8>)]) -> Result<Vec<u64>> {
        let ids = self.store.ingest(&self.model.name, items)?;
        let err = index_err(&self.model.name);
        for (id, (_, v)) in ids.iter().zip(items) {
            add(&mut self.index, *id, v).map_err(&err)?;
        }
        Ok(ids)
    }

    /// Deletes a case from the store (every model), then from the index.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        let Some(case) = self.store.case_by_key(key)? else {
            return Ok(false);
        };
        let deleted = self.store.delete(key)?;
        if deleted {
            match &mut self.index {
                Index::Codes(i) => i.remove(case.id),
                Index::Floats(i) => i.remove(case.id),
            };
        }
        Ok(deleted)
    }

    /// The `k` nearest to `query` (the model's stored byte layout), by (distance, id).
    pub fn search(&self, query: &[u8], k: usize) -> Result<Vec<Found>> {
        let err = index_err(&self.model.name);
        Ok(match &self.index {
            Index::Codes(i) => found(i.search(&pack_bytes(query), k).map_err(&err)?),
            Index::Floats(i) => found(i.search(&floats(query), k).map_err(&err)?),
        })
    }

    /// Every case within Hamming distance `radius` (binary codes only).
    pub fn radius(&self, query: &[u8], radius: u32) -> Result<Vec<Found>> {
        match &self.index {
            Index::Codes(i) => Ok(found(
                i.radius(&pack_bytes(query), radius)
                    .map_err(index_err(&self.model.name))?,
            )),
            Index::Floats(_) => Err(StoreError::InvalidCase(
                "radius search applies to binary codes only".into(),
            )),
        }
    }
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

fn add(index: &mut Index, id: u64, v: &[u8]) -> medret_index::Result<()> {
    match index {
        Index::Codes(i) => i.add(id, &pack_bytes(v)),
        Index::Floats(i) => i.add(id, &floats(v)),
    }
}
