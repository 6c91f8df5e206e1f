//! From a query (an image file, a code, a descriptor or a stored case) to ranked hits with
//! case metadata.

use std::path::Path;

use burn::prelude::Device;
use medret_data::ImageF32;
use medret_models::encoder::{Encoded, Encoder};
use medret_store::{Archive, Case, CaseStore, Found};
use serde::Serialize;

use medret_eval::expansion::Expansion;

use crate::binding::ModelBinding;
use crate::error::{Result, SearchError};

/// One result as front ends show it. The patient id is masked unless asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The store's numeric id (what an opaque case id encrypts).
    #[serde(skip)]
    pub id: u64,
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

/// Hits in one answer at most, also for a radius search (the rest by `offset`): one
/// request must not turn into thousands of store reads.
pub const MAX_HITS: usize = 500;

/// Hits fetched beyond `k` from the index, to fill the places of cases deleted between the
/// index search and the reading of their rows.
const VANISH_SLACK: usize = 8;

/// Nearest cases a filtered search looks at, per query vector, at most. Filters are
/// applied to the ranked list, so a rare filter value could otherwise read the whole
/// archive; when this many did not fill the answer, it says it was cut.
pub const MAX_FILTER_CANDIDATES: usize = 10_000;

/// One answer: the hits, whether the ranking was exact (an HNSW graph is approximate),
/// and whether it was cut short (a radius search beyond [`QueryOptions::max_hits`], whose
/// next page starts at `next_offset`, or a filtered search that ran out of candidates).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub exact: bool,
    pub truncated: bool,
    pub next_offset: Option<usize>,
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
        // Deleted by another writer since the index was searched: left out.
        let Some(c) = store.case(f.id)? else {
            continue;
        };
        out.push(hit(out.len() + 1, c, f.distance, show_ids));
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
    /// Whether the ranking was exact and the answer complete ([`Page`]).
    pub exact: bool,
    pub truncated: bool,
    pub next_offset: Option<usize>,
    /// The query as the archive compares it: packed code bytes or f32 descriptor bytes.
    pub vector: Vec<u8>,
    /// The query's code or descriptor, probabilities and explanation.
    pub query: Encoded,
    /// The query as the model saw it (before normalisation), for overlays.
    pub shown: ImageF32,
    /// The query as decoded, for explanations that run the model again (`None` when
    /// the holder let it go early, as the server does).
    pub decoded: Option<ImageF32>,
    /// Seconds spent encoding (the network, with the explanation when asked for) and
    /// searching (index and case metadata).
    pub encode_seconds: f64,
    pub search_seconds: f64,
}

/// Searches `archive` with an image file (PNG, JPEG, DICOM): the top `k`, or every case
/// within Hamming distance `radius`.
pub fn search_image<S: CaseStore>(
    archive: &mut Archive<S>,
    encoder: &Encoder,
    image: &Path,
    opts: &QueryOptions,
) -> Result<ImageResults> {
    let decoded = medret_data::decode::decode_any(image)?;
    search_decoded(archive, encoder, decoded, opts)
}

/// Neighbours αQE may add to a query: each costs a stored-vector read, and Radenović et
/// al. found 1 to 10 best.
pub const MAX_QE: usize = 50;

/// What every query takes besides the query itself.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOptions {
    pub k: usize,
    /// Codes only: every case within this Hamming distance instead of the top `k`.
    pub radius: Option<u32>,
    pub show_ids: bool,
    /// Compute the query's saliency map and crop box.
    pub explain: bool,
    pub filters: Filters,
    /// Search by this part of the query image only.
    pub region: Option<Region>,
    /// Hits to skip (paging through a radius search).
    pub offset: usize,
    /// Hits of a radius search in one answer at most ([`MAX_HITS`] by default).
    pub max_hits: usize,
    /// Image queries: average query expansion (αQE) with this many nearest cases (0: off).
    pub qe: usize,
    /// The exponent of αQE's cosine weights.
    pub qe_alpha: f32,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            k: 10,
            radius: None,
            show_ids: false,
            explain: false,
            filters: Filters::default(),
            region: None,
            offset: 0,
            max_hits: MAX_HITS,
            qe: 0,
            qe_alpha: Expansion::default().alpha,
        }
    }
}

