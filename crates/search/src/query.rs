//! From a query (an image file, a code, a descriptor or a stored case) to ranked hits with
//! case metadata.

use std::path::Path;

use burn::prelude::Device;
use medret_data::ImageF32;
use medret_models::encoder::{Encoded, Encoder};
use medret_store::{Archive, Case, CaseStore, Found};
use serde::Serialize;

use crate::binding::ModelBinding;
use crate::error::{Result, SearchError};

/// One result as front ends show it. The patient id is masked unless asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub rank: usize,
    pub case_id: String,
    pub path: String,
    pub distance: f64,
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grade: Option<u8>,
    pub patient_id: String,
    pub study: serde_json::Value,
}

/// `****` for a present patient id, empty for none.
pub fn mask(id: &str) -> String {
    if id.is_empty() {
        String::new()
    } else {
        "****".into()
    }
}

/// Turns index hits into [`Hit`]s: drops `exclude` (a query case), stops at `k` (unless
/// `k` is `None`, for radius searches).
pub fn collect_hits(
    store: &mut dyn CaseStore,
    found: Vec<Found>,
    exclude: Option<u64>,
    k: Option<usize>,
    show_ids: bool,
) -> Result<Vec<Hit>> {
    let mut out = Vec::new();
    for f in found.into_iter().filter(|f| Some(f.id) != exclude) {
        if k.is_some_and(|k| out.len() == k) {
            break;
        }
        let c: Case = store.case(f.id)?.ok_or_else(|| {
            SearchError::Invalid(format!("case {} vanished during the search", f.id))
        })?;
        out.push(Hit {
            rank: out.len() + 1,
            case_id: c.key,
            path: c.path,
            distance: f.distance,
            labels: c.labels,
            grade: c.grade,
            patient_id: if show_ids {
                c.patient_id.clone()
            } else {
                mask(&c.patient_id)
            },
            study: c.study,
        });
    }
    Ok(out)
}

/// Opens the model folder that built store model `model` (or `dir_override`, when the
/// folder moved), verified against what the store recorded.
pub fn open_model_encoder(
    store: &mut dyn CaseStore,
    store_name: &str,
    model: &str,
    dir_override: Option<&Path>,
    device: &Device,
) -> Result<Encoder> {
    let info = store.model(model)?;
    let binding = ModelBinding::from_config_hash(&info.config_hash).ok_or_else(|| SearchError::Model {
        model: model.into(),
        store: store_name.into(),
        message: "was ingested from code or descriptor files, with no model folder to encode an image; query with --code, --descriptor-file or --case".into(),
    })?;
    let dir = dir_override.unwrap_or(&binding.model_dir);
    let encoder = Encoder::open(dir, device)?;
    binding.check(&encoder.card, dir, model, store_name)?;
    Ok(encoder)
}

/// What an image query gives.
pub struct ImageResults {
    pub hits: Vec<Hit>,
    /// The query as the archive compares it: packed code bytes or f32 descriptor bytes.
    pub vector: Vec<u8>,
    /// The query's code or descriptor, probabilities and explanation.
    pub query: Encoded,
    /// The query as the model saw it (before normalisation), for overlays.
    pub shown: ImageF32,
    /// The query as decoded, for explanations that run the model again.
    pub decoded: ImageF32,
}

/// Searches `archive` with an image file (PNG, JPEG, DICOM): the top `k`, or every case
/// within Hamming distance `radius`.
pub fn search_image<S: CaseStore>(
    archive: &mut Archive<S>,
    encoder: &Encoder,
    image: &Path,
    k: usize,
    radius: Option<u32>,
    show_ids: bool,
    explain: bool,
) -> Result<ImageResults> {
    let decoded = medret_data::decode::decode_any(image)?;
    let shown = encoder.display_image(decoded.clone());
    let query = encoder
        .encode_images(vec![decoded.clone()], explain)
        .remove(0);
    // A descriptor model's archive may hold its binarised codes instead of the floats.
    let vector = match (archive.model().kind, &query.code) {
        (medret_store::ModelKind::Codes { .. }, Some(code)) => code.clone(),
        _ => query.vector.clone(),
    };
    let found = match radius {
        Some(r) => archive.radius(&vector, r)?,
        None => archive.search(&vector, k)?,
    };
    let hits = collect_hits(
        archive.store(),
        found,
        None,
        radius.is_none().then_some(k),
        show_ids,
    )?;
    Ok(ImageResults {
        hits,
        vector,
        query,
        shown,
        decoded,
    })
}
