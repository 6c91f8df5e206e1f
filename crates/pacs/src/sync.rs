//! `medret pacs sync`: the archive follows the PACS.
//!
//! Instances are found by QIDO-RS, retrieved by WADO-RS, decoded (frame 1), encoded by
//! the archive's model and ingested with their Study, Series and SOP Instance UIDs as
//! case metadata. The case key is the SOP Instance UID, so that a run never adds an
//! instance twice (idempotent), and each instance is committed on its own, in UID order
//! (a killed sync loses at most the instance in flight; the rerun fetches only what is
//! missing and ends with the archive an uninterrupted run would have built).
//!
//! What medret keeps of an instance: a 16-bit PNG of the frame as medret shows it (no
//! DICOM header), the UIDs, the modality, the view, and a pseudonym of the Patient ID
//! (keyed by the store's secret, so that cases of one patient group together without
//! the ID being stored). No names, no dates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medret_models::encoder::Encoder;
use medret_search::ingest::NewImage;
use medret_store::{Archive, CaseStore, ModelKind, NewCase};
use serde::Serialize;

use crate::dicomweb::{DicomWeb, Instance};
use crate::error::{PacsError, Result};

/// What to sync.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Only studies from this date on (`YYYYMMDD`, QIDO `StudyDate=YYYYMMDD-`).
    pub since: Option<String>,
    /// QIDO matching keys; a key with several values separated by commas
    /// (`Modality=CR,DX`) is one query per value.
    pub filters: Vec<(String, Vec<String>)>,
}

/// What a sync did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SyncSummary {
    /// Instances the PACS listed.
    pub found: usize,
    /// Instances ingested by this run.
    pub new: usize,
    /// Instances not ingested, by reason (already in the archive, no pixels, ...).
    pub skipped: BTreeMap<String, usize>,
    /// Instances that could not be ingested, with the reason (SOP Instance UID: why).
    pub failed: Vec<String>,
}

impl SyncSummary {
    fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_string()).or_default() += 1;
    }
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "found {}, new {}", self.found, self.new)?;
        for (why, n) in &self.skipped {
            writeln!(f, "skipped {n}: {why}")?;
        }
        if !self.failed.is_empty() {
            writeln!(f, "failed {}:", self.failed.len())?;
            for e in &self.failed {
                writeln!(f, "  {e}")?;
            }
        }
        Ok(())
    }
}

pub const ALREADY: &str = "already in the archive";
pub const NO_PIXELS: &str = "no pixel data (a report, key object or other non-image)";

