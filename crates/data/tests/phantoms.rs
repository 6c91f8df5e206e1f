//! Phantoms written to disk and read back through the real readers: every field the
//! generator wrote must come back, labels must agree with the lesions drawn, and the output
//! must be deterministic from the seed, whatever the thread count.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use medret_data::decode::{load_image, load_mask};
use medret_data::labels::{NIH_FINDINGS, NO_FINDING, fundus_mask};
use medret_data::phantom::{CxrConfig, FundusConfig, grade_from_lesions, write_cxr, write_fundus};
use medret_data::{Eye, Format, ReadOptions, Split, open_dataset};

fn cxr(dir: &Path, n: usize, size: usize, seed: u64) -> Vec<medret_data::phantom::CxrCase> {
    let cfg = CxrConfig {
        n,
        size,
        seed,
        ..Default::default()
    };
    write_cxr(dir, &cfg, &|| {}).unwrap()
}

fn fundus(dir: &Path, n: usize, size: usize, seed: u64) -> Vec<medret_data::phantom::FundusCase> {
    let cfg = FundusConfig {
        n,
        size,
        seed,
        ..Default::default()
    };
    write_fundus(dir, &cfg, &|| {}).unwrap()
}

#[test]
fn cxr_round_trips_every_field_through_the_nih_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = cxr(tmp.path(), 80, 64, 7);
    assert_eq!(truth.len(), 80);
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Nih);
    assert_eq!(ds.records.len(), truth.len());
    let spacing = format!("{:.6}", 0.143 * 1024.0 / 64.0);
    for (t, r) in truth.iter().zip(&ds.records) {
        assert_eq!(r.id, t.name);
        assert_eq!(r.labels, t.labels, "{}", t.name);
        assert_eq!(r.patient_id, t.patient_id.to_string());
        assert_eq!(r.view.as_deref(), Some(t.view));
        assert_eq!(r.split, Some(t.split));
        assert_eq!(r.meta["follow_up"], t.follow_up.to_string());
        assert_eq!(r.meta["age"], t.age.to_string());
        assert_eq!(r.meta["sex"], t.sex.to_string());
        assert_eq!(r.meta["original_width"], "64");
        assert_eq!(r.meta["original_height"], "64");
        assert_eq!(r.meta["pixel_spacing_x"], spacing);
        assert_eq!(r.boxes, t.boxes, "{}", t.name);
        assert_eq!(r.masks.len(), 1);
        let img = load_image(&r.source).unwrap();
        assert_eq!((img.channels, img.height, img.width), (1, 64, 64));
    }
}

#[test]
fn cxr_masks_hold_exactly_the_findings_and_boxes_enclose_them() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = cxr(tmp.path(), 120, 96, 3);
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    let mut seen_box = 0;
    for (t, r) in truth.iter().zip(&ds.records) {
        let mask = load_mask(&r.masks[0].path).unwrap();
        let codes: BTreeSet<u8> = mask.pixels().map(|p| p.0[0]).filter(|&c| c > 0).collect();
        let expected: BTreeSet<u8> = t
            .labels
            .iter()
            .filter(|l| l.as_str() != NO_FINDING)
            .map(|l| NIH_FINDINGS.iter().position(|f| f == l).unwrap() as u8 + 1)
            .collect();
        // A later lesion can overwrite an earlier one, but never a code that is not a label.
        assert!(
            codes.is_subset(&expected),
            "{}: mask codes {codes:?} vs labels {expected:?}",
            t.name
        );
        if t.labels == [NO_FINDING] {
            assert!(codes.is_empty(), "{}: no-finding image has lesions", t.name);
        }
        for b in &t.boxes {
            seen_box += 1;
            let code = NIH_FINDINGS.iter().position(|f| *f == b.label).unwrap() as u8 + 1;
            // Every pixel of that lesion lies inside its box.
            for (x, y, p) in mask.enumerate_pixels() {
                if p.0[0] == code {
                    let (x, y) = (x as f32, y as f32);
                    assert!(
                        x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h,
                        "{}: {} pixel outside box",
                        t.name,
                        b.label
                    );
                }
            }
        }
    }
    assert!(seen_box > 10, "too few boxes to test: {seen_box}");
}

#[test]
fn cxr_splits_are_patient_disjoint_with_several_images_per_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = cxr(tmp.path(), 200, 48, 11);
    let mut split_of: HashMap<u32, Split> = HashMap::new();
    let mut per_patient: HashMap<u32, usize> = HashMap::new();
    for t in &truth {
        *per_patient.entry(t.patient_id).or_default() += 1;
        if let Some(s) = split_of.insert(t.patient_id, t.split) {
            assert_eq!(s, t.split, "patient {} in two splits", t.patient_id);
        }
    }
    assert!(per_patient.values().any(|&n| n >= 3));
    let test = truth.iter().filter(|t| t.split == Split::Test).count();
    assert!(test > 10 && test < 80, "test split {test} of 200");
    let no_finding = truth.iter().filter(|t| t.labels == [NO_FINDING]).count();
    assert!(
        no_finding > 20 && no_finding < 120,
        "no finding {no_finding}"
    );
}

