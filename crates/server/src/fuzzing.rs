//! The bodies of the fuzz targets for what a request or a model folder hands the server
//! (`fuzz/fuzz_targets/{model_card,fields,form}.rs`); medret-data's parsers have theirs in
//! `medret_data::fuzzing`. Kept here so that the committed corpora replay on stable
//! (`tests/fuzz_corpus.rs`). An error is a correct answer; a panic, an abort or an
//! allocation beyond libFuzzer's memory limit is a finding.

use std::path::Path;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::Request;
use medret_data::ImageF32;
use medret_data::transform::Pipeline;
use medret_models::model_card::ModelCard;
use medret_search::opaque::OpaqueIds;
use medret_search::query::{Region, parse_hex_code};

/// The boundary the `form` target's inputs use (the seeds are written with it).
pub const FORM_BOUNDARY: &str = "medretfuzz";

/// `model.json`: parsed without the checksum (which the fuzzer cannot forge, and anyone
/// can compute), then checked, then what the server derives from an accepted card: the
/// stored vector's size, the network's widths and the query preprocessing, applied to a
/// small image when the card's input size is small.
pub fn model_card(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("model.json");
    let _ = ModelCard::parse(path, text, true);
    let Ok(card) = ModelCard::parse(path, text, false) else {
        return;
    };
    let _ = card.vector_bytes();
    match &card.method {
        medret_models::model_card::Method::CxrFusionHash(c) => {
            let _ = (c.head_in_dim(), c.global_config(), c.local_config());
        }
        medret_models::model_card::Method::FundusMetric(c) => {
            let _ = c.descriptor_dim();
        }
    }
    if card.preprocessing.size <= 64 {
        for channels in [1, 3] {
            let img = ImageF32::new(channels, 20, 30);
            let _ = Pipeline::new(card.preprocessing.clone(), 0).apply(img, 0, 0);
        }
    }
}

/// The text fields a search carries: a region (`x,y,w,h`, then cropped from a small
/// image), a hex query code for codes of several lengths, and an opaque case id.
pub fn fields(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(r) = Region::parse(&s) {
        let _ = r.crop(&ImageF32::new(1, 40, 30));
    }
    for bytes in [1, 2, 6, 8, 32] {
        let _ = parse_hex_code(&s, bytes);
    }
    static IDS: OnceLock<OpaqueIds> = OnceLock::new();
    let _ = IDS.get_or_init(|| OpaqueIds::from_key(&[7; 16])).decode(&s);
}

/// A `multipart/form-data` body (boundary [`FORM_BOUNDARY`]) read as the search and
/// ingest handlers read theirs, then their fields parsed.
pub fn form(data: &[u8]) {
    let _ = form_outcome(data);
}

/// What [`form`] reached: whether the body read as a form, whether its search options
/// and its ingest fields were accepted, and how many uploads decoded (for the seeds'
/// test, which checks that fuzzing starts from the deep paths).
pub fn form_outcome(data: &[u8]) -> Option<(bool, bool, usize)> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    });
    let req = Request::builder()
        .method("POST")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={FORM_BOUNDARY}"),
        )
        .body(Body::from(data.to_vec()))
        .expect("a request");
    let form = rt.block_on(async {
        let m = Multipart::from_request(req, &()).await.ok()?;
        crate::api::Form::read(m).await.ok()
    });
    let form = form?;
    let search = form.search_options(false).is_ok();
    let ingest = form.ingest_fields().is_ok();
    // The uploads as the handlers decode them: the declared size read from the header
    // and checked before any pixel is, under a budget (which blocks, so outside the
    // runtime, as the handlers call it from blocking threads).
    static BUDGET: OnceLock<crate::upload::DecodeBudget> = OnceLock::new();
    let budget = BUDGET.get_or_init(|| crate::upload::DecodeBudget::new(64));
    let decoded = form
        .files
        .iter()
        .filter(|(name, bytes)| crate::upload::decode(bytes, name, 1 << 20, budget).is_ok())
        .count();
    Some((search, ingest, decoded))
}