/// Restricts results to cases whose metadata match every field given: a label among the
/// case's labels, the study's view, eye and split, the DR grade.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, Serialize)]
pub struct Filters {
    pub label: Option<String>,
    pub view: Option<String>,
    pub eye: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub grade: Option<u8>,
    pub split: Option<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    /// Whether `case` passes every filter. Text compares case-insensitively.
    pub fn keeps(&self, case: &Case) -> bool {
        let study = |k: &str| case.study.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || w.eq_ignore_ascii_case(have))
        };
        eq(&self.view, study("view"))
            && eq(&self.eye, study("eye"))
            && eq(&self.split, study("split"))
            && self.grade.is_none_or(|g| case.grade == Some(g))
            && self.label.as_deref().is_none_or(|l| {
                l.is_empty() || case.labels.iter().any(|c| c.eq_ignore_ascii_case(l))
            })
    }
}

/// An optional whole number from JSON, also when written as `2.0` (JSON Schema calls
/// that an integer; serde does not).
pub fn whole_number<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    whole
        .and_then(|v| T::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}

/// A rectangle of the query image in fractions of its width and height (0 to 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Region {
    /// Parses `x,y,w,h`.
    pub fn parse(s: &str) -> Result<Region> {
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| SearchError::Invalid(format!("region `{s}`: expected x,y,w,h")))?;
        match v[..] {
            [x, y, w, h] => Ok(Region { x, y, w, h }),
            _ => Err(SearchError::Invalid(format!(
                "region `{s}`: expected four numbers x,y,w,h"
            ))),
        }
    }

    /// The region of `img`, refused unless it lies inside the image and spans at least
    /// 8 pixels each way.
    pub fn crop(&self, img: &ImageF32) -> Result<ImageF32> {
        let ok = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(ok(self.x) && ok(self.y) && ok(self.w) && ok(self.h))
            || self.x + self.w > 1.0 + 1e-9
            || self.y + self.h > 1.0 + 1e-9
        {
            return Err(SearchError::Invalid(format!(
                "region {:?} must lie inside the image (fractions from 0 to 1)",
                (self.x, self.y, self.w, self.h)
            )));
        }
        let x = (self.x * img.width as f64).floor() as usize;
        let y = (self.y * img.height as f64).floor() as usize;
        let w = ((self.w * img.width as f64).round() as usize).min(img.width - x);
        let h = ((self.h * img.height as f64).round() as usize).min(img.height - y);
        if w < 8 || h < 8 {
            return Err(SearchError::Invalid(format!(
                "region of {w}x{h} pixels is too small to search by (8x8 at least)"
            )));
        }
        Ok(medret_data::transform::crop(img, x, y, w, h))
    }
}

/// An image query encoded, before any archive is touched.
pub struct EncodedQuery {
    pub vector: Vec<u8>,
    pub query: Encoded,
    pub shown: ImageF32,
    /// The full-size image, for explanations that run the model again; a holder that
    /// needs none sets it to `None` to free its memory before searching.
    pub decoded: Option<ImageF32>,
    pub encode_seconds: f64,
}

