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

/// Parses a query code given as hex (`bits / 8` bytes, byte 0 first, optional `0x`).
pub fn parse_hex_code(s: &str, bytes: usize) -> Result<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    // Checked before slicing: byte offsets would split a multi-byte character.
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(SearchError::Invalid(format!(
            "query code: `{c}` is not a hex digit"
        )));
    }
    if s.len() != bytes * 2 {
        return Err(SearchError::Invalid(format!(
            "query code has {} hex digits; this model's codes need {}",
            s.len(),
            bytes * 2
        )));
    }
    Ok((0..bytes)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex digits"))
        .collect())
}

/// Lowercase hex of code bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Searches with a stored case's own vector (one row read); the case itself is left out
/// of the results.
pub fn search_case<S: CaseStore>(
    archive: &mut Archive<S>,
    key: &str,
    k: usize,
    radius: Option<u32>,
    show_ids: bool,
) -> Result<Vec<Hit>> {
    let model = archive.model().name.clone();
    let case = archive
        .store()
        .case_by_key(key)?
        .ok_or_else(|| SearchError::NotFound(format!("no case `{key}` in the store")))?;
    let vector = archive.vector(case.id)?.ok_or_else(|| {
        SearchError::NotFound(format!("case `{key}` has no vector for model `{model}`"))
    })?;
    search_vector(archive, &vector, k, radius, Some(case.id), show_ids)
}

/// Searches with a query vector in the model's stored layout: the top `k` (leaving out
/// case `exclude`), or every case within Hamming distance `radius`.
pub fn search_vector<S: CaseStore>(
    archive: &mut Archive<S>,
    vector: &[u8],
    k: usize,
    radius: Option<u32>,
    exclude: Option<u64>,
    show_ids: bool,
) -> Result<Vec<Hit>> {
    let want = archive.model().kind.vector_bytes();
    if vector.len() != want {
        return Err(SearchError::Invalid(format!(
            "query vector has {} bytes; model `{}` stores {want}",
            vector.len(),
            archive.model().name
        )));
    }
    let found = match radius {
        Some(r) => archive.radius(vector, r)?,
        None => archive.search(vector, k + usize::from(exclude.is_some()))?,
    };
    collect_hits(
        archive.store(),
        found,
        exclude,
        radius.is_none().then_some(k),
        show_ids,
    )
}

#[cfg(test)]
mod tests {
    use super::parse_hex_code;

    #[test]
    fn hex_codes_parse_and_bad_ones_are_errors_not_panics() {
        assert_eq!(parse_hex_code("0x0aFf", 2).unwrap(), vec![0x0a, 0xff]);
        // "aé0" is four bytes, the length of two hex bytes; slicing it at byte 2 would cut
        // "é" in half and panic.
        let e = parse_hex_code("aé0", 2).unwrap_err().to_string();
        assert!(e.contains("not a hex digit"), "{e}");
        assert!(
            parse_hex_code("0g", 1)
                .unwrap_err()
                .to_string()
                .contains("`g`")
        );
        let e = parse_hex_code("0a", 2).unwrap_err().to_string();
        assert!(e.contains("need 4"), "{e}");
    }
}
