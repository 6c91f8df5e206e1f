//! medret's generic `manifest.csv`: `path,labels,patient_id,split` and optional
//! `view,eye,grade,masks`; other columns are kept as case metadata.

use std::collections::BTreeSet;
use std::path::Path;

use crate::csv_util::CsvFile;
use crate::error::{DataError, Result};
use crate::record::{Dataset, Eye, Format, ImageSource, MaskRef, ReadOptions, Record, Split};

const KNOWN: [&str; 8] = [
    "path",
    "labels",
    "patient_id",
    "split",
    "view",
    "eye",
    "grade",
    "masks",
];

/// Reads a manifest; `path` is the CSV file or the folder holding `manifest.csv`.
pub fn read_manifest(path: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let csv_path = if path.is_dir() {
        path.join("manifest.csv")
    } else {
        path.to_path_buf()
    };
    let root = csv_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut csv = CsvFile::open(&csv_path)?;
    let c_path = csv.column("path")?;
    let c_labels = csv.column("labels")?;
    let c_patient = csv.column("patient_id")?;
    let c_split = csv.column("split")?;
    let c_view = csv.optional_column("view");
    let c_eye = csv.optional_column("eye");
    let c_grade = csv.optional_column("grade");
    let c_masks = csv.optional_column("masks");
    let extra: Vec<(usize, String)> = csv
        .header
        .iter()
        .enumerate()
        .filter(|(_, h)| !KNOWN.contains(&h.as_str()) && !h.is_empty())
        .map(|(i, h)| (i, h.clone()))
        .collect();

    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut vocabulary = BTreeSet::new();
    for row in csv.rows()? {
        let parsed = (|| -> Result<Record> {
            let rel = row.get(c_path);
            if rel.is_empty() {
                return Err(DataError::row(&csv_path, row.line, "empty `path`"));
            }
            let image = root.join(rel);
            if !image.is_file() {
                return Err(DataError::MissingImage {
                    path: csv_path.clone(),
                    line: row.line,
                    image,
                });
            }
            let source = if is_dicom_name(&image) {
                ImageSource::Dicom {
                    path: image,
                    frame: 0,
                }
            } else {
                ImageSource::File(image)
            };
            let mut rec = Record::new(rel.to_string(), source);
            rec.labels = split_labels(row.get(c_labels));
            rec.patient_id = row.get(c_patient).to_string();
            if rec.patient_id.is_empty() {
                return Err(DataError::row(&csv_path, row.line, "empty `patient_id`"));
            }
            let split = row.get(c_split);
            rec.split = if split.is_empty() {
                None
            } else {
                Some(Split::parse(split).ok_or_else(|| {
                    DataError::row(
                        &csv_path,
                        row.line,
                        format!("unknown split `{split}` (expected train, val or test)"),
                    )
                })?)
            };
            if let Some(c) = c_view {
                let v = row.get(c);
                rec.view = (!v.is_empty()).then(|| v.to_string());
            }
            if let Some(c) = c_eye {
                let v = row.get(c);
                if !v.is_empty() {
                    rec.eye = Some(Eye::parse(v).ok_or_else(|| {
                        DataError::row(&csv_path, row.line, format!("unknown eye `{v}`"))
                    })?);
                }
            }
            if let Some(c) = c_grade {
                rec.grade =
                    parse_grade(row.get(c)).map_err(|m| DataError::row(&csv_path, row.line, m))?;
            }
            if let Some(c) = c_masks {
                for m in row
                    .get(c)
                    .split(';')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    let mp = root.join(m);
                    if !mp.is_file() {
                        return Err(DataError::row(
                            &csv_path,
                            row.line,
                            format!("mask `{}` is listed but absent", mp.display()),
                        ));
                    }
                    rec.masks.push(MaskRef {
                        lesion: lesion_from_mask_name(&mp),
                        path: mp,
                    });
                }
            }
            for (i, name) in &extra {
                rec.meta.insert(name.clone(), row.get(*i).to_string());
            }
            if let Some(known) = &opts.label_vocabulary
                && let Some(bad) = rec.labels.iter().find(|l| !known.contains(l))
            {
                return Err(DataError::UnknownLabel {
                    path: csv_path.clone(),
                    line: row.line,
                    label: bad.clone(),
                    known: known.join(", "),
                });
            }
            Ok(rec)
        })();
        if let Some(rec) = opts.keep_or_skip(parsed, &mut skipped)? {
            vocabulary.extend(rec.labels.iter().cloned());
            records.push(rec);
        }
    }
    let label_names = match &opts.label_vocabulary {
        Some(v) => v.clone(),
        None => vocabulary.into_iter().collect(),
    };
    Ok(Dataset {
        format: Format::Manifest,
        root,
        label_names,
        records,
        skipped,
    })
}

/// `A|B|C` to names; empty means unlabelled.
pub(crate) fn split_labels(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// An empty grade is `None`; anything else must be an integer 0-4.
pub(crate) fn parse_grade(s: &str) -> std::result::Result<Option<u8>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<u8>() {
        Ok(g) if g <= 4 => Ok(Some(g)),
        _ => Err(format!("DR grade `{s}` is not an integer 0-4")),
    }
}

/// `IDRiD_01_MA.png` -> `MA`.
fn lesion_from_mask_name(p: &Path) -> Option<String> {
    let stem = p.file_stem()?.to_str()?;
    let suffix = stem.rsplit('_').next()?;
    ["MA", "HE", "EX", "SE", "OD", "NV"]
        .contains(&suffix)
        .then(|| suffix.to_string())
}

pub(crate) fn is_dicom_name(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("dcm" | "dicom")
    )
}
