//! Results back into the PACS: a Key Object Selection document (PS3.3 A.35.4, template
//! TID 2010) that references the query and the similar cases by UID, with a title and
//! the remark that it is a retrieval result, not a diagnosis. Any DICOM viewer lists it
//! beside the query's study.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataDictionary, DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::dicomweb::Instance;
use crate::error::{PacsError, Result};

/// The remark every medret key object carries.
pub const NOT_A_DIAGNOSIS: &str =
    "Retrieved by similarity of image content (medret). A retrieval result, not a diagnosis.";

/// A new UID under 2.25 (PS3.5 B.2: a UUID as a decimal integer).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>() >> 1)
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from(scheme),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
    ])
}

fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn text(tag: dicom_core::Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// The patient and study attributes the key object copies from the query instance, so
/// that the PACS files it under the same patient and study. They go from the PACS's own
/// file into the PACS; medret keeps none of them.
pub struct StudyContext {
    pub elements: Vec<DataElement<InMemDicomObject>>,
}

impl StudyContext {
    /// Reads the context from the query's DICOM file as the PACS sent it.
    pub fn from_dicom(bytes: &[u8]) -> Result<StudyContext> {
        let obj = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Auto)
            .from_reader(bytes)
            .map_err(|e| {
                PacsError::Config(format!("the query instance is not readable DICOM: {e}"))
            })?;
        let keep = [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::STUDY_ID,
            tags::ACCESSION_NUMBER,
        ];
        let mut elements = Vec::new();
        for t in keep {
            match obj.element_opt(t).ok().flatten() {
                Some(e) => elements.push(e.clone()),
                // Type 2 attributes: present, empty.
                None => elements.push(DataElement::new(
                    t,
                    dicom_object::StandardDataDictionary
                        .by_tag(t)
                        .map(|e| e.vr.relaxed())
                        .unwrap_or(VR::LO),
                    PrimitiveValue::Empty,
                )),
            }
        }
        Ok(StudyContext { elements })
    }
}

/// Referenced instances of one study, by series.
type BySeries<'a> = Vec<(String, Vec<&'a Instance>)>;

/// A Key Object Selection document in the query's study, referencing the query and the
/// similar instances, as a complete DICOM file (explicit VR little endian).
pub fn key_object(
    query: &Instance,
    context: &StudyContext,
    similar: &[Instance],
    title_detail: &str,
) -> Result<(Vec<u8>, String)> {
    let sop = new_uid();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (date, time) = date_time(now);
    let referenced: Vec<&Instance> = std::iter::once(query).chain(similar).collect();
    let sop_ref = |i: &Instance| {
        InMemDicomObject::from_element_iter([
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &i.sop_class),
            text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &i.sop),
        ])
    };
    // Current Requested Procedure Evidence: every referenced instance, by study and series.
    let mut studies: Vec<(String, BySeries)> = Vec::new();
    for i in &referenced {
        let st = match studies.iter_mut().position(|(s, _)| *s == i.study) {
            Some(p) => p,
            None => {
                studies.push((i.study.clone(), Vec::new()));
                studies.len() - 1
            }
        };
        let series = &mut studies[st].1;
        match series.iter_mut().find(|(s, _)| *s == i.series) {
            Some((_, v)) => v.push(i),
            None => series.push((i.series.clone(), vec![i])),
        }
    }
    let evidence: Vec<InMemDicomObject> = studies
        .iter()
        .map(|(study, series)| {
            InMemDicomObject::from_element_iter([
                text(tags::STUDY_INSTANCE_UID, VR::UI, study),
                seq(
                    tags::REFERENCED_SERIES_SEQUENCE,
                    series
                        .iter()
                        .map(|(se, inst)| {
                            InMemDicomObject::from_element_iter([
                                text(tags::SERIES_INSTANCE_UID, VR::UI, se),
                                seq(
                                    tags::REFERENCED_SOP_SEQUENCE,
                                    inst.iter().map(|i| sop_ref(i)).collect(),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ])
        })
        .collect();
    let description = format!(
        "Query and {} similar case(s){}. {NOT_A_DIAGNOSIS}",
        similar.len(),
        if title_detail.is_empty() {
            String::new()
        } else {
            format!(" ({title_detail})")
        }
    );
    let mut content = vec![InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        text(tags::VALUE_TYPE, VR::CS, "TEXT"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("113012", "DCM", "Key Object Description")],
        ),
        text(tags::TEXT_VALUE, VR::UT, &description),
    ])];
    for i in &referenced {
        content.push(InMemDicomObject::from_element_iter([
            text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            text(tags::VALUE_TYPE, VR::CS, "IMAGE"),
            seq(tags::REFERENCED_SOP_SEQUENCE, vec![sop_ref(i)]),
        ]));
    }
    let mut obj = InMemDicomObject::from_element_iter([
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &query.study),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &new_uid()),
        text(tags::MODALITY, VR::CS, "KO"),
        text(tags::SERIES_NUMBER, VR::IS, "9901"),
        text(tags::SERIES_DESCRIPTION, VR::LO, "medret similar cases"),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        text(tags::MANUFACTURER, VR::LO, "medret"),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        text(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("113000", "DCM", "Of Interest")],
        ),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                text(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                text(tags::TEMPLATE_IDENTIFIER, VR::CS, "2010"),
            ])],
        ),
        seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            evidence,
        ),
        seq(tags::CONTENT_SEQUENCE, content),
    ]);
    for e in &context.elements {
        obj.put(e.clone());
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| PacsError::Config(format!("building the key object: {e}")))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| PacsError::Config(format!("writing the key object: {e}")))?;
    Ok((bytes, sop))
}