#[test]
fn fundus_round_trips_and_grades_follow_the_lesions_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = fundus(tmp.path(), 60, 96, 5);
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Eyepacs);
    assert_eq!(ds.records.len(), 60);
    let by_name: HashMap<&str, &medret_data::Record> =
        ds.records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut grades = BTreeSet::new();
    for t in &truth {
        let r = by_name[t.name.as_str()];
        assert_eq!(r.grade, Some(t.grade));
        assert_eq!(r.labels, vec![format!("DR{}", t.grade)]);
        assert_eq!(r.eye, Some(t.eye));
        assert_eq!(r.patient_id, t.patient_id.to_string());
        assert_eq!(r.split, Some(t.split));
        assert_eq!(t.grade, grade_from_lesions(&t.lesions));
        grades.insert(t.grade);
        let img = load_image(&r.source).unwrap();
        assert_eq!((img.channels, img.height, img.width), (3, 96, 96));
        // Optic disc on the nasal side: the brightest 9x9 patch (green) is right of centre
        // for a right eye, left for a left eye.
        let mut best = (f32::MIN, 0usize);
        for y in 4..92 {
            for x in 4..92 {
                let mut s = 0.0;
                for dy in 0..9 {
                    for dx in 0..9 {
                        s += img.get(1, y + dy - 4, x + dx - 4);
                    }
                }
                if s > best.0 {
                    best = (s, x);
                }
            }
        }
        match t.eye {
            Eye::Right => assert!(
                best.1 > 55,
                "{}: disc not on the right (x = {})",
                t.name,
                best.1
            ),
            Eye::Left => assert!(
                best.1 < 41,
                "{}: disc not on the left (x = {})",
                t.name,
                best.1
            ),
        }
        // Mask codes match the lesion counts.
        let mask = load_mask(&r.masks[0].path).unwrap();
        let has = |c: u8| mask.pixels().any(|p| p.0[0] == c);
        assert_eq!(
            has(fundus_mask::NEOVASCULARISATION),
            t.lesions.neovascularisation > 0,
            "{}",
            t.name
        );
        assert_eq!(
            has(fundus_mask::HARD_EXUDATE),
            t.lesions.hard_exudates > 0,
            "{}",
            t.name
        );
        assert_eq!(
            has(fundus_mask::COTTON_WOOL),
            t.lesions.cotton_wool > 0,
            "{}",
            t.name
        );
        if t.grade == 0 {
            assert!(mask.pixels().all(|p| p.0[0] == 0));
        }
    }
    assert_eq!(
        grades.len(),
        5,
        "every grade should occur in 60 images: {grades:?}"
    );
}

#[test]
fn microaneurysms_are_small_relative_to_the_retina() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = fundus(tmp.path(), 40, 256, 9);
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    let by_name: HashMap<&str, &medret_data::Record> =
        ds.records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut checked = 0;
    for t in &truth {
        let r = by_name[t.name.as_str()];
        if t.lesions.microaneurysms == 0 {
            continue;
        }
        let mask = load_mask(&r.masks[0].path).unwrap();
        let ma = mask
            .pixels()
            .filter(|p| p.0[0] == fundus_mask::MICROANEURYSM)
            .count();
        // Each MA is a few pixels; all of them together well under 1% of the image.
        assert!(ma > 0 && ma < 256 * 256 / 100, "{}: {ma} MA pixels", t.name);
        checked += 1;
    }
    assert!(checked > 5, "only {checked} images with microaneurysms");
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn phantoms_are_deterministic_from_the_seed_and_independent_of_threads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    one.install(|| {
        cxr(&a.path().join("c"), 30, 48, 42);
        fundus(&a.path().join("f"), 30, 48, 42);
    });
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    two.install(|| {
        cxr(&b.path().join("c"), 30, 48, 42);
        fundus(&b.path().join("f"), 30, 48, 42);
    });
    cxr(&c.path().join("c"), 30, 48, 43);
    let (da, db) = (dir_bytes(a.path()), dir_bytes(b.path()));
    assert_eq!(da.len(), db.len());
    assert!(da == db, "same seed, different bytes");
    let dc = dir_bytes(&c.path().join("c"));
    let da_c = dir_bytes(&a.path().join("c"));
    let same_images = da_c
        .iter()
        .zip(&dc)
        .filter(|(x, y)| x.0.starts_with("images") && x == y)
        .count();
    assert_eq!(same_images, 0, "another seed must give other images");
}

#[test]
fn a_tiny_size_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CxrConfig {
        n: 2,
        size: 8,
        ..Default::default()
    };
    let e = write_cxr(tmp.path(), &cfg, &|| {}).unwrap_err().to_string();
    assert!(e.contains("size 8"), "{e}");
}
