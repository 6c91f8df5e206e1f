//! The `/api/v1` JSON API, `/healthz` and `/readyz`. Every handler parses, hands the work
//! to `medret-search` on a blocking thread, and shapes the answer; none holds retrieval
//! logic of its own. The routes are listed in `docs/api.md`.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use medret_data::ImageF32;
use medret_search::ingest::NewImage;
use medret_search::query::{Filters, Hit, QueryOptions, Region, mask};
use medret_store::{Case, ModelKind, NewCase};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::state::Slot;
use crate::upload;

type S = State<Arc<AppState>>;

/// Shown with every result list: the page repeats it.
pub const NOTICE: &str = "Reference retrieval of similar archived cases, not a diagnosis.";

/// Results per query at most.
const MAX_K: usize = 500;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/readyz", get(readyz))
        .route("/api/v1/models", get(models))
        .route("/api/v1/search", post(search))
        .route("/api/v1/search/cases", post(search_cases))
        .route("/api/v1/cases", post(ingest))
        .route("/api/v1/cases/{id}", get(case).delete(delete))
        .route("/api/v1/cases/{id}/image", get(case_image))
        .route("/api/v1/cases/{id}/overlay", get(case_overlay))
}

/// When a request's blocking work must stop: checked between its stages (decode,
/// encode, search, explain), so the work of a request that was answered 408 ends at the
/// next boundary instead of running on.
#[derive(Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn check(&self) -> Result<(), ApiError> {
        if Instant::now() > self.0 {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request took longer than this server allows; its work was stopped",
            ))
        } else {
            Ok(())
        }
    }
}

/// Runs `f` on a blocking thread with one of the server's work permits, which it keeps
/// until `f` returns (also after its request timed out), and the request's deadline.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(Deadline) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let deadline = Deadline(Instant::now() + state.config.timeout);
    let permit = state
        .work
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        deadline.check()?;
        f(deadline)
    })
    .await?
}

/// A short store read on a blocking thread without a work permit: readiness and the
/// model list must answer while every permit is busy with searches.
async fn light<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

/// Models that could not be loaded, with why.
fn unavailable(state: &AppState) -> BTreeMap<String, String> {
    state
        .unavailable
        .read()
        .map(|u| u.clone())
        .unwrap_or_default()
}