/// `YYYYMMDD` and `HHMMSS` (UTC) of a Unix time.
fn date_time(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date_time(0), ("19700101".into(), "000000".into()));
        // 2026-12-02 09:38:14 UTC.
        assert_eq!(
            date_time(1_796_204_294),
            ("20261202".into(), "093814".into())
        );
        assert_eq!(date_time(951_782_400), ("20000229".into(), "000000".into()));
    }

    #[test]
    fn uids_are_valid() {
        let u = new_uid();
        assert!(u.starts_with("2.25.") && u.len() <= 64, "{u}");
        assert!(u[5..].bytes().all(|b| b.is_ascii_digit()) && !u[5..].starts_with('0'));
        assert_ne!(new_uid(), new_uid());
    }
}

#[cfg(test)]
mod kos_tests {
    use super::*;

    fn inst(study: &str, series: &str, sop: &str) -> Instance {
        Instance {
            study: study.into(),
            series: series.into(),
            sop: sop.into(),
            sop_class: uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE.into(),
            modality: "CR".into(),
            study_date: String::new(),
            rows: Some(8),
        }
    }

    /// The document parses back with its references grouped by study and series.
    #[test]
    fn a_key_object_references_the_query_and_the_results() {
        let q = inst("1.1", "1.1.1", "1.1.1.1");
        let similar = [
            inst("1.2", "1.2.1", "1.2.1.1"),
            inst("1.2", "1.2.1", "1.2.1.2"),
            inst("1.3", "1.3.1", "1.3.1.1"),
        ];
        let ctx = StudyContext {
            elements: vec![text(tags::PATIENT_ID, VR::LO, "P9")],
        };
        let (bytes, sop) = key_object(&q, &ctx, &similar, "model m").unwrap();
        let obj = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .from_reader(&bytes[..])
            .unwrap();
        let s = |o: &InMemDicomObject, t| {
            o.element(t)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(s(&obj, tags::SOP_INSTANCE_UID), sop);
        assert_eq!(s(&obj, tags::STUDY_INSTANCE_UID), "1.1");
        assert_eq!(s(&obj, tags::MODALITY), "KO");
        assert_eq!(s(&obj, tags::PATIENT_ID), "P9");
        let evidence = obj
            .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let studies: Vec<(String, usize)> = evidence
            .iter()
            .map(|st| {
                let series = st
                    .element(tags::REFERENCED_SERIES_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap();
                let n = series
                    .iter()
                    .map(|se| {
                        se.element(tags::REFERENCED_SOP_SEQUENCE)
                            .unwrap()
                            .items()
                            .unwrap()
                            .len()
                    })
                    .sum();
                (s(st, tags::STUDY_INSTANCE_UID), n)
            })
            .collect();
        assert_eq!(
            studies,
            [
                ("1.1".to_string(), 1),
                ("1.2".to_string(), 2),
                ("1.3".to_string(), 1)
            ]
        );
        let content = obj
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(content.len(), 1 + 4);
        assert!(s(&content[0], tags::TEXT_VALUE).contains("3 similar case(s) (model m)"));
        assert!(s(&content[0], tags::TEXT_VALUE).contains("not a diagnosis"));
    }
}
