//! Searching by what the viewer shows: a study (or series, or instance) UID instead of an
//! image, fetched from the PACS; and the results as PACS instances for a key object.

use medret_search::query::Hit;

use crate::dicomweb::{DicomWeb, Instance};
use crate::error::{PacsError, Result};

/// The instance a UID query means: the given instance, or the first image of the given
/// series or study (in UID order), found by QIDO-RS.
pub fn resolve(
    client: &DicomWeb,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> Result<Instance> {
    let mut keys = Vec::new();
    if let Some(s) = series {
        keys.push(("SeriesInstanceUID".to_string(), s.to_string()));
    }
    if let Some(s) = sop {
        keys.push(("SOPInstanceUID".to_string(), s.to_string()));
    }
    let mut found = client.find_instances(Some(study), &keys)?;
    found.retain(|i| i.rows.is_some() && i.study == study);
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        PacsError::NotFound(format!(
            "the PACS has no image instance for study {study}{}{}",
            series.map(|s| format!(", series {s}")).unwrap_or_default(),
            sop.map(|s| format!(", instance {s}")).unwrap_or_default()
        ))
    })
}

/// The hits that came from the PACS (by `medret pacs sync`), as instances, leaving out
/// the query's own instance.
pub fn hit_instances(hits: &[Hit], query: &Instance) -> Vec<Instance> {
    hits.iter()
        .filter_map(|h| {
            let m = h.study.get("meta")?;
            let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
            if s("source").as_deref() != Some("pacs") {
                return None;
            }
            Some(Instance {
                study: s("study_uid")?,
                series: s("series_uid")?,
                sop: s("sop_uid")?,
                sop_class: s("sop_class_uid")?,
                modality: s("modality").unwrap_or_default(),
                study_date: String::new(),
                rows: None,
            })
        })
        .filter(|i| i.sop != query.sop)
        .collect()
}

/// Writes the results as a Key Object Selection document in the query's study and stores
/// it in the PACS by STOW-RS. Returns its SOP Instance UID.
pub fn store_key_object(
    client: &DicomWeb,
    query: &Instance,
    query_file: &[u8],
    similar: &[Instance],
    detail: &str,
) -> Result<String> {
    let context = crate::kos::StudyContext::from_dicom(query_file)?;
    let (bytes, sop) = crate::kos::key_object(query, &context, similar, detail)?;
    client.store(&[bytes])?;
    Ok(sop)
}