#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "The process answers", body = String, content_type = "text/plain")
))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/api/v1/openapi.json", responses(
    (status = 200, description = "This document", content_type = "application/json")
))]
pub(crate) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The store answers; models that could not be loaded are listed", body = crate::openapi::Ready),
    (status = 503, description = "The store does not answer", body = crate::openapi::Ready)
))]
pub(crate) async fn readyz(State(state): S) -> Response {
    let st = state.clone();
    match light(move || st.admin_store().generation().map_err(ApiError::from)).await {
        Ok(g) => Json(json!({
            "ready": true,
            "models": state.model_count(),
            "generation": g,
            "unavailable": unavailable(&state),
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": e.message })),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/api/v1/models", responses(
    (status = 200, description = "The store's models", body = crate::openapi::ModelsResponse),
    (status = 503, description = "The store failed", body = crate::openapi::ErrorBody)
))]
pub(crate) async fn models(State(state): S) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    light(move || st.refresh_models()).await?;
    let mut list: Vec<Value> = state
        .all_slots()
        .iter()
        .map(|s| {
            // Never waits on a search in progress: `null` while one holds the model.
            let cases = s.cases_now();
            let (kind, size) = match s.info.kind {
                ModelKind::Codes { bits, relaxed } => (
                    "codes",
                    json!({ "bits": bits, "ties_by_relaxed_outputs": relaxed }),
                ),
                ModelKind::Descriptors { dim, .. } => ("descriptors", json!({ "dim": dim })),
            };
            let card = s.encoder.as_ref().map(|e| &e.card);
            json!({
                "name": s.info.name,
                "kind": kind,
                "size": size,
                "cases": cases,
                "can_encode": s.encoder.is_some(),
                "method": card.map(|c| match c.method {
                    medret_models::model_card::Method::CxrFusionHash(_) => "cxr-fusion-hash",
                    medret_models::model_card::Method::FundusMetric(_) => "fundus-metric",
                }),
                "class_names": card.map(|c| c.class_names.clone()).unwrap_or_default(),
                "input_size": card.map(|c| c.preprocessing.size),
                "radius_search": matches!(s.info.kind, ModelKind::Codes { .. }),
                "flip_tta": medret_search::binding::ModelBinding::flip_tta_of(&s.info.config_hash),
                "exact": !s.approximate,
                "available": true,
            })
        })
        .collect();
    for (name, why) in unavailable(&state) {
        list.push(json!({ "name": name, "available": false, "error": why }));
    }
    Ok(Json(json!({ "models": list })))
}

/// A query in the PACS: study, and optionally series and SOP Instance UIDs.
pub(crate) type PacsUids = (String, Option<String>, Option<String>);

/// A multipart form: files by field, text fields by name.
#[derive(Default)]
pub(crate) struct Form {
    pub(crate) files: Vec<(String, Vec<u8>)>,
    text: BTreeMap<String, String>,
}

impl Form {
    pub(crate) async fn read(mut m: Multipart) -> Result<Form, ApiError> {
        let mut form = Form::default();
        while let Some(field) = m.next_field().await? {
            let name = field.name().unwrap_or("").to_string();
            if name == "image" {
                let shown = upload::shown_name(field.file_name());
                let bytes = field.bytes().await?;
                form.files.push((shown, bytes.to_vec()));
            } else {
                let text = field.text().await?;
                if text.len() > 4096 {
                    return Err(ApiError::bad_request(format!(
                        "field `{name}` is longer than 4096 bytes"
                    )));
                }
                form.text.insert(name, text);
            }
        }
        Ok(form)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.text.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| ApiError::bad_request(format!("field `{k}`: `{v}` is not valid")))
            })
            .transpose()
    }

    fn require(&self, k: &str) -> Result<&str, ApiError> {
        self.get(k)
            .ok_or_else(|| ApiError::bad_request(format!("field `{k}` is required")))
    }

    /// `study_uid` with the optional `series_uid` and `sop_uid`: a query the server
    /// fetches from its PACS.
    pub(crate) fn pacs_query(&self) -> Result<Option<PacsUids>, ApiError> {
        let uid = |k: &str| -> Result<Option<String>, ApiError> {
            match self.get(k) {
                None => Ok(None),
                Some(v)
                    if v.len() <= 64
                        && !v.is_empty()
                        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
                {
                    Ok(Some(v.to_string()))
                }
                Some(_) => Err(ApiError::bad_request(format!(
                    "field `{k}` is not a DICOM UID (digits and dots, at most 64)"
                ))),
            }
        };
        let (study, series, sop) = (uid("study_uid")?, uid("series_uid")?, uid("sop_uid")?);
        match study {
            Some(s) => Ok(Some((s, series, sop))),
            None if series.is_some() || sop.is_some() => Err(ApiError::bad_request(
                "`series_uid` and `sop_uid` go with `study_uid`",
            )),
            None => Ok(None),
        }
    }

    /// The search form's options, as `POST /api/v1/search` reads them.
    pub(crate) fn search_options(&self, show_ids: bool) -> Result<QueryOptions, ApiError> {
        Ok(QueryOptions {
            k: check_k(self.parse("k")?)?,
            radius: self.parse("radius")?,
            show_ids,
            explain: self.get("explain") != Some("false"),
            filters: self.filters()?,
            region: self.get("region").map(Region::parse).transpose()?,
            offset: check_offset(self.parse("offset")?)?,
            qe: check_qe(self.parse("qe")?)?,
            ..QueryOptions::default()
        })
    }

    /// The ingest form's case id and the fields every new case gets.
    pub(crate) fn ingest_fields(&self) -> Result<(Option<String>, NewCase), ApiError> {
        let case_id = self.get("case_id").map(String::from);
        if case_id.is_some() && self.files.len() > 1 {
            return Err(ApiError::bad_request(
                "`case_id` names one case; a batch gets ids from the images' content",
            ));
        }
        let labels: Vec<String> = self
            .get("labels")
            .map(|l| {
                l.split(['|', ','])
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let grade: Option<u8> = self.parse("grade")?;
        if grade.is_some_and(|g| g > 4) {
            return Err(ApiError::bad_request("grade is 0 to 4"));
        }
        let template = NewCase {
            key: String::new(),
            path: String::new(),
            labels,
            grade,
            patient_id: self.get("patient_id").unwrap_or("").to_string(),
            study: json!({
                "view": self.get("view"),
                "eye": self.get("eye"),
                "split": self.get("split"),
                "meta": {},
            }),
        };
        Ok((case_id, template))
    }

    fn filters(&self) -> Result<Filters, ApiError> {
        Ok(Filters {
            label: self.get("label").map(String::from),
            view: self.get("view").map(String::from),
            eye: self.get("eye").map(String::from),
            grade: self.parse("grade")?,
            split: self.get("split").map(String::from),
        })
    }
}

/// Paging offsets up to this: deeper pages of one radius search are not a use anyone has.
const MAX_OFFSET: usize = 100_000;

fn check_offset(offset: Option<usize>) -> Result<usize, ApiError> {
    match offset.unwrap_or(0) {
        o if o > MAX_OFFSET => Err(ApiError::bad_request(format!(
            "offset is at most {MAX_OFFSET}"
        ))),
        o => Ok(o),
    }
}

fn check_qe(qe: Option<usize>) -> Result<usize, ApiError> {
    use medret_search::query::MAX_QE;
    match qe.unwrap_or(0) {
        n if n > MAX_QE => Err(ApiError::bad_request(format!("qe is at most {MAX_QE}"))),
        n => Ok(n),
    }
}

fn check_k(k: Option<usize>) -> Result<usize, ApiError> {
    match k.unwrap_or(10) {
        0 => Err(ApiError::bad_request("k must be at least 1")),
        k if k > MAX_K => Err(ApiError::bad_request(format!("k is at most {MAX_K}"))),
        k => Ok(k),
    }
}

fn png(img: &image::DynamicImage) -> Result<Vec<u8>, ApiError> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("PNG encoding: {e}")))?;
    Ok(out.into_inner())
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Percent-encodes a case id for a URL path segment.
pub fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The study fields a viewer shows (view, eye, split, age, sex), never the study
/// metadata wholesale.
fn study_fields(study: &Value) -> Value {
    let meta = |k: &str| study.get("meta").and_then(|m| m.get(k)).cloned();
    json!({
        "view": study.get("view").cloned().unwrap_or(Value::Null),
        "eye": study.get("eye").cloned().unwrap_or(Value::Null),
        "split": study.get("split").cloned().unwrap_or(Value::Null),
        "age": meta("age").unwrap_or(Value::Null),
        "sex": meta("sex").unwrap_or(Value::Null),
    })
}

