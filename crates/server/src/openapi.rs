//! The API contract: an OpenAPI 3.1 document generated (utoipa) from the handlers'
//! annotations in [`crate::api`] and the schemas below, served at
//! `/api/v1/openapi.json`. The schemas describe the JSON the handlers build; a test checks
//! the document's routes against `docs/api.md`, and schemathesis checks live answers
//! against it (`bench/schemathesis.sh`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{IntoParams, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "medret",
        description = "Content-based retrieval of similar archived chest X-ray and fundus cases. Reference retrieval, not a diagnosis.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        crate::api::healthz,
        crate::api::readyz,
        crate::metrics::metrics,
        crate::api::models,
        crate::api::search,
        crate::api::search_cases,
        crate::api::ingest,
        crate::api::case,
        crate::api::delete,
        crate::api::case_image,
        crate::api::case_overlay,
        crate::api::openapi_json,
    ),
    components(schemas(
        ErrorBody, Ready, ModelsResponse, ModelEntry, SearchForm, CasesRequest, FiltersDoc,
        SearchResponse, CasesResponse, ResultEntry, Summary, LabelCount, CaseResponse,
        IngestForm, IngestResponse, DeleteResponse
    )),
    modifiers(&BearerToken),
    tags((name = "medret"))
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The document as served.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// Every error: `{"error": "message"}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Models loaded.
    pub models: Option<u64>,
    /// The store's write counter.
    pub generation: Option<u64>,
    /// Models of the store that could not be loaded, with why.
    pub unavailable: Option<BTreeMap<String, String>>,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelsResponse {
    pub models: Vec<ModelEntry>,
}

/// A model of the store. An unavailable one has only `name`, `available` and `error`.
#[derive(Serialize, ToSchema)]
pub struct ModelEntry {
    pub name: String,
    pub available: bool,
    pub error: Option<String>,
    /// `codes` or `descriptors`.
    pub kind: Option<String>,
    /// `{"bits", "ties_by_relaxed_outputs"}` or `{"dim"}`.
    #[schema(value_type = Option<Object>)]
    pub size: Option<serde_json::Value>,
    /// Cases in the index (`null` while a search holds the model).
    pub cases: Option<u64>,
    pub can_encode: Option<bool>,
    pub method: Option<String>,
    pub class_names: Option<Vec<String>>,
    pub input_size: Option<u64>,
    pub radius_search: Option<bool>,
    /// Built with flip test-time augmentation: images going in and image queries are
    /// encoded with their mirrors, the two averaged.
    pub flip_tta: Option<bool>,
    /// False when float searches go through an HNSW graph (approximate).
    pub exact: Option<bool>,
}

/// The fields of a search by image (multipart).
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SearchForm {
    /// The query: PNG, JPEG or DICOM (or give `study_uid`).
    #[schema(value_type = Option<String>, format = Binary, nullable = false)]
    pub image: Option<Vec<u8>>,
    /// Instead of an image: a study in the server's PACS (`medret serve --pacs`); its
    /// first image, or the one `series_uid` and `sop_uid` name, is the query.
    #[schema(nullable = false, pattern = r"^[0-9.]{1,64}$")]
    pub study_uid: Option<String>,
    #[schema(nullable = false, pattern = r"^[0-9.]{1,64}$")]
    pub series_uid: Option<String>,
    #[schema(nullable = false, pattern = r"^[0-9.]{1,64}$")]
    pub sop_uid: Option<String>,
    /// `kos`: with `study_uid`, store the results in the PACS as a Key Object Selection
    /// document in the query's study.
    #[schema(nullable = false, pattern = "^kos$")]
    pub export: Option<String>,
    #[schema(min_length = 1)]
    pub model: String,
    /// Results, 1 to 500 (default 10).
    #[schema(nullable = false, minimum = 1, maximum = 500)]
    pub k: Option<u32>,
    /// Codes only: every case within this Hamming distance (pages of 500).
    #[schema(nullable = false, maximum = 1024)]
    pub radius: Option<u32>,
    /// Hits to skip (the next page of a radius search).
    #[schema(nullable = false, maximum = 100000)]
    pub offset: Option<u32>,
    #[schema(nullable = false)]
    pub label: Option<String>,
    #[schema(nullable = false)]
    pub view: Option<String>,
    #[schema(nullable = false)]
    pub eye: Option<String>,
    #[schema(nullable = false, maximum = 4)]
    pub grade: Option<u8>,
    #[schema(nullable = false)]
    pub split: Option<String>,
    /// `x,y,w,h` in fractions of the image; the rectangle must lie inside the image and
    /// span 8 pixels each way (400 otherwise).
    #[schema(
        nullable = false,
        pattern = r"^ *(0(\.[0-9]+)?|1(\.0+)?) *(, *(0(\.[0-9]+)?|1(\.0+)?) *){3}$"
    )]
    pub region: Option<String>,
    /// `false` skips the query's overlay.
    #[schema(nullable = false)]
    pub explain: Option<String>,
    /// Average query expansion with this many nearest cases, 0 to 50 (default 0: off).
    /// Needs an archive of descriptors or of codes with the hash layer's outputs (400
    /// otherwise).
    #[schema(nullable = false, maximum = 50)]
    pub qe: Option<u32>,
}

