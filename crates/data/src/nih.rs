//! NIH ChestX-ray8/14: `Data_Entry_2017.csv`, `train_val_list.txt`, `test_list.txt`,
//! `BBox_List_2017.csv`, `images/*.png` (and, from our phantoms, `masks/*.png`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::csv_util::{CsvFile, read_list};
use crate::error::{DataError, Result};
use crate::labels::{NO_FINDING, NihLabelSet, canonical_nih_finding};
use crate::record::{BBox, Dataset, Format, ImageSource, MaskRef, ReadOptions, Record, Split};

/// The data-entry file names we accept, newest first.
pub const DATA_ENTRY_FILES: [&str; 2] = ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"];

/// The first seven header fields, which must match by name. The last two bracketed
/// headers contain commas, so a row has 11 fields (12 with a trailing comma).
const HEADER: [&str; 7] = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
];

/// Finds the data-entry CSV in `root`.
pub fn find_data_entry(root: &Path) -> Option<PathBuf> {
    DATA_ENTRY_FILES
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.is_file())
}

/// Maps image names to files under `images/` and the official `images_NNN/images/` folders.
fn index_images(root: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut dirs = vec![root.join("images")];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("images_") && e.path().join("images").is_dir() {
                dirs.push(e.path().join("images"));
            }
        }
    }
    let mut map = HashMap::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for e in std::fs::read_dir(d)
            .map_err(|e| DataError::io(d, e))?
            .flatten()
        {
            map.insert(e.file_name().to_string_lossy().to_string(), e.path());
        }
    }
    Ok(map)
}

/// Reads an NIH ChestX-ray8/14 folder.
pub fn read_nih(root: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let entry = find_data_entry(root).ok_or_else(|| {
        DataError::format(
            root,
            format!("no {} in this folder", DATA_ENTRY_FILES.join(" or ")),
        )
    })?;
    let set = opts.nih_labels.unwrap_or(NihLabelSet::ChestXray14);
    let findings = set.findings();
    let all_findings = NihLabelSet::ChestXray14.findings();
    let images = index_images(root)?;
    let masks_dir = root.join("masks");

    let mut csv = CsvFile::open(&entry)?;
    for (i, name) in HEADER.iter().enumerate() {
        if csv.header.get(i).map(String::as_str) != Some(*name) {
            return Err(DataError::MissingColumn {
                path: entry.clone(),
                column: (*name).to_string(),
                found: csv.header.join(","),
            });
        }
    }

    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    for row in csv.rows()? {
        let parsed = (|| -> Result<Option<Record>> {
            let n = row.fields.len();
            let trailing_empty = n == 12 && row.get(11).is_empty();
            if n != 11 && !trailing_empty {
                return Err(DataError::row(
                    &entry,
                    row.line,
                    format!("expected 11 fields, found {n}"),
                ));
            }
            let name = row.get(0).to_string();
            if !seen.insert(name.clone()) {
                return Err(DataError::row(
                    &entry,
                    row.line,
                    format!("image `{name}` listed twice"),
                ));
            }
            let Some(file) = images.get(&name) else {
                return Err(DataError::MissingImage {
                    path: entry.clone(),
                    line: row.line,
                    image: root.join("images").join(&name),
                });
            };
            let mut labels = Vec::new();
            for raw in row.get(1).split('|').map(str::trim) {
                if raw == NO_FINDING {
                    labels.push(NO_FINDING.to_string());
                    continue;
                }
                let f = canonical_nih_finding(raw);
                if findings.contains(&f) {
                    labels.push(f.to_string());
                } else if !all_findings.contains(&f) {
                    return Err(DataError::UnknownLabel {
                        path: entry.clone(),
                        line: row.line,
                        label: raw.to_string(),
                        known: format!("{}, {NO_FINDING}", all_findings.join(", ")),
                    });
                }
            }
            if labels.is_empty() {
                // Only findings outside the 8-label set: ChestX-ray8 never had this image.
                return Ok(None);
            }
            if labels.len() > 1 && labels.iter().any(|l| l == NO_FINDING) {
                return Err(DataError::row(
                    &entry,
                    row.line,
                    "`No Finding` combined with findings",
                ));
            }
            let mut rec = Record::new(name.clone(), ImageSource::File(file.clone()));
            rec.labels = labels;
            rec.patient_id = row.get(3).to_string();
            if rec.patient_id.is_empty() {
                return Err(DataError::row(&entry, row.line, "empty `Patient ID`"));
            }
            let view = row.get(6);
            rec.view = (!view.is_empty()).then(|| view.to_string());
            let numeric = |i: usize, what: &str| -> Result<String> {
                let v = row.get(i);
                v.parse::<f64>().map_err(|_| {
                    DataError::row(&entry, row.line, format!("`{what}` is not a number: `{v}`"))
                })?;
                Ok(v.to_string())
            };
            rec.meta
                .insert("follow_up".into(), numeric(2, "Follow-up #")?);
            rec.meta.insert("age".into(), numeric(4, "Patient Age")?);
            rec.meta.insert("sex".into(), row.get(5).to_string());
            rec.meta
                .insert("original_width".into(), numeric(7, "OriginalImage Width")?);
            rec.meta.insert(
                "original_height".into(),
                numeric(8, "OriginalImage Height")?,
            );
            rec.meta
                .insert("pixel_spacing_x".into(), numeric(9, "PixelSpacing x")?);
            rec.meta
                .insert("pixel_spacing_y".into(), numeric(10, "PixelSpacing y")?);
            let mask = masks_dir.join(&name);
            if mask.is_file() {
                rec.masks.push(MaskRef {
                    path: mask,
                    lesion: None,
                });
            }
            Ok(Some(rec))
        })();
        match opts.keep_or_skip(parsed, &mut skipped)? {
            Some(Some(rec)) => records.push(rec),
            Some(None) => skipped.push(format!(
                "{}, line {}: no finding in the {}-label set",
                entry.display(),
                row.line,
                findings.len()
            )),
            None => {}
        }
    }

    apply_split_lists(root, &mut records)?;
    attach_boxes(root, &mut records, opts, &mut skipped)?;

    let mut label_names: Vec<String> = findings.iter().map(|s| s.to_string()).collect();
    label_names.push(NO_FINDING.to_string());
    Ok(Dataset {
        format: Format::Nih,
        root: root.to_path_buf(),
        label_names,
        records,
        skipped,
    })
}