fn result_json(state: &AppState, h: &Hit, model: &str) -> Value {
    let shown = state.shown_id(h.id, &h.case_id);
    let id = url_segment(&shown);
    let mut v = json!({
        "rank": h.rank,
        "case_id": shown,
        "distance": h.distance,
        "labels": h.labels,
        "grade": h.grade,
        "patient_id": h.patient_id,
        "image_url": format!("/api/v1/cases/{id}/image"),
        "thumbnail_url": format!("/api/v1/cases/{id}/image?size=256"),
        "overlay_url": format!("/api/v1/cases/{id}/overlay?model={}", url_segment(model)),
    });
    if let (Value::Object(o), Value::Object(s)) = (&mut v, study_fields(&h.study)) {
        o.extend(s);
    }
    let uid = |k: &str| {
        h.study
            .get("meta")
            .and_then(|m| m.get(k))
            .and_then(|u| u.as_str())
            .unwrap_or_default()
    };
    if !uid("study_uid").is_empty()
        && let Some(url) = viewer_url(state, uid("study_uid"), uid("series_uid"), uid("sop_uid"))
    {
        v["viewer_url"] = url.into();
    }
    v
}

/// The configured viewer link for a PACS instance (`--viewer-url`).
fn viewer_url(state: &AppState, study: &str, series: &str, sop: &str) -> Option<String> {
    let t = state.config.viewer_url.as_ref()?;
    Some(
        t.replace("{study}", &url_segment(study))
            .replace("{series}", &url_segment(series))
            .replace("{sop}", &url_segment(sop)),
    )
}

/// The label summary shown above the results, with the notice.
fn summary(hits: &[Hit]) -> Value {
    let list = medret_search::query::label_counts(hits);
    json!({
        "results": hits.len(),
        "labels": list.iter().map(|(l, c)| json!({ "label": l, "count": c })).collect::<Vec<_>>(),
        "majority": list.first().map(|(l, _)| l.clone()),
        "notice": NOTICE,
    })
}