/// The QIDO queries for `opts`: the product of every key's values.
fn queries(opts: &SyncOptions) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, values) in &opts.filters {
        out = out
            .into_iter()
            .flat_map(|q| {
                values.iter().map(move |v| {
                    let mut q = q.clone();
                    q.push((k.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    if let Some(d) = &opts.since {
        for q in &mut out {
            q.push(("StudyDate".into(), format!("{d}-")));
        }
    }
    out
}

/// Every instance the PACS lists for `opts`, once each, in UID order.
pub fn find(client: &DicomWeb, opts: &SyncOptions) -> Result<Vec<Instance>> {
    let mut all = Vec::new();
    for q in queries(opts) {
        all.extend(client.find_instances(None, &q)?);
    }
    all.sort();
    all.dedup_by(|a, b| a.sop == b.sop);
    Ok(all)
}

/// A pseudonym of a Patient ID, keyed by the store's secret: stable within one store,
/// meaningless outside it.
pub fn patient_pseudonym(store_secret: &str, patient_id: &str) -> String {
    use sha2::{Digest, Sha256};
    if patient_id.trim().is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    h.update(store_secret.as_bytes());
    h.update([0]);
    h.update(patient_id.trim().as_bytes());
    h.update([0]);
    h.update(store_secret.as_bytes());
    let d = h.finalize();
    format!(
        "p{}",
        d[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// One retrieved instance, read: the frame medret shows, and the attributes it keeps.
pub struct Fetched {
    pub instance: Instance,
    pub image: medret_data::ImageF32,
    pub patient_id: String,
    pub view: Option<String>,
    pub laterality: Option<String>,
}

/// Retrieves and decodes one instance (frame 1).
pub fn fetch(client: &DicomWeb, i: &Instance) -> Result<Fetched> {
    let bytes = client.retrieve(i)?;
    decode_retrieved(i, &bytes)
}

/// Decodes the DICOM file WADO-RS returned for `i`.
pub fn decode_retrieved(i: &Instance, bytes: &[u8]) -> Result<Fetched> {
    let name = PathBuf::from(format!("{}.dcm", i.sop));
    let image = medret_data::dicom::decode_dicom_bytes(&name, bytes)?;
    let rec = medret_data::dicom::record_of_bytes(&name, bytes)?;
    Ok(Fetched {
        instance: i.clone(),
        image,
        patient_id: rec.patient_id,
        view: rec.view,
        laterality: rec.eye.map(|e| e.name().to_string()),
    })
}

/// The case a fetched instance becomes (its key the SOP Instance UID).
fn new_case(f: &Fetched, secret: &str) -> NewCase {
    let i = &f.instance;
    NewCase {
        key: i.sop.clone(),
        path: String::new(),
        labels: Vec::new(),
        grade: None,
        patient_id: patient_pseudonym(secret, &f.patient_id),
        study: serde_json::json!({
            "view": f.view,
            "eye": f.laterality,
            "split": null,
            "meta": {
                "source": "pacs",
                "study_uid": i.study,
                "series_uid": i.series,
                "sop_uid": i.sop,
                "sop_class_uid": i.sop_class,
                "modality": i.modality,
            },
        }),
    }
}

/// Syncs `archive` (model `kind`, encoded by `encoder`) with the PACS: see the module
/// documentation. `progress(done, total)` is called after each instance.
pub fn sync<S: CaseStore>(
    client: &DicomWeb,
    archive: &mut Archive<S>,
    kind: ModelKind,
    encoder: &Encoder,
    upload_dir: &Path,
    opts: &SyncOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<SyncSummary> {
    let secret = archive.store().setting("opaque_key")?.ok_or_else(|| {
        PacsError::Config("the store has no secret (opaque_key) for pseudonyms".into())
    })?;
    // Encoded as the archive encodes its cases (with their mirrors, for an archive built
    // with flip test-time augmentation).
    let flip = medret_search::binding::ModelBinding::flip_tta_of(&archive.model().config_hash);
    let found = find(client, opts)?;
    let mut summary = SyncSummary {
        found: found.len(),
        ..SyncSummary::default()
    };
    let mut todo = Vec::new();
    for i in found {
        if i.rows.is_none() {
            summary.skip(NO_PIXELS);
        } else if archive.store().case_by_key(&i.sop)?.is_some() {
            summary.skip(ALREADY);
        } else {
            todo.push(i);
        }
    }
    let total = todo.len();
    for (n, i) in todo.into_iter().enumerate() {
        let fetched = match fetch(client, &i) {
            Ok(f) => f,
            // The PACS itself failing (down, refusing the credentials) stops the sync:
            // every later instance would fail the same way.
            Err(e @ (PacsError::Unauthorized { .. } | PacsError::Unreachable { .. })) => {
                return Err(e);
            }
            Err(e) => {
                summary.failed.push(format!("{}: {e}", i.sop));
                progress(n + 1, total);
                continue;
            }
        };
        let case = new_case(&fetched, &secret);
        let encoded = encoder.encode_images_as(vec![fetched.image.clone()], false, flip);
        let Some(e) = encoded.first() else {
            summary
                .failed
                .push(format!("{}: the model returned no vector", i.sop));
            continue;
        };
        let png = {
            let mut out = std::io::Cursor::new(Vec::new());
            fetched
                .image
                .to_dynamic16()
                .write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| PacsError::Config(format!("PNG encoding: {e}")))?;
            out.into_inner()
        };
        let image = NewImage {
            key: i.sop.clone(),
            extension: "png",
            bytes: png,
            vector: medret_search::query::stored_vector(kind, e),
        };
        match medret_search::ingest::ingest_images_as(archive, &[image], &[case], upload_dir) {
            Ok(_) => summary.new += 1,
            Err(medret_search::error::SearchError::Conflict(_)) => summary.skip(ALREADY),
            Err(e) => return Err(e.into()),
        }
        progress(n + 1, total);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_one_query_per_value() {
        let opts = SyncOptions {
            since: Some("20260101".into()),
            filters: vec![
                ("Modality".into(), vec!["CR".into(), "DX".into()]),
                ("BodyPartExamined".into(), vec!["CHEST".into()]),
            ],
        };
        let q = queries(&opts);
        let text: Vec<String> = q
            .iter()
            .map(|q| {
                q.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            })
            .collect();
        assert_eq!(
            text,
            [
                "Modality=CR&BodyPartExamined=CHEST&StudyDate=20260101-",
                "Modality=DX&BodyPartExamined=CHEST&StudyDate=20260101-",
            ]
        );
        assert_eq!(queries(&SyncOptions::default()), vec![Vec::new()]);
    }

    #[test]
    fn pseudonyms_group_a_patient_and_hide_the_id() {
        let a = patient_pseudonym("k1", "MRN0001");
        assert_eq!(a, patient_pseudonym("k1", " MRN0001 "));
        assert_ne!(a, patient_pseudonym("k1", "MRN0002"));
        // Another store's secret gives another pseudonym: a list of IDs hashed without
        // the secret finds nothing.
        assert_ne!(a, patient_pseudonym("k2", "MRN0001"));
        assert!(
            a.starts_with('p') && a.len() == 25 && !a.contains("0001"),
            "{a}"
        );
        assert_eq!(patient_pseudonym("k1", "  "), "");
    }
}
