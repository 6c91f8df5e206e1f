//! `medret index check`: whether a store's rows, every model's vectors, the in-memory
//! indexes rebuilt from them, and the image files agree. Crash and concurrency tests end
//! with it; an operator runs it after an incident.
//!
//! What is checked:
//! - every model's vectors load into an index (sizes, finite floats), the index holds
//!   exactly the stored vectors, and each of a sample of stored vectors finds its own
//!   case at distance 0 (an index that does not answer for its own contents is broken);
//! - every case has a vector for at least one model (an ingest always writes one);
//! - every case's image file exists: `upload:` images in the upload folder, others at
//!   their path (relative ones against the image root);
//! - every file in the upload folder belongs to a case: a file no case refers to is an
//!   orphan, and a partial file (`.<name>.<random>.partial`) older than
//!   [`crate::ingest::PARTIAL_GRACE`] is what a crash left.
//!
//! `repair` finishes or undoes the crash leftovers ([`crate::ingest::sweep_uploads`]) and
//! removes orphans: never a file a case refers to, never anything outside the upload
//! folder. Missing image files and broken vectors cannot be repaired; they are reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use medret_store::archive::FloatSearch;
use medret_store::{Archive, CaseStore, ModelKind};
use serde::Serialize;

use crate::error::Result;
use crate::ingest::{PARTIAL_GRACE, UPLOAD_SCHEME, sweep_uploads, uploaded_file_name};

/// Stored vectors per model that are searched for themselves.
pub const SELF_SEARCH_SAMPLE: usize = 200;

/// Neighbours looked at for a stored vector's own case.
const SELF_TIES: usize = 64;

/// Listed items per finding at most (the count is always complete).
const LISTED: usize = 50;

/// Where a store's image files live.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// The folder of images the server wrote (`upload:` paths).
    pub upload_dir: Option<PathBuf>,
    /// The root of relative dataset paths.
    pub image_root: Option<PathBuf>,
}

/// One model's findings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCheck {
    pub name: String,
    pub vectors: u64,
    /// Cases in the index rebuilt from the vectors (`None`: it could not be built).
    pub index_cases: Option<u64>,
    /// Sampled vectors that did not find their own case at distance 0.
    pub self_search_misses: u64,
    pub error: Option<String>,
}

/// A finding: how many, and the first few.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Finding {
    pub count: u64,
    pub first: Vec<String>,
}

impl Finding {
    fn push(&mut self, item: String) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(item);
        }
    }
}

/// What `medret index check` found (and, with `repair`, did).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub cases: u64,
    pub models: Vec<ModelCheck>,
    /// Case ids with no vector for any model.
    pub cases_without_vectors: Finding,
    /// Case ids whose image file is not there.
    pub missing_files: Finding,
    /// Case ids stored with `upload:` paths while no upload folder was given.
    pub unresolved_uploads: Finding,
    /// Files in the upload folder that no case refers to (partial files of crashed
    /// ingests included).
    pub orphan_files: Finding,
    /// Partial files young enough to belong to an ingest in flight: not a fault.
    pub in_flight: Finding,
    /// With repair: files removed, and partial files completed to their final names.
    pub removed: Finding,
    pub completed: u64,
    pub consistent: bool,
}

