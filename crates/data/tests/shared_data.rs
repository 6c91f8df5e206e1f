//! The real image subsets under `../shared/data` (see its PROVENANCE.md), read in place.
//! Skipped, with a message, when the folder is not there.

use std::path::PathBuf;

use medret_data::{Format, ReadOptions, Split, open_dataset, summarise};

fn shared(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name);
    if p.join("manifest.csv").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} not present", p.display());
        None
    }
}

#[test]
fn chest_xray_set() {
    let Some(p) = shared("chest_xray") else {
        return;
    };
    let ds = open_dataset(&p, None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Manifest);
    let s = summarise(&ds, true);
    assert_eq!(s.images, 494);
    assert_eq!(s.splits["train"].images, 402);
    assert_eq!(s.splits["test"].images, 92);
    assert_eq!(
        s.image_sizes.get("256x256 grey"),
        Some(&494),
        "{:?}",
        s.image_sizes
    );
    assert!(s.labels.iter().any(|(l, n)| l == "COVID-19" && *n > 300));
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert!(
        ds.records
            .iter()
            .all(|r| r.meta.contains_key("coarse_class"))
    );
}

#[test]
fn nih64_set() {
    let Some(p) = shared("chest_xray_nih64") else {
        return;
    };
    let ds = open_dataset(&p, None, &ReadOptions::default()).unwrap();
    let s = summarise(&ds, true);
    assert_eq!(
        (s.images, s.splits["train"].images, s.splits["test"].images),
        (656, 538, 118)
    );
    assert_eq!(
        s.image_sizes.get("64x64 grey"),
        Some(&656),
        "{:?}",
        s.image_sizes
    );
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

#[test]
fn idrid_fundus_set() {
    let Some(p) = shared("fundus_idrid") else {
        return;
    };
    let ds = open_dataset(&p, None, &ReadOptions::default()).unwrap();
    let s = summarise(&ds, true);
    assert_eq!(s.images, 486);
    assert_eq!(s.unlabelled, 10, "the ungraded segmentation images");
    assert_eq!(s.grades.values().sum::<usize>(), 476);
    assert_eq!(
        s.image_sizes.get("256x256 rgb"),
        Some(&486),
        "{:?}",
        s.image_sizes
    );
    assert!(s.with_masks >= 69);
    // Graded images carry the matching DR label.
    for r in &ds.records {
        if let Some(g) = r.grade {
            assert_eq!(r.labels, vec![format!("DR{g}")]);
        }
    }
    assert!(ds.records.iter().any(|r| r.split == Some(Split::Test)));
}
