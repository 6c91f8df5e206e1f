//! The one record type every reader produces.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// On-disk layouts medret reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// NIH ChestX-ray8/14 (`Data_Entry_2017.csv`, split lists, `images/`).
    Nih,
    /// EyePACS / Kaggle DR (`trainLabels.csv`, `images/` or `train/` JPEGs).
    Eyepacs,
    /// MedMNIST `.npz`.
    Medmnist,
    /// medret's generic `manifest.csv`.
    Manifest,
    /// A DICOM file or a folder of them.
    Dicom,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Nih => "nih",
            Format::Eyepacs => "eyepacs",
            Format::Medmnist => "medmnist",
            Format::Manifest => "manifest",
            Format::Dicom => "dicom",
        }
    }
}

/// Data split of a record. Splits we make ourselves are always patient-disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Which eye a fundus photograph shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eye {
    Left,
    Right,
}

impl Eye {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "left" | "l" | "os" => Some(Eye::Left),
            "right" | "r" | "od" => Some(Eye::Right),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Eye::Left => "left",
            Eye::Right => "right",
        }
    }
}

/// Where a record's pixels live.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A PNG or JPEG file.
    File(PathBuf),
    /// A DICOM file and the frame read from it (0-based; 0 for single-frame images).
    Dicom { path: PathBuf, frame: u32 },
    /// One image of an array already in memory (MedMNIST), `channels` 1 or 3, HWC order.
    Array {
        file: PathBuf,
        key: String,
        index: usize,
        height: usize,
        width: usize,
        channels: usize,
        pixels: Arc<[u8]>,
    },
}

impl ImageSource {
    /// The file to name in messages and reports.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageSource::File(p) | ImageSource::Dicom { path: p, .. } => p,
            ImageSource::Array { file, .. } => file,
        }
    }

    /// A short, stable, human-readable reference (`images/x.png`, `chestmnist.npz:train_images[3]`).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(p) | ImageSource::Dicom { path: p, .. } => p.display().to_string(),
            ImageSource::Array {
                file, key, index, ..
            } => format!("{}:{key}[{index}]", file.display()),
        }
    }
}

/// A lesion mask attached to a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskRef {
    pub path: PathBuf,
    /// The lesion named by the file (`MA`, `HE`, `EX`, `SE`, `OD` suffix), or `None` for a
    /// label map holding several lesion codes (the phantoms' masks).
    pub lesion: Option<String>,
}

/// A bounding box in image pixel coordinates (NIH `BBox_List_2017.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub label: String,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// One image with its labels and provenance, as every reader produces it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Stable identifier within the dataset (file name without folder, or array reference).
    pub id: String,
    pub source: ImageSource,
    /// Label names; empty means unlabelled (usable for self-supervised pretraining only).
    /// "No Finding" is a label of its own.
    pub labels: Vec<String>,
    /// DR grade 0-4 where the dataset is graded.
    pub grade: Option<u8>,
    /// Used as the split key only; never logged.
    pub patient_id: String,
    pub split: Option<Split>,
    pub view: Option<String>,
    pub eye: Option<Eye>,
    pub masks: Vec<MaskRef>,
    pub boxes: Vec<BBox>,
    /// Other columns, kept as case metadata (age, sex, follow-up, original size...).
    pub meta: BTreeMap<String, String>,
}

impl Record {
    pub fn new(id: impl Into<String>, source: ImageSource) -> Self {
        Record {
            id: id.into(),
            source,
            labels: Vec::new(),
            grade: None,
            patient_id: String::new(),
            split: None,
            view: None,
            eye: None,
            masks: Vec::new(),
            boxes: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    /// True when the record has neither labels nor a grade.
    pub fn is_unlabelled(&self) -> bool {
        self.labels.is_empty() && self.grade.is_none()
    }
}

/// A dataset: records plus the label vocabulary that turns label names into vectors.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub format: Format,
    /// The folder or file the dataset was read from.
    pub root: PathBuf,
    /// Label vocabulary, in the order of [`Dataset::label_vector`].
    pub label_names: Vec<String>,
    pub records: Vec<Record>,
    /// Rows that were skipped because the caller asked for `skip_bad`, with the reason.
    pub skipped: Vec<String>,
}

impl Dataset {
    /// Multi-hot vector over `label_names` (an unknown name cannot occur: readers reject it).
    pub fn label_vector(&self, record: &Record) -> Vec<f32> {
        self.label_names
            .iter()
            .map(|n| {
                if record.labels.iter().any(|l| l == n) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Records of one split.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.split == Some(split))
    }
}

/// Options common to every reader.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Skip bad rows and absent images with a warning instead of failing the read.
    pub skip_bad: bool,
    /// NIH: label set (8 or 14 findings). Default 14.
    pub nih_labels: Option<crate::labels::NihLabelSet>,
    /// Manifest: the allowed label names, in vector order; a label outside it is an error.
    /// Without it, the vocabulary is every label seen, sorted.
    pub label_vocabulary: Option<Vec<String>>,
    /// DICOM: the frame read from each file (0-based); a file with fewer frames is a bad
    /// row.
    pub frame: u32,
}

impl ReadOptions {
    /// The one place a reader decides what a bad row does: with `skip_bad` it is warned
    /// about, recorded in `skipped` and dropped (`Ok(None)`); otherwise it stops the read.
    pub(crate) fn keep_or_skip<T>(
        &self,
        row: crate::error::Result<T>,
        skipped: &mut Vec<String>,
    ) -> crate::error::Result<Option<T>> {
        match row {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.skip_bad => {
                tracing::warn!("skipping: {e}");
                skipped.push(e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Splits labelled training records into (train, validation) by patient, deterministically
/// under `seed`; test-split records go to neither.
pub fn split_train_val(records: &[Record], fraction: f64, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for r in records {
        if r.is_unlabelled() || r.split == Some(Split::Test) {
            continue;
        }
        let key = if r.patient_id.is_empty() {
            &r.id
        } else {
            &r.patient_id
        };
        let h = crate::phantom::draw::mix_seed(seed, fnv(key.as_bytes()), 0x7a1);
        if ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction {
            val.push(r.clone());
        } else {
            train.push(r.clone());
        }
    }
    (train, val)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
