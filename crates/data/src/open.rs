//! Format detection: one entry point that opens any supported dataset.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::record::{Dataset, Format, ReadOptions};

/// Guesses the format of a path from the files it holds.
pub fn detect_format(path: &Path) -> Result<Format> {
    if !path.exists() {
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    if path.is_file() {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        return match ext.as_deref() {
            Some("npz") => Ok(Format::Medmnist),
            Some("csv") => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if crate::nih::DATA_ENTRY_FILES.contains(&name) {
                    Ok(Format::Nih)
                } else if name == crate::eyepacs::TRAIN_LABELS
                    || name == crate::eyepacs::TEST_LABELS
                {
                    Ok(Format::Eyepacs)
                } else {
                    Ok(Format::Manifest)
                }
            }
            _ => Ok(Format::Dicom),
        };
    }
    if crate::nih::find_data_entry(path).is_some() {
        Ok(Format::Nih)
    } else if path.join(crate::eyepacs::TRAIN_LABELS).is_file()
        || path.join(crate::eyepacs::TEST_LABELS).is_file()
    {
        Ok(Format::Eyepacs)
    } else if path.join("manifest.csv").is_file() {
        Ok(Format::Manifest)
    } else {
        Err(DataError::format(
            path,
            "cannot tell the format: no Data_Entry_2017.csv, trainLabels.csv or manifest.csv here; \
             pass --format nih|eyepacs|medmnist|manifest|dicom",
        ))
    }
}

/// Opens a dataset, detecting the format unless given.
pub fn open_dataset(path: &Path, format: Option<Format>, opts: &ReadOptions) -> Result<Dataset> {
    let format = match format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    // A CSV file given for a folder format means its folder.
    let folder = |p: &Path| {
        if p.is_file() {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            p.to_path_buf()
        }
    };
    match format {
        Format::Nih => crate::nih::read_nih(&folder(path), opts),
        Format::Eyepacs => crate::eyepacs::read_eyepacs(&folder(path), opts),
        Format::Medmnist => crate::medmnist::read_medmnist(path, opts),
        Format::Manifest => crate::manifest::read_manifest(path, opts),
        Format::Dicom => crate::dicom::read_dicom(path, opts),
    }
}