fn apply_split_lists(root: &Path, records: &mut [Record]) -> Result<()> {
    let mut split_of: HashMap<String, Split> = HashMap::new();
    for (file, split) in [
        ("train_val_list.txt", Split::Train),
        ("test_list.txt", Split::Test),
    ] {
        let p = root.join(file);
        if !p.is_file() {
            continue;
        }
        for (i, name) in read_list(&p)?.into_iter().enumerate() {
            if let Some(prev) = split_of.insert(name.clone(), split)
                && prev != split
            {
                return Err(DataError::row(
                    &p,
                    i as u64 + 1,
                    format!("image `{name}` is in both train_val_list.txt and test_list.txt"),
                ));
            }
        }
    }
    for r in records.iter_mut() {
        r.split = split_of.get(&r.id).copied();
    }
    Ok(())
}

fn attach_boxes(
    root: &Path,
    records: &mut [Record],
    opts: &ReadOptions,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let p = root.join("BBox_List_2017.csv");
    if !p.is_file() {
        return Ok(());
    }
    let index: HashMap<String, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), i))
        .collect();
    let mut csv = CsvFile::open(&p)?;
    if csv.header.first().map(String::as_str) != Some("Image Index")
        || csv.header.get(1).map(String::as_str) != Some("Finding Label")
    {
        return Err(DataError::MissingColumn {
            path: p.clone(),
            column: "Image Index,Finding Label".into(),
            found: csv.header.join(","),
        });
    }
    for row in csv.rows()? {
        let name = row.get(0);
        let found = index
            .get(name)
            .copied()
            .ok_or_else(|| DataError::row(&p, row.line, format!("box for unknown image `{name}`")));
        let Some(i) = opts.keep_or_skip(found, skipped)? else {
            continue;
        };
        let mut v = [0f32; 4];
        for (k, slot) in v.iter_mut().enumerate() {
            let s = row.get(2 + k);
            *slot = s.parse().map_err(|_| {
                DataError::row(
                    &p,
                    row.line,
                    format!("box coordinate `{s}` is not a number"),
                )
            })?;
        }
        let label = canonical_nih_finding(row.get(1)).to_string();
        if !NihLabelSet::ChestXray14
            .findings()
            .contains(&label.as_str())
        {
            return Err(DataError::UnknownLabel {
                path: p.clone(),
                line: row.line,
                label,
                known: NihLabelSet::ChestXray14.findings().join(", "),
            });
        }
        records[i].boxes.push(BBox {
            label,
            x: v[0],
            y: v[1],
            w: v[2],
            h: v[3],
        });
    }
    Ok(())
}