impl Report {
    /// One line per finding, for the terminal.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} cases, {} models: {}",
            self.cases,
            self.models.len(),
            if self.consistent {
                "consistent"
            } else {
                "NOT consistent"
            }
        )];
        for m in &self.models {
            out.push(format!(
                "  model {}: {} vectors, index {}, {} of the sampled vectors do not find themselves{}",
                m.name,
                m.vectors,
                m.index_cases
                    .map_or("not built".to_string(), |n| format!("{n} cases")),
                m.self_search_misses,
                m.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        let mut finding = |name: &str, f: &Finding| {
            if f.count > 0 {
                out.push(format!("  {name}: {} ({})", f.count, f.first.join(", ")));
            }
        };
        finding("cases without vectors", &self.cases_without_vectors);
        finding("missing image files", &self.missing_files);
        finding(
            "uploaded images with no --upload-dir to find them",
            &self.unresolved_uploads,
        );
        finding("orphan files", &self.orphan_files);
        finding("partial files of ingests in flight", &self.in_flight);
        finding("removed", &self.removed);
        if self.completed > 0 {
            out.push(format!(
                "  completed {} interrupted image moves",
                self.completed
            ));
        }
        out
    }
}

/// Checks `store` (opened again through `open` for each model's index) against `files`.
pub fn check<S: CaseStore>(
    store: &mut S,
    mut open: impl FnMut() -> Result<S>,
    files: &Files,
    repair: bool,
) -> Result<Report> {
    let mut report = Report::default();
    if repair && let Some(dir) = &files.upload_dir {
        let sweep = sweep_uploads(store, dir)?;
        report.completed = sweep.completed as u64;
        for _ in 0..sweep.removed {
            report.removed.push("partial file".into());
        }
    }
    let info = store.info()?;
    report.cases = info.cases;
    let mut with_vectors: BTreeSet<u64> = BTreeSet::new();
    for (m, _) in &info.models {
        report.models.push(check_model(
            store,
            &mut open,
            &m.name,
            m.kind,
            &mut with_vectors,
        )?);
    }
    let paths = store.case_paths()?;
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    // Case ids per finding, named by their keys once the scan is done.
    let mut without_vectors = Vec::new();
    let mut missing = Vec::new();
    let mut unresolved = Vec::new();
    for (id, path) in &paths {
        if !with_vectors.contains(id) {
            without_vectors.push(*id);
        }
        let file = match uploaded_file_name(path) {
            Some(name) => {
                referenced.insert(name.to_string());
                match &files.upload_dir {
                    Some(d) => d.join(name),
                    None => {
                        unresolved.push(*id);
                        continue;
                    }
                }
            }
            // An `upload:` path that would leave the folder: never followed.
            None if path.starts_with(UPLOAD_SCHEME) => {
                missing.push(*id);
                continue;
            }
            None => {
                let p = Path::new(path);
                match &files.image_root {
                    Some(root) if p.is_relative() => root.join(p),
                    _ => p.to_path_buf(),
                }
            }
        };
        if !file.is_file() {
            missing.push(*id);
        }
    }
    for (ids, finding) in [
        (without_vectors, &mut report.cases_without_vectors),
        (missing, &mut report.missing_files),
        (unresolved, &mut report.unresolved_uploads),
    ] {
        for id in ids {
            let key = store.case(id)?.map_or_else(|| id.to_string(), |c| c.key);
            finding.push(key);
        }
    }
    if let Some(dir) = &files.upload_dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().is_ok_and(|t| t.is_file()) || referenced.contains(&name) {
                continue;
            }
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < PARTIAL_GRACE);
            if name.ends_with(".partial") && name.starts_with('.') && young {
                report.in_flight.push(name);
            } else if repair {
                if std::fs::remove_file(e.path()).is_ok() {
                    report.removed.push(name);
                } else {
                    report.orphan_files.push(name);
                }
            } else {
                report.orphan_files.push(name);
            }
        }
    }
    report.consistent = report.models.iter().all(|m| {
        m.error.is_none() && m.self_search_misses == 0 && m.index_cases == Some(m.vectors)
    }) && report.cases_without_vectors.count == 0
        && report.missing_files.count == 0
        && report.unresolved_uploads.count == 0
        && report.orphan_files.count == 0;
    Ok(report)
}

fn check_model<S: CaseStore>(
    store: &mut S,
    open: &mut impl FnMut() -> Result<S>,
    name: &str,
    kind: ModelKind,
    with_vectors: &mut BTreeSet<u64>,
) -> Result<ModelCheck> {
    let vectors = store.vectors(name)?;
    with_vectors.extend(vectors.iter().map(|(id, _)| *id));
    let mut m = ModelCheck {
        name: name.to_string(),
        vectors: vectors.len() as u64,
        index_cases: None,
        self_search_misses: 0,
        error: None,
    };
    // The exact index: the check is about the data, not about a graph's recall.
    let archive = match Archive::open_with(open()?, name, FloatSearch::Exact) {
        Ok(a) => a,
        Err(e) => {
            m.error = Some(e.to_string());
            return Ok(m);
        }
    };
    m.index_cases = Some(archive.len() as u64);
    let step = vectors.len().div_ceil(SELF_SEARCH_SAMPLE).max(1);
    for (id, v) in vectors.iter().step_by(step) {
        // The case must be among the nearest, at distance 0. Among more than
        // `SELF_TIES` exact duplicates it may rank below them all: then it counts as
        // found when every one of them is at distance 0.
        let tol = self_distance_tolerance(kind);
        let hits = archive.search(v, SELF_TIES.min(archive.len()))?;
        let found = hits.iter().any(|h| h.id == *id && h.distance <= tol)
            || (hits.len() == SELF_TIES && hits.iter().all(|h| h.distance <= tol));
        if !found {
            m.self_search_misses += 1;
        }
    }
    Ok(m)
}

/// A stored vector's distance to itself: 0 for codes; for float descriptors up to the
/// rounding of `1 - cosine` or squared L2 in f32.
fn self_distance_tolerance(kind: ModelKind) -> f64 {
    match kind {
        ModelKind::Codes { .. } => 0.0,
        ModelKind::Descriptors { .. } => 1e-4,
    }
}
