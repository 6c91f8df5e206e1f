//! What `medret data info` prints: counts and problems of a dataset.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rayon::prelude::*;
use serde::Serialize;

use crate::decode::load_image;
use crate::record::Dataset;

/// Counts for one split.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SplitCounts {
    pub images: usize,
    pub patients: usize,
}

/// Counts and problems of a dataset. Holds no patient identifiers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub format: String,
    pub root: String,
    pub images: usize,
    pub patients: usize,
    /// Images with neither labels nor grade (self-supervised pretraining only).
    pub unlabelled: usize,
    /// Images per label, in vocabulary order.
    pub labels: Vec<(String, usize)>,
    pub grades: BTreeMap<u8, usize>,
    pub splits: BTreeMap<String, SplitCounts>,
    pub no_split: usize,
    pub views: BTreeMap<String, usize>,
    pub eyes: BTreeMap<String, usize>,
    pub with_masks: usize,
    pub boxes: usize,
    /// Image sizes seen (`WxH grey|rgb`), only when images were decoded.
    pub image_sizes: BTreeMap<String, usize>,
    /// DICOM: files per frame count (`1`, `3`, ...).
    pub frames: BTreeMap<String, usize>,
    /// DICOM: files per transfer syntax, by name.
    pub transfer_syntaxes: BTreeMap<String, usize>,
    /// DICOM: files per photometric interpretation.
    pub photometric: BTreeMap<String, usize>,
    pub skipped: Vec<String>,
    pub problems: Vec<String>,
}

/// Summarises a dataset. With `decode`, every image is decoded in parallel: unreadable ones
/// become problems, and sizes are counted.
pub fn summarise(ds: &Dataset, decode: bool) -> Summary {
    summarise_with_progress(ds, decode, &|| {})
}