#[utoipa::path(post, path = "/api/v1/search",
    request_body(content = crate::openapi::SearchForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Similar cases", body = crate::openapi::SearchResponse),
        (status = 400, description = "A malformed request or field", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such model, or no such study in the PACS", body = crate::openapi::ErrorBody),
        (status = 408, description = "Took longer than the server allows", body = crate::openapi::ErrorBody),
        (status = 409, description = "The model cannot encode images", body = crate::openapi::ErrorBody),
        (status = 413, description = "The upload or the image is too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not a PNG, JPEG or DICOM file", body = crate::openapi::ErrorBody),
        (status = 422, description = "An image that cannot be decoded", body = crate::openapi::ErrorBody),
        (status = 502, description = "The PACS failed or refused the server's credentials", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store or the model is unavailable", body = crate::openapi::ErrorBody),
        (status = 504, description = "The PACS cannot be reached", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn search(
    State(state): S,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let form = Form::read(form?).await?;
    let model = form.require("model")?.to_string();
    let uids = form.pacs_query()?;
    let (name, bytes) = match (form.files.as_slice(), &uids) {
        ([one], None) => one.clone(),
        ([], Some(_)) => (String::new(), Vec::new()),
        ([], None) => {
            return Err(ApiError::bad_request(
                "field `image` (the query image) or `study_uid` is required",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "search by `image` or by `study_uid`, not both",
            ));
        }
        _ => return Err(ApiError::bad_request("search takes one `image`")),
    };
    let export_kos = match form.get("export") {
        None => false,
        Some("kos") if uids.is_some() => true,
        Some("kos") => {
            return Err(ApiError::bad_request(
                "export=kos needs a query from the PACS (`study_uid`)",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "export `{other}`: the one export is `kos`"
            )));
        }
    };
    if uids.is_some() && state.pacs.is_none() {
        return Err(ApiError::bad_request(
            "this server has no PACS to fetch `study_uid` from (medret serve --pacs)",
        ));
    }
    let opts = form.search_options(state.config.show_patient_ids)?;
    let st = state.clone();
    blocking(&state, move |deadline| {
        let slot = st.slot(&model)?;
        if opts.radius.is_some() && !matches!(slot.info.kind, ModelKind::Codes { .. }) {
            return Err(ApiError::bad_request(format!(
                "model `{model}` stores float descriptors: radius search applies to codes only"
            )));
        }
        let encoder = slot.encoder()?.clone();
        // A query from the PACS: the instance its UIDs name, retrieved, then decoded as
        // an upload is (size checked from the header, under the decode budget).
        let (from_pacs, bytes, name) = match &uids {
            Some((study, series, sop)) => {
                let pacs = st.pacs.as_ref().expect("checked above");
                let i =
                    medret_pacs::query::resolve(pacs, study, series.as_deref(), sop.as_deref())?;
                let file = pacs.retrieve(&i)?;
                deadline.check()?;
                (Some(i), file, "the PACS instance".to_string())
            }
            None => (None, bytes, name),
        };
        let (img, _, decode_s, reservation) =
            upload::decode(&bytes, &name, st.config.max_pixels, &st.decode_budget)?;
        // The key object copies the query's patient and study attributes from its file.
        let query_file = export_kos.then(|| bytes.clone());
        drop(bytes);
        st.metrics.stage("decode", decode_s);
        deadline.check()?;
        // The network runs before the model's lock is taken, so a slow query never makes
        // the others wait; the full-size image goes to it rather than being kept (this
        // API never shows it).
        let encoded = medret_search::query::encode_query(&encoder, &slot.info, img, &opts, false)?;
        drop(reservation);
        deadline.check()?;
        let res = {
            let mut archive = slot.lock()?;
            medret_search::query::search_encoded(&mut archive, encoded, &opts)?
        };
        deadline.check()?;
        st.metrics.stage("encode", res.encode_seconds);
        st.metrics.stage("search", res.search_seconds);
        let t = std::time::Instant::now();
        let q = &res.query;
        let size = encoder.size();
        let mut query = json!({
            "input_size": size,
            "crop_box": q.crop.map(|b| json!({
                "x": b.x, "y": b.y, "w": b.w, "h": b.h,
                "fraction": [b.x as f64 / size as f64, b.y as f64 / size as f64,
                             b.w as f64 / size as f64, b.h as f64 / size as f64],
            })),
            "probabilities": encoder.card.class_names.iter().zip(&q.probabilities)
                .map(|(c, p)| (c.clone(), *p)).collect::<BTreeMap<_, _>>(),
            "code": slot.info.kind.code_part(&res.vector).map(medret_search::query::hex),
            "region": opts.region,
        });
        if opts.explain {
            let plain = medret_search::explain::overlay_image_native(&res.shown, None, None)?;
            let over = medret_search::explain::overlay_image_native(
                &res.shown,
                q.saliency.as_ref().map(|s| s.data.as_slice()),
                q.crop.as_ref(),
            )?;
            query["image_png"] = data_url(&png(&image::DynamicImage::ImageRgb8(plain))?).into();
            query["overlay_png"] = data_url(&png(&image::DynamicImage::ImageRgb8(over))?).into();
        }
        let explain_s = t.elapsed().as_secs_f64();
        if opts.explain {
            st.metrics.stage("explain", explain_s);
        }
        let mut kos = Value::Null;
        if let Some(i) = &from_pacs {
            query["study_uid"] = i.study.clone().into();
            query["series_uid"] = i.series.clone().into();
            query["sop_uid"] = i.sop.clone().into();
            if let Some(url) = viewer_url(&st, &i.study, &i.series, &i.sop) {
                query["viewer_url"] = url.into();
            }
            if export_kos {
                deadline.check()?;
                let pacs = st.pacs.as_ref().expect("checked above");
                let similar = medret_pacs::query::hit_instances(&res.hits, i);
                let sop = medret_pacs::query::store_key_object(
                    pacs,
                    i,
                    query_file.as_deref().unwrap_or_default(),
                    &similar,
                    &format!("model {model}"),
                )?;
                kos = json!({ "sop_uid": sop, "references": similar.len() + 1 });
            }
        }
        Ok(Json(json!({
            "kos": kos,
            "model": model,
            "results": res.hits.iter().map(|h| result_json(&st, h, &model)).collect::<Vec<_>>(),
            "summary": summary(&res.hits),
            "exact": res.exact,
            "truncated": res.truncated,
            "next_offset": res.next_offset,
            "query": query,
            "timings_ms": {
                "decode": decode_s * 1e3,
                "encode": res.encode_seconds * 1e3,
                "search": res.search_seconds * 1e3,
                "explain": explain_s * 1e3,
            },
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasesQuery {
    model: String,
    case_ids: Vec<String>,
    #[serde(default, deserialize_with = "medret_search::query::whole_number")]
    k: Option<usize>,
    #[serde(default, deserialize_with = "medret_search::query::whole_number")]
    radius: Option<u32>,
    #[serde(default, deserialize_with = "medret_search::query::whole_number")]
    offset: Option<usize>,
    /// Absent or `null`: no filter.
    #[serde(default)]
    filters: Option<Filters>,
}

#[utoipa::path(post, path = "/api/v1/search/cases",
    request_body(content = crate::openapi::CasesRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Cases similar to the given ones", body = crate::openapi::CasesResponse),
        (status = 400, description = "A malformed request or field", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such model or case", body = crate::openapi::ErrorBody),
        (status = 408, description = "Took longer than the server allows", body = crate::openapi::ErrorBody),
        (status = 413, description = "The request is too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::openapi::ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store or the model is unavailable", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn search_cases(
    State(state): S,
    body: Result<Json<CasesQuery>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(q) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if q.case_ids.len() > 50 {
        return Err(ApiError::bad_request("at most 50 case ids per search"));
    }
    let opts = QueryOptions {
        k: check_k(q.k)?,
        radius: q.radius,
        show_ids: state.config.show_patient_ids,
        explain: false,
        filters: q.filters.clone().unwrap_or_default(),
        region: None,
        offset: check_offset(q.offset)?,
        ..QueryOptions::default()
    };
    let st = state.clone();
    blocking(&state, move |_| {
        let slot = st.slot(&q.model)?;
        // Requests name cases as responses do (opaque ids when those are on).
        let keys = q
            .case_ids
            .iter()
            .map(|given| find_case(&st, given).map(|c| c.key))
            .collect::<Result<Vec<_>, _>>()?;
        let t = std::time::Instant::now();
        let page = {
            let mut archive = slot.lock()?;
            medret_search::query::search_cases_page(&mut archive, &keys, &opts)?
        };
        st.metrics.stage("search", t.elapsed().as_secs_f64());
        Ok(Json(json!({
            "model": q.model,
            "query": { "case_ids": q.case_ids },
            "results": page.hits.iter().map(|h| result_json(&st, h, &q.model)).collect::<Vec<_>>(),
            "summary": summary(&page.hits),
            "exact": page.exact,
            "truncated": page.truncated,
            "next_offset": page.next_offset,
        })))
    })
    .await
}

fn find_case(state: &AppState, given: &str) -> Result<Case, ApiError> {
    state.find_case(given)
}

#[utoipa::path(get, path = "/api/v1/cases/{id}",
    params(("id" = String, Path, description = "A case id as responses give it")),
    responses(
        (status = 200, description = "The case", body = crate::openapi::CaseResponse),
        (status = 404, description = "No such case", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store failed", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn case(
    State(state): S,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(key) = key?;
    let st = state.clone();
    blocking(&state, move |_| {
        let c = find_case(&st, &key)?;
        let shown = st.shown_id(c.id, &c.key);
        let id = url_segment(&shown);
        let mut v = json!({
            "case_id": shown,
            "labels": c.labels,
            "grade": c.grade,
            "patient_id": if st.config.show_patient_ids { c.patient_id.clone() } else { mask(&c.patient_id) },
            "image_url": format!("/api/v1/cases/{id}/image"),
        });
        if let (Value::Object(o), Value::Object(s)) = (&mut v, study_fields(&c.study)) {
            o.extend(s);
        }
        Ok(Json(v))
    })
    .await
}

fn load_case_image(state: &AppState, c: &Case) -> Result<ImageF32, ApiError> {
    let path = state.image_path(&c.path);
    medret_data::decode::decode_any(&path).map_err(|_| {
        // The stored path is the archive's business; the client learns which case.
        ApiError::not_found(format!("the image of case `{}` cannot be read", c.key))
    })
}

#[derive(Deserialize)]
pub(crate) struct ImageQuery {
    size: Option<u32>,
}

fn png_response(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        bytes,
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/cases/{id}/image",
    params(("id" = String, Path, description = "A case id as responses give it"), crate::openapi::ImageSize),
    responses(
        (status = 200, description = "The case's image", content_type = "image/png"),
        (status = 400, description = "A bad size", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such case, or its image cannot be read", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store failed", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn case_image(
    State(state): S,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<ImageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let Query(q) = q?;
    let st = state.clone();
    let bytes = blocking(&state, move |_| {
        let c = find_case(&st, &key)?;
        let img = load_case_image(&st, &c)?.to_dynamic();
        let img = match q.size {
            Some(s) if !(16..=2048).contains(&s) => {
                return Err(ApiError::bad_request("size must be between 16 and 2048"));
            }
            Some(s) if s < img.width().max(img.height()) => img.thumbnail(s, s),
            _ => img,
        };
        png(&img)
    })
    .await?;
    Ok(png_response(bytes))
}

#[derive(Deserialize)]
pub(crate) struct OverlayQuery {
    model: String,
}

#[utoipa::path(get, path = "/api/v1/cases/{id}/overlay",
    params(("id" = String, Path, description = "A case id as responses give it"), crate::openapi::OverlayModel),
    responses(
        (status = 200, description = "The case's image with the model's saliency and crop box", content_type = "image/png"),
        (status = 400, description = "A malformed request", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such model or case, or its image cannot be read", body = crate::openapi::ErrorBody),
        (status = 409, description = "The model cannot encode images", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store or the model is unavailable", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn case_overlay(
    State(state): S,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<OverlayQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key?;
    let Query(q) = q?;
    let st = state.clone();
    let bytes = blocking(&state, move |_| {
        let slot = st.slot(&q.model)?;
        let encoder = slot.encoder()?.clone();
        let c = find_case(&st, &key)?;
        let img = load_case_image(&st, &c)?;
        let t = std::time::Instant::now();
        let shown = encoder.display_image(img.clone());
        let e = encoder.encode_images(vec![img], true).remove(0);
        let over = medret_search::explain::overlay_image_native(
            &shown,
            e.saliency.as_ref().map(|s| s.data.as_slice()),
            e.crop.as_ref(),
        )?;
        st.metrics.stage("explain", t.elapsed().as_secs_f64());
        png(&image::DynamicImage::ImageRgb8(over))
    })
    .await?;
    Ok(png_response(bytes))
}

/// Writes need the token: `Authorization: Bearer <token>`, compared in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.config.read_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this server is read-only",
        ));
    }
    let Some(token) = &state.config.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "writes are disabled: start the server with --token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required for writes",
        ))
    }
}

#[utoipa::path(post, path = "/api/v1/cases",
    request_body(content = crate::openapi::IngestForm, content_type = "multipart/form-data"),
    security(("token" = [])),
    responses(
        (status = 201, description = "Ingested, all of them", body = crate::openapi::IngestResponse),
        (status = 400, description = "A malformed request or field", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Writes are disabled", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such model", body = crate::openapi::ErrorBody),
        (status = 408, description = "Took longer than the server allows", body = crate::openapi::ErrorBody),
        (status = 409, description = "The case exists, or the model cannot encode images", body = crate::openapi::ErrorBody),
        (status = 413, description = "The upload or an image is too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not a PNG, JPEG or DICOM file", body = crate::openapi::ErrorBody),
        (status = 422, description = "An image that cannot be decoded", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store or the model is unavailable; nothing was changed", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn ingest(
    State(state): S,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let form = Form::read(form?).await?;
    let model = form.require("model")?.to_string();
    if form.files.is_empty() {
        return Err(ApiError::bad_request(
            "field `image` is required (one or more)",
        ));
    }
    let (case_id, template) = form.ingest_fields()?;
    let st = state.clone();
    let model_name = model.clone();
    let ids = blocking(&state, move |deadline| {
        let slot: Arc<Slot> = st.slot(&model)?;
        let encoder = slot.encoder()?.clone();
        // Everything is decoded and encoded before anything is written, and outside the
        // model's lock.
        let mut decoded = Vec::new();
        let mut kinds = Vec::new();
        let mut reservations = Vec::new();
        for (name, bytes) in &form.files {
            let (img, kind, _, reservation) =
                upload::decode(bytes, name, st.config.max_pixels, &st.decode_budget)?;
            decoded.push(img);
            reservations.push(reservation);
            kinds.push(kind);
            deadline.check()?;
        }
        let flip = medret_search::binding::ModelBinding::flip_tta_of(&slot.info.config_hash);
        let images: Vec<NewImage> = encoder
            .encode_images_as(decoded, false, flip)
            .iter()
            .zip(kinds)
            .zip(&form.files)
            .map(|((e, kind), (_, bytes))| NewImage {
                key: case_id
                    .clone()
                    .unwrap_or_else(|| medret_search::ingest::content_key(bytes)),
                extension: kind.extension(),
                bytes: bytes.clone(),
                vector: medret_search::query::stored_vector(slot.info.kind, e),
            })
            .collect();
        drop(reservations);
        // The last point where giving up changes nothing: past it the ingest completes.
        deadline.check()?;
        let mut archive = slot.lock()?;
        let ids = medret_search::ingest::ingest_images(
            &mut archive,
            &images,
            &template,
            &st.upload_dir(),
        )?;
        Ok(ids
            .iter()
            .zip(&images)
            .map(|(id, i)| st.shown_id(*id, &i.key))
            .collect::<Vec<_>>())
    })
    .await?;
    tracing::info!(cases = ids.len(), "ingested");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "model": model_name, "ingested": ids })),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/cases/{id}",
    params(("id" = String, Path, description = "A case id as responses give it")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Deleted, with its vectors and the image the server stored", body = crate::openapi::DeleteResponse),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Writes are disabled", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such case", body = crate::openapi::ErrorBody),
        (status = 503, description = "The store failed; nothing was changed", body = crate::openapi::ErrorBody)
    ))]
pub(crate) async fn delete(
    State(state): S,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(key) = key?;
    authorize(&state, &headers)?;
    let st = state.clone();
    blocking(&state, move |_| {
        let c = find_case(&st, &key)?;
        // Through a model's archive when there is one, so its index follows at once;
        // the others follow the store's change log.
        let deleted = match st.all_slots().first() {
            Some(slot) => slot.lock()?.delete(&c.key)?,
            None => st.admin_store().delete(&c.key)?,
        };
        if !deleted {
            return Err(ApiError::not_found(format!("no case `{key}`")));
        }
        // An image the server stored itself (recorded as such in the store) goes with
        // its case; an image ingested from a dataset is never touched, wherever it is.
        if let Some(name) = medret_search::ingest::uploaded_file_name(&c.path) {
            let _ = std::fs::remove_file(st.upload_dir().join(name));
        }
        tracing::info!("deleted one case");
        Ok(Json(json!({ "deleted": key })))
    })
    .await
}