/// Runs the network on a decoded image (cut to `opts.region` first, if given) for the
/// archive model `info`, as it encodes its cases (with its mirror, for an archive built
/// with flip test-time augmentation). Needs no archive, so a server runs it outside any
/// lock.
///
/// With `keep_decoded` false the full-size image is handed to the network rather than
/// copied for the caller: one full-size copy fewer (a server's memory per upload).
pub fn encode_query(
    encoder: &Encoder,
    info: &medret_store::ModelInfo,
    decoded: ImageF32,
    opts: &QueryOptions,
    keep_decoded: bool,
) -> Result<EncodedQuery> {
    let decoded = match &opts.region {
        Some(r) => r.crop(&decoded)?,
        None => decoded,
    };
    let t = std::time::Instant::now();
    let shown = encoder.display_image(decoded.clone());
    let (input, decoded) = if keep_decoded {
        (decoded.clone(), Some(decoded))
    } else {
        (decoded, None)
    };
    let flip = ModelBinding::flip_tta_of(&info.config_hash);
    let query = encoder
        .encode_images_as(vec![input], opts.explain, flip)
        .remove(0);
    Ok(EncodedQuery {
        vector: stored_vector(info.kind, &query),
        query,
        shown,
        decoded,
        encode_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Searches `archive` with an encoded image query.
pub fn search_encoded<S: CaseStore>(
    archive: &mut Archive<S>,
    q: EncodedQuery,
    opts: &QueryOptions,
) -> Result<ImageResults> {
    let t = std::time::Instant::now();
    if opts.qe > MAX_QE {
        return Err(SearchError::Invalid(format!(
            "query expansion takes at most {MAX_QE} neighbours, not {}",
            opts.qe
        )));
    }
    let vector = if opts.qe > 0 {
        expand_query(archive, &q, opts)?
    } else {
        q.vector
    };
    let page = search_vector_page(archive, &vector, opts, &[])?;
    Ok(ImageResults {
        hits: page.hits,
        exact: page.exact,
        truncated: page.truncated,
        next_offset: page.next_offset,
        vector,
        query: q.query,
        shown: q.shown,
        decoded: q.decoded,
        encode_seconds: q.encode_seconds,
        search_seconds: t.elapsed().as_secs_f64(),
    })
}

/// αQE at search time, as `eval --qe` does it (Radenović et al. 2019): the query's
/// continuous vector (relaxed code or descriptor) summed with its `opts.qe` nearest
/// cases' stored ones, each weighted by `max(0, cos)^opts.qe_alpha`, the nearest ranked
/// as the query itself is (filters do not apply to them); a code is then the sign of the
/// expanded relaxed code. Needs the continuous vectors in the archive: a hash archive
/// with relaxed outputs, or float descriptors.
fn expand_query<S: CaseStore>(
    archive: &mut Archive<S>,
    q: &EncodedQuery,
    opts: &QueryOptions,
) -> Result<Vec<u8>> {
    use medret_store::ModelKind;
    let kind = archive.model().kind;
    let continuous = |v: &[u8]| -> Option<Vec<f32>> {
        let floats = match kind {
            ModelKind::Codes { relaxed: true, .. } => v.get(kind.code_bytes()?..)?,
            ModelKind::Descriptors { .. } => v,
            ModelKind::Codes { .. } => return None,
        };
        Some(
            floats
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    };
    let own = continuous(&q.vector).ok_or_else(|| {
        SearchError::Invalid(format!(
            "query expansion needs the continuous vectors, and model `{}` stores codes alone \
             (rebuild the archive with the model folder to store the hash layer's outputs)",
            archive.model().name
        ))
    })?;
    archive.sync()?;
    let mut neighbours = Vec::new();
    for f in archive.search(&q.vector, opts.qe)? {
        // A case deleted since the search has no vector: it is left out.
        if let Some(v) = archive.vector(f.id)?.as_deref().and_then(continuous) {
            neighbours.push(v);
        }
    }
    let expanded = medret_eval::expansion::alpha_expand(
        &own,
        neighbours.iter().map(Vec::as_slice),
        opts.qe,
        opts.qe_alpha,
    );
    Ok(match kind {
        ModelKind::Codes { .. } => {
            let mut v = medret_models::cxr_hash::hash_head::pack_code_bytes(&expanded);
            v.extend(expanded.iter().flat_map(|x| x.to_le_bytes()));
            v
        }
        ModelKind::Descriptors { .. } => expanded.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}

/// Searches `archive` with a decoded image (cut to `opts.region` first, if given).
pub fn search_decoded<S: CaseStore>(
    archive: &mut Archive<S>,
    encoder: &Encoder,
    decoded: ImageF32,
    opts: &QueryOptions,
) -> Result<ImageResults> {
    let info = archive.model().clone();
    let q = encode_query(encoder, &info, decoded, opts, true)?;
    search_encoded(archive, q, opts)
}

/// What an archive of `kind` stores for an encoded image: a descriptor model's archive
/// may hold its binarised codes instead of the floats; a hash model's archive with
/// relaxed outputs holds the code followed by the hash layer's outputs.
pub fn stored_vector(kind: medret_store::ModelKind, e: &Encoded) -> Vec<u8> {
    use medret_store::ModelKind;
    match (kind, &e.code) {
        (ModelKind::Codes { relaxed: true, .. }, None) => {
            let mut v = e.vector.clone();
            v.extend(e.raw.iter().flat_map(|x| x.to_le_bytes()));
            v
        }
        (ModelKind::Codes { .. }, Some(code)) => code.clone(),
        _ => e.vector.clone(),
    }
}

/// Label counts among `hits`, most frequent first (ties by name; DR grades of unlabelled
/// cases as `grade N`): the summary a viewer shows beside the results.
pub fn label_counts(hits: &[Hit]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for h in hits {
        if let (true, Some(g)) = (h.labels.is_empty(), h.grade) {
            *counts.entry(format!("grade {g}")).or_default() += 1;
        }
        for l in &h.labels {
            *counts.entry(l.clone()).or_default() += 1;
        }
    }
    let mut list: Vec<(String, usize)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list
}

/// Searches with stored cases' own vectors ("more like these"): each case's neighbours,
/// merged by their smallest distance to any of them; the query cases are left out.
pub fn search_cases<S: CaseStore>(
    archive: &mut Archive<S>,
    keys: &[String],
    opts: &QueryOptions,
) -> Result<Vec<Hit>> {
    Ok(search_cases_page(archive, keys, opts)?.hits)
}

/// [`search_cases`], with whether the answer is exact and complete.
pub fn search_cases_page<S: CaseStore>(
    archive: &mut Archive<S>,
    keys: &[String],
    opts: &QueryOptions,
) -> Result<Page> {
    if keys.is_empty() {
        return Err(SearchError::Invalid("no case ids to search by".into()));
    }
    let model = archive.model().name.clone();
    let mut ids = Vec::new();
    let mut vectors = Vec::new();
    for key in keys {
        let case = archive
            .store()
            .case_by_key(key)?
            .ok_or_else(|| SearchError::NotFound(format!("no case `{key}` in the store")))?;
        let v = archive.vector(case.id)?.ok_or_else(|| {
            SearchError::NotFound(format!("case `{key}` has no vector for model `{model}`"))
        })?;
        ids.push(case.id);
        vectors.push(v);
    }
    let mut best: std::collections::BTreeMap<u64, f64> = Default::default();
    for v in &vectors {
        for f in raw_search(archive, v, opts, ids.len())? {
            let d = best.entry(f.id).or_insert(f.distance);
            *d = d.min(f.distance);
        }
    }
    let mut merged: Vec<Found> = best
        .into_iter()
        .map(|(id, distance)| Found { id, distance })
        .collect();
    merged.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    let exact = !archive.is_approximate();
    collect_filtered(archive.store(), merged, &ids, opts, exact)
}

/// Index hits for one query vector: enough of them that `opts.k` survive the filters and
/// `excluded` left-out cases.
fn raw_search<S: CaseStore>(
    archive: &mut Archive<S>,
    vector: &[u8],
    opts: &QueryOptions,
    excluded: usize,
) -> Result<Vec<Found>> {
    let kind = archive.model().kind;
    let want = kind.vector_bytes();
    // A code model with relaxed outputs also takes the code alone (a hex query).
    let code_alone = kind.code_bytes() == Some(vector.len());
    if vector.len() != want && !code_alone {
        return Err(SearchError::Invalid(format!(
            "query vector has {} bytes; model `{}` stores {want}",
            vector.len(),
            archive.model().name
        )));
    }
    archive.sync()?;
    Ok(match opts.radius {
        Some(r) => archive.radius(vector, r)?,
        // Filters are applied to the ranked list: the nearest candidates, bounded.
        None if !opts.filters.is_empty() => archive.search(
            vector,
            (opts.offset + opts.k + excluded).max(MAX_FILTER_CANDIDATES + excluded),
        )?,
        // A few more than asked: a case deleted by another writer between this search
        // and the read of its row is left out, and the next one fills its place.
        None => archive.search(vector, opts.offset + opts.k + excluded + VANISH_SLACK)?,
    })
}

/// Ranked index hits to an answer: the query cases left out, the filters applied to at
/// most [`MAX_FILTER_CANDIDATES`] cases, `opts.offset` matches skipped, then `opts.k` (or
/// for a radius search `opts.max_hits`) hits, each one store read.
fn collect_filtered<S: CaseStore>(
    store: &mut S,
    found: Vec<Found>,
    exclude: &[u64],
    opts: &QueryOptions,
    exact: bool,
) -> Result<Page> {
    let limit = match opts.radius {
        Some(_) => opts.max_hits,
        None => opts.k,
    };
    let filtered = !opts.filters.is_empty();
    let mut page = Page {
        hits: Vec::new(),
        exact,
        truncated: false,
        next_offset: None,
    };
    let mut skipped = 0;
    let mut examined = 0;
    let mut rest = found.into_iter().filter(|f| !exclude.contains(&f.id));
    for f in rest.by_ref() {
        if filtered {
            if examined == MAX_FILTER_CANDIDATES {
                page.truncated = true;
                break;
            }
            examined += 1;
        } else if skipped < opts.offset {
            skipped += 1;
            continue;
        }
        // Deleted by another writer since the index was searched: left out.
        let Some(c) = store.case(f.id)? else {
            continue;
        };
        if !opts.filters.keeps(&c) {
            continue;
        }
        if skipped < opts.offset {
            skipped += 1;
            continue;
        }
        page.hits.push(hit(
            opts.offset + page.hits.len() + 1,
            c,
            f.distance,
            opts.show_ids,
        ));
        if page.hits.len() == limit {
            break;
        }
    }
    if opts.radius.is_some() && page.hits.len() == limit && rest.next().is_some() {
        // More cases lie within the radius (for a filtered search: may match).
        page.truncated = true;
        page.next_offset = Some(opts.offset + limit);
    }
    Ok(page)
}

fn hit(rank: usize, c: Case, distance: f64, show_ids: bool) -> Hit {
    Hit {
        id: c.id,
        rank,
        case_id: c.key,
        path: c.path,
        distance,
        labels: c.labels,
        grade: c.grade,
        patient_id: if show_ids {
            c.patient_id.clone()
        } else {
            mask(&c.patient_id)
        },
        study: c.study,
    }
}

/// Searches with a query vector in the model's stored layout under `opts`, leaving out
/// the cases `exclude`.
pub fn search_vector_with<S: CaseStore>(
    archive: &mut Archive<S>,
    vector: &[u8],
    opts: &QueryOptions,
    exclude: &[u64],
) -> Result<Vec<Hit>> {
    Ok(search_vector_page(archive, vector, opts, exclude)?.hits)
}

/// [`search_vector_with`], with whether the answer is exact and complete.
pub fn search_vector_page<S: CaseStore>(
    archive: &mut Archive<S>,
    vector: &[u8],
    opts: &QueryOptions,
    exclude: &[u64],
) -> Result<Page> {
    let found = raw_search(archive, vector, opts, exclude.len())?;
    let exact = !archive.is_approximate();
    collect_filtered(archive.store(), found, exclude, opts, exact)
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
    let opts = QueryOptions {
        k,
        radius,
        show_ids,
        // A local user asked for this radius: every case in it, not one page.
        max_hits: usize::MAX,
        ..QueryOptions::default()
    };
    search_cases(archive, &[key.to_string()], &opts)
}

/// Searches with a query vector in the model's stored layout: the top `k`, or every case
/// within Hamming distance `radius`.
pub fn search_vector<S: CaseStore>(
    archive: &mut Archive<S>,
    vector: &[u8],
    k: usize,
    radius: Option<u32>,
    show_ids: bool,
) -> Result<Vec<Hit>> {
    let opts = QueryOptions {
        k,
        radius,
        show_ids,
        // A local user asked for this radius: every case in it, not one page.
        max_hits: usize::MAX,
        ..QueryOptions::default()
    };
    search_vector_with(archive, vector, &opts, &[])
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
