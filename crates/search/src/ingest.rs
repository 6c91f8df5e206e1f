//! Records to cases, and "encode with a trained model, then ingest" in one step.

use std::path::Path;

use medret_data::Record;
use medret_models::encoder::Encoder;
use medret_models::model_card::Output;
use medret_store::{CaseStore, Metric, ModelInfo, ModelKind, NewCase};

use crate::binding::ModelBinding;
use crate::error::{Result, SearchError};

/// The case a record becomes: its id as the key, labels, grade, patient id (stored for the
/// archive, never logged) and study metadata (view, eye, split and the dataset's other
/// columns; never DICOM headers wholesale).
pub fn case_from_record(r: &Record) -> NewCase {
    NewCase {
        key: r.id.clone(),
        path: r.source.describe(),
        labels: r.labels.clone(),
        grade: r.grade,
        patient_id: r.patient_id.clone(),
        study: serde_json::json!({
            "view": r.view,
            "eye": r.eye.map(|e| e.name()),
            "split": r.split.map(|s| s.name()),
            "meta": r.meta,
        }),
    }
}

/// The store's model kind for an encoder: its card's output, or with `binary` the
/// binarised descriptors of a descriptor model trained with `binary_bits`.
pub fn model_kind(encoder: &Encoder, binary: bool) -> Result<ModelKind> {
    Ok(match (encoder.card.output, binary) {
        (Output::Codes { bits }, _) => ModelKind::Codes { bits },
        (Output::Descriptors { .. }, true) => ModelKind::Codes {
            bits: encoder.binary_bits().ok_or_else(|| {
                SearchError::Invalid(format!(
                    "{}: this model has no binary codes; train it with --binary-bits to index them",
                    encoder.dir.display()
                ))
            })?,
        },
        (Output::Descriptors { dim }, false) => ModelKind::Descriptors {
            dim,
            metric: Metric::Cosine,
        },
    })
}

/// Encodes `records` with `encoder` (all of them, before the store is touched), then
/// ingests them under `name` in one transaction. `build` creates the model (refused if it
/// exists); otherwise the model must exist and have been built by this very model folder.
#[allow(clippy::too_many_arguments)]
pub fn ingest_with_model(
    store: &mut dyn CaseStore,
    store_name: &str,
    name: &str,
    encoder: &Encoder,
    records: &[Record],
    build: bool,
    binary: bool,
    batch: usize,
    progress: &dyn Fn(usize),
) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Err(SearchError::Invalid(
            "no images to index (is the split empty?)".into(),
        ));
    }
    let binding = ModelBinding::new(&encoder.dir, &encoder.card);
    let kind = model_kind(encoder, binary)?;
    match store.model(name) {
        Ok(existing) if build => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: format!(
                    "already exists ({}); use `medret index add`",
                    serde_json::to_string(&existing.kind).unwrap_or_default()
                ),
            });
        }
        Ok(existing) if existing.kind != kind => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: format!(
                    "stores {}, but this ingest would add {}",
                    serde_json::to_string(&existing.kind).unwrap_or_default(),
                    serde_json::to_string(&kind).unwrap_or_default()
                ),
            });
        }
        Ok(existing) => match ModelBinding::from_config_hash(&existing.config_hash) {
            Some(b) => b.check(&encoder.card, &encoder.dir, name, store_name)?,
            None => {
                return Err(SearchError::Model {
                    model: name.into(),
                    store: store_name.into(),
                    message: "holds vectors ingested from files, not from a model folder; add with --codes or --descriptors".into(),
                });
            }
        },
        Err(_) if !build => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: "does not exist; use `medret index build`".into(),
            });
        }
        Err(_) => {}
    }
    let vectors = encoder.encode_records_as(records, batch, binary, progress)?;
    let items: Vec<(NewCase, Vec<u8>)> =
        records.iter().map(case_from_record).zip(vectors).collect();
    if build {
        store.add_model(&ModelInfo {
            name: name.into(),
            kind,
            config_hash: binding.to_config_hash(),
        })?;
    }
    Ok(store.ingest(name, &items)?)
}

/// Records of `split` (`None`: all).
pub fn select_split(records: &[Record], split: Option<medret_data::Split>) -> Vec<Record> {
    records
        .iter()
        .filter(|r| split.is_none() || r.split == split)
        .cloned()
        .collect()
}

/// A model folder's path as stored (absolute when it exists).
pub fn absolute(dir: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}
