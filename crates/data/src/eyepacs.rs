//! EyePACS / Kaggle diabetic retinopathy detection: `trainLabels.csv` (`image,level`),
//! optionally `retinopathy_solution.csv` (`image,level,Usage`) for the test set, and the
//! JPEGs `{image}.jpeg` under `images/`, `train/`, `test/` or the folder itself.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::csv_util::CsvFile;
use crate::error::{DataError, Result};
use crate::record::{Dataset, Eye, Format, ImageSource, MaskRef, ReadOptions, Record, Split};

pub const TRAIN_LABELS: &str = "trainLabels.csv";
pub const TEST_LABELS: &str = "retinopathy_solution.csv";

/// Manifest labels for grades, `DR0`..`DR4` (the same names the IDRiD manifest uses).
pub fn grade_label(grade: u8) -> String {
    format!("DR{grade}")
}

/// Parses `{patient}_{left|right}`.
pub fn parse_image_name(name: &str) -> Option<(String, Eye)> {
    let (patient, eye) = name.rsplit_once('_')?;
    if patient.is_empty() {
        return None;
    }
    Some((patient.to_string(), Eye::parse(eye)?))
}

fn find_image(root: &Path, name: &str) -> Option<PathBuf> {
    for dir in ["images", "train", "test", "."] {
        for ext in ["jpeg", "jpg", "png"] {
            let p = root.join(dir).join(format!("{name}.{ext}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Reads an EyePACS folder.
pub fn read_eyepacs(root: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let train = root.join(TRAIN_LABELS);
    let test = root.join(TEST_LABELS);
    if !train.is_file() && !test.is_file() {
        return Err(DataError::format(
            root,
            format!("no {TRAIN_LABELS} or {TEST_LABELS} in this folder"),
        ));
    }
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    for (csv_path, split) in [(train, Split::Train), (test, Split::Test)] {
        if !csv_path.is_file() {
            continue;
        }
        let mut csv = CsvFile::open(&csv_path)?;
        let c_image = csv.column("image")?;
        let c_level = csv.column("level")?;
        let c_usage = csv.optional_column("Usage");
        for row in csv.rows()? {
            let parsed = (|| -> Result<Record> {
                let name = row.get(c_image);
                let (patient, eye) = parse_image_name(name).ok_or_else(|| {
                    DataError::row(
                        &csv_path,
                        row.line,
                        format!("image name `{name}` is not `{{patient}}_{{left|right}}`"),
                    )
                })?;
                if !seen.insert(name.to_string()) {
                    return Err(DataError::row(
                        &csv_path,
                        row.line,
                        format!("image `{name}` listed twice"),
                    ));
                }
                let level = row.get(c_level);
                let grade = crate::manifest::parse_grade(level)
                    .map_err(|m| DataError::row(&csv_path, row.line, m))?
                    .ok_or_else(|| DataError::row(&csv_path, row.line, "empty `level`"))?;
                let file = find_image(root, name).ok_or_else(|| DataError::MissingImage {
                    path: csv_path.clone(),
                    line: row.line,
                    image: root.join("images").join(format!("{name}.jpeg")),
                })?;
                let mut rec = Record::new(name.to_string(), ImageSource::File(file));
                rec.grade = Some(grade);
                rec.labels = vec![grade_label(grade)];
                rec.patient_id = patient;
                rec.eye = Some(eye);
                rec.split = Some(split);
                if let Some(c) = c_usage {
                    rec.meta.insert("usage".into(), row.get(c).to_string());
                }
                let mask = root.join("masks").join(format!("{name}.png"));
                if mask.is_file() {
                    rec.masks.push(MaskRef {
                        path: mask,
                        lesion: None,
                    });
                }
                Ok(rec)
            })();
            if let Some(r) = opts.keep_or_skip(parsed, &mut skipped)? {
                records.push(r);
            }
        }
    }
    Ok(Dataset {
        format: Format::Eyepacs,
        root: root.to_path_buf(),
        label_names: (0..5).map(grade_label).collect(),
        records,
        skipped,
    })
}