/// [`summarise`], calling `tick` once per image decoded (for progress bars).
pub fn summarise_with_progress(ds: &Dataset, decode: bool, tick: &(dyn Fn() + Sync)) -> Summary {
    let mut patients_by_split: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut splits: BTreeMap<String, SplitCounts> = BTreeMap::new();
    let mut grades = BTreeMap::new();
    let mut views = BTreeMap::new();
    let mut eyes = BTreeMap::new();
    let mut label_counts: HashMap<&str, usize> = HashMap::new();
    let mut no_split = 0;
    let mut problems = Vec::new();
    let mut seen_paths: HashMap<String, usize> = HashMap::new();
    let (mut frames, mut transfer_syntaxes, mut photometric) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for r in &ds.records {
        if let Some(n) = r.meta.get("frames") {
            *frames.entry(n.clone()).or_default() += 1;
        }
        if let Some(ts) = r.meta.get("transfer_syntax") {
            *transfer_syntaxes
                .entry(crate::dicom::syntax_name(ts))
                .or_default() += 1;
        }
        if let Some(p) = r.meta.get("photometric") {
            *photometric.entry(p.clone()).or_default() += 1;
        }
        for l in &r.labels {
            *label_counts.entry(l.as_str()).or_default() += 1;
        }
        if let Some(g) = r.grade {
            *grades.entry(g).or_default() += 1;
        }
        if let Some(v) = &r.view {
            *views.entry(v.clone()).or_default() += 1;
        }
        if let Some(e) = r.eye {
            *eyes.entry(e.name().to_string()).or_default() += 1;
        }
        match r.split {
            Some(s) => {
                splits.entry(s.name().into()).or_default().images += 1;
                patients_by_split
                    .entry(s.name().into())
                    .or_default()
                    .insert(&r.patient_id);
            }
            None => no_split += 1,
        }
        *seen_paths.entry(r.source.describe()).or_default() += 1;
    }
    for (name, set) in &patients_by_split {
        splits.get_mut(name).expect("split").patients = set.len();
    }
    // Patient-disjointness: a patient in two splits leaks between training and scoring.
    let names: Vec<&String> = patients_by_split.keys().collect();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            let shared = patients_by_split[names[i]]
                .intersection(&patients_by_split[names[j]])
                .count();
            if shared > 0 {
                problems.push(format!(
                    "{shared} patient(s) appear in both `{}` and `{}`: splits are not patient-disjoint",
                    names[i], names[j]
                ));
            }
        }
    }
    let mut dups: Vec<(&String, &usize)> = seen_paths.iter().filter(|(_, n)| **n > 1).collect();
    dups.sort();
    for (p, n) in dups {
        problems.push(format!("image `{p}` is listed {n} times"));
    }
    let mut image_sizes = BTreeMap::new();
    if decode {
        let results: Vec<Result<String, String>> = ds
            .records
            .par_iter()
            .map(|r| {
                let result = load_image(&r.source)
                    .map(|im| {
                        format!(
                            "{}x{} {}",
                            im.width,
                            im.height,
                            if im.channels == 1 { "grey" } else { "rgb" }
                        )
                    })
                    .map_err(|e| e.to_string());
                tick();
                result
            })
            .collect();
        for r in results {
            match r {
                Ok(s) => *image_sizes.entry(s).or_default() += 1,
                Err(e) => problems.push(e),
            }
        }
    }
    let patients: BTreeSet<&str> = ds.records.iter().map(|r| r.patient_id.as_str()).collect();
    let mut labels: Vec<(String, usize)> = ds
        .label_names
        .iter()
        .map(|n| {
            (
                n.clone(),
                label_counts.get(n.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    // Labels outside the vocabulary cannot happen with a fixed vocabulary; list any anyway.
    let mut extra: Vec<(String, usize)> = label_counts
        .iter()
        .filter(|(l, _)| !ds.label_names.iter().any(|n| n == *l))
        .map(|(l, n)| (l.to_string(), *n))
        .collect();
    extra.sort();
    labels.extend(extra);
    Summary {
        format: ds.format.name().to_string(),
        root: ds.root.display().to_string(),
        images: ds.records.len(),
        patients: patients.len(),
        unlabelled: ds.records.iter().filter(|r| r.is_unlabelled()).count(),
        labels,
        grades,
        splits,
        no_split,
        views,
        eyes,
        with_masks: ds.records.iter().filter(|r| !r.masks.is_empty()).count(),
        boxes: ds.records.iter().map(|r| r.boxes.len()).sum(),
        image_sizes,
        frames,
        transfer_syntaxes,
        photometric,
        skipped: ds.skipped.clone(),
        problems,
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({})", self.root, self.format)?;
        writeln!(
            f,
            "  images {}, patients {}, unlabelled {}, with masks {}, boxes {}",
            self.images, self.patients, self.unlabelled, self.with_masks, self.boxes
        )?;
        for (name, c) in &self.splits {
            writeln!(
                f,
                "  split {name:<6} {:>7} images {:>7} patients",
                c.images, c.patients
            )?;
        }
        if self.no_split > 0 {
            writeln!(f, "  no split     {:>7} images", self.no_split)?;
        }
        if !self.labels.is_empty() {
            writeln!(f, "  labels:")?;
            for (l, n) in &self.labels {
                writeln!(f, "    {l:<22} {n:>7}")?;
            }
        }
        if !self.grades.is_empty() {
            let g: Vec<String> = self
                .grades
                .iter()
                .map(|(g, n)| format!("{g}: {n}"))
                .collect();
            writeln!(f, "  grades: {}", g.join(", "))?;
        }
        for (title, map) in [
            ("views", &self.views),
            ("eyes", &self.eyes),
            ("image sizes", &self.image_sizes),
            ("frames per file", &self.frames),
            ("transfer syntaxes", &self.transfer_syntaxes),
            ("photometric interpretations", &self.photometric),
        ] {
            if !map.is_empty() {
                let v: Vec<String> = map.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                writeln!(f, "  {title}: {}", v.join(", "))?;
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "  skipped {}:", self.skipped.len())?;
            for s in self.skipped.iter().take(10) {
                writeln!(f, "    {s}")?;
            }
        }
        if self.problems.is_empty() {
            writeln!(f, "  problems: none")?;
        } else {
            writeln!(f, "  problems {}:", self.problems.len())?;
            for p in self.problems.iter().take(20) {
                writeln!(f, "    {p}")?;
            }
            if self.problems.len() > 20 {
                writeln!(
                    f,
                    "    ... and {} more (see --json)",
                    self.problems.len() - 20
                )?;
            }
        }
        Ok(())
    }
}