/// Filters of a search: a case must match every one given.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct FiltersDoc {
    pub label: Option<String>,
    pub view: Option<String>,
    pub eye: Option<String>,
    #[schema(maximum = 4)]
    pub grade: Option<u8>,
    pub split: Option<String>,
}

/// A search by stored cases ("more like these"). Unknown fields are refused.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CasesRequest {
    #[schema(min_length = 1)]
    pub model: String,
    /// 1 to 50 case ids, as responses name them.
    #[schema(min_items = 1, max_items = 50)]
    pub case_ids: Vec<String>,
    #[schema(minimum = 1, maximum = 500)]
    pub k: Option<u32>,
    #[schema(maximum = 1024)]
    pub radius: Option<u32>,
    #[schema(maximum = 100000)]
    pub offset: Option<u32>,
    pub filters: Option<FiltersDoc>,
}

/// One similar case.
#[derive(Serialize, ToSchema)]
pub struct ResultEntry {
    pub rank: u64,
    /// An opaque id (`c` and 32 hex digits) unless the server runs with
    /// `--opaque-ids false`.
    pub case_id: String,
    pub distance: f64,
    pub labels: Vec<String>,
    pub grade: Option<u8>,
    /// `****` unless the server shows patient ids.
    pub patient_id: String,
    pub image_url: String,
    pub thumbnail_url: String,
    pub overlay_url: String,
    pub view: Option<String>,
    pub eye: Option<String>,
    pub split: Option<String>,
    pub age: Option<String>,
    pub sex: Option<String>,
    /// A link to the case in the PACS's viewer (`medret serve --viewer-url`), for cases
    /// synced from the PACS.
    #[schema(nullable = false)]
    pub viewer_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LabelCount {
    pub label: String,
    pub count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Summary {
    pub results: u64,
    pub labels: Vec<LabelCount>,
    pub majority: Option<String>,
    pub notice: String,
}

#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    pub model: String,
    /// With `export=kos`: the key object stored in the PACS (`sop_uid`, `references`).
    #[schema(value_type = Option<Object>)]
    pub kos: Option<serde_json::Value>,
    pub results: Vec<ResultEntry>,
    pub summary: Summary,
    /// False when the ranking came from an HNSW graph (approximate).
    pub exact: bool,
    /// The answer was cut: a radius search beyond 500 hits (see `next_offset`), or a
    /// filtered search that ran out of candidates.
    pub truncated: bool,
    pub next_offset: Option<u64>,
    /// The query's code, probabilities, crop box and overlays.
    #[schema(value_type = Object)]
    pub query: serde_json::Value,
    #[schema(value_type = Object)]
    pub timings_ms: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct CasesResponse {
    pub model: String,
    #[schema(value_type = Object)]
    pub query: serde_json::Value,
    pub results: Vec<ResultEntry>,
    pub summary: Summary,
    pub exact: bool,
    pub truncated: bool,
    pub next_offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct CaseResponse {
    pub case_id: String,
    pub labels: Vec<String>,
    pub grade: Option<u8>,
    pub patient_id: String,
    pub image_url: String,
    pub view: Option<String>,
    pub eye: Option<String>,
    pub split: Option<String>,
    pub age: Option<String>,
    pub sex: Option<String>,
}

/// The fields of an ingest (multipart): one or more images, all or nothing.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct IngestForm {
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1)]
    pub image: Vec<Vec<u8>>,
    #[schema(min_length = 1)]
    pub model: String,
    /// One image only (400 with several); otherwise ids come from the images' content.
    #[schema(nullable = false)]
    pub case_id: Option<String>,
    /// `A|B` or `A,B`.
    #[schema(nullable = false)]
    pub labels: Option<String>,
    #[schema(nullable = false)]
    pub patient_id: Option<String>,
    #[schema(nullable = false)]
    pub view: Option<String>,
    #[schema(nullable = false)]
    pub eye: Option<String>,
    #[schema(nullable = false, maximum = 4)]
    pub grade: Option<u8>,
    #[schema(nullable = false)]
    pub split: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestResponse {
    pub model: String,
    pub ingested: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeleteResponse {
    pub deleted: String,
}

/// `?size=N`: a thumbnail at most N pixels on its longer side (16 to 2048).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ImageSize {
    #[param(minimum = 16, maximum = 2048)]
    pub size: Option<u32>,
}

/// `?model=M`: the model whose saliency is drawn.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OverlayModel {
    pub model: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `METHOD /path` for every operation of the generated document.
    fn operations() -> BTreeSet<String> {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
        out
    }

    #[test]
    fn the_document_lists_every_route_and_docs_api_md_lists_the_same() {
        let ops = operations();
        assert_eq!(ops.len(), 12, "{ops:?}");
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
                .unwrap();
        let index = docs
            .split("## Route index")
            .nth(1)
            .expect("docs/api.md has a `## Route index` section");
        let index = index.split("\n## ").next().unwrap();
        let listed: BTreeSet<String> = index
            .lines()
            .filter_map(|l| l.strip_prefix("- `"))
            .filter_map(|l| l.split('`').next())
            .map(String::from)
            .collect();
        assert_eq!(
            listed, ops,
            "docs/api.md's route index and /api/v1/openapi.json disagree"
        );
    }

    #[test]
    fn every_operation_answers_errors_as_error_bodies() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, res) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') && path != "/readyz" {
                        let schema = &res["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }
}
