//! The SQLite store: round trips, all-or-nothing ingest, cascading deletes, and refusal of
//! files that are not medret stores.

use medret_store::sqlite::SCHEMA_VERSION;
use medret_store::{CaseStore, Metric, ModelInfo, ModelKind, SqliteStore};

mod common;
use common::{case, codes64};

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.add_model(&codes64()).unwrap();
        s.add_model(&codes64()).unwrap(); // same definition: no-op
        let ids = s
            .ingest(
                "hash64",
                &[(case("a"), vec![1; 8]), (case("b"), vec![2; 8])],
            )
            .unwrap();
        assert_eq!(ids.len(), 2);
    }
    let mut s = SqliteStore::open(&path).unwrap();
    let info = s.info().unwrap();
    assert_eq!(info.cases, 2);
    assert_eq!(info.schema_version, SCHEMA_VERSION);
    assert_eq!(info.models, vec![(codes64(), 2)]);
    assert!(info.bytes_on_disk > 0);
    let b = s.case_by_key("b").unwrap().unwrap();
    assert_eq!(b.labels, vec!["Mass".to_string(), "Effusion".to_string()]);
    assert_eq!(b.study["view"], "PA");
    assert_eq!(s.case(b.id).unwrap().unwrap(), b);
    let v = s.vectors("hash64").unwrap();
    assert_eq!(v.iter().find(|x| x.0 == b.id).unwrap().1, vec![2; 8]);
}

#[test]
fn ingest_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    s.add_model(&codes64()).unwrap();
    s.ingest("hash64", &[(case("a"), vec![0; 8])]).unwrap();
    // The third item duplicates `a` for this model: the first two must not remain.
    let err = s
        .ingest(
            "hash64",
            &[
                (case("x"), vec![0; 8]),
                (case("y"), vec![0; 8]),
                (case("a"), vec![0; 8]),
            ],
        )
        .unwrap_err();
    assert!(err.to_string().contains("already has a vector"), "{err}");
    assert_eq!(s.info().unwrap().cases, 1);
    assert!(s.case_by_key("x").unwrap().is_none());
    // A wrong vector size is refused before anything is written.
    let err = s.ingest("hash64", &[(case("z"), vec![0; 7])]).unwrap_err();
    assert!(err.to_string().contains("7 bytes"), "{err}");
    assert!(s.case_by_key("z").unwrap().is_none());
    // Unknown model.
    assert!(s.ingest("nope", &[(case("q"), vec![0; 8])]).is_err());
    // A conflicting model definition under the same name.
    let mut other = codes64();
    other.kind = ModelKind::codes(128);
    let err = s.add_model(&other).unwrap_err();
    assert!(err.to_string().contains("another definition"), "{err}");
}

#[test]
fn delete_removes_every_models_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    s.add_model(&codes64()).unwrap();
    let desc = ModelInfo {
        name: "desc".into(),
        kind: ModelKind::Descriptors {
            dim: 2,
            metric: Metric::Cosine,
        },
        config_hash: String::new(),
    };
    s.add_model(&desc).unwrap();
    s.ingest(
        "hash64",
        &[(case("a"), vec![1; 8]), (case("b"), vec![1; 8])],
    )
    .unwrap();
    // The same cases get descriptors: the cases are reused, not duplicated.
    s.ingest("desc", &[(case("a"), vec![0; 8])]).unwrap();
    assert_eq!(s.info().unwrap().cases, 2);
    assert!(s.delete("a").unwrap());
    assert!(!s.delete("a").unwrap());
    assert_eq!(s.vectors("hash64").unwrap().len(), 1);
    assert_eq!(s.vectors("desc").unwrap().len(), 0);
}

#[test]
fn foreign_and_corrupt_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a database, just some bytes that are long enough to fill a header........................................").unwrap();
    let before = std::fs::read(&junk).unwrap();
    let err = SqliteStore::open(&junk).err().expect("refused");
    assert!(err.to_string().contains("junk.db"), "{err}");
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        before,
        "the file was modified"
    );
    // Another application's SQLite database: a valid store whose application id is not
    // medret's.
    let other = dir.path().join("other.db");
    drop(SqliteStore::open(&other).unwrap());
    medret_store::sqlite::debug_pragma(&other, "application_id", 0x1234).unwrap();
    let err = SqliteStore::open(&other).err().expect("refused");
    assert!(err.to_string().contains("another application"), "{err}");
    // A store from a newer medret.
    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer).unwrap());
    set_user_version(&newer, SCHEMA_VERSION + 1);
    let err = SqliteStore::open(&newer).err().expect("refused");
    assert!(err.to_string().contains("newer medret"), "{err}");
}

fn set_user_version(path: &std::path::Path, v: u32) {
    medret_store::sqlite::debug_pragma(path, "user_version", v as i64).unwrap();
}

#[test]
fn a_failed_create_and_ingest_leaves_no_model_and_a_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let g0 = s.generation().unwrap();
    // The second item repeats the first's key: the vector insert fails halfway.
    let bad = [(case("a"), vec![1; 8]), (case("a"), vec![2; 8])];
    let e = s
        .create_and_ingest(&codes64(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already has a vector"), "{e}");
    assert!(
        s.model("hash64").is_err(),
        "the model outlived its failed ingest"
    );
    assert_eq!(s.info().unwrap().cases, 0);
    assert_eq!(
        s.generation().unwrap(),
        g0,
        "a rolled-back ingest raised the generation"
    );
    let good = [(case("a"), vec![1; 8]), (case("b"), vec![2; 8])];
    let ids = s.create_and_ingest(&codes64(), &good).unwrap();
    assert_eq!(s.generation().unwrap(), g0 + 1);
    assert_eq!(s.vector("hash64", ids[1]).unwrap(), Some(vec![2; 8]));
    assert_eq!(s.vector("hash64", 999).unwrap(), None);
    // Creating it again is refused, and changes nothing.
    let e = s
        .create_and_ingest(&codes64(), &good)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(s.info().unwrap().models[0].1, 2);
    assert!(s.delete("a").unwrap());
    assert!(!s.delete("a").unwrap());
    assert_eq!(s.generation().unwrap(), g0 + 2, "one delete, one no-op");
}

#[test]
fn non_finite_floats_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut s = SqliteStore::open(&path).unwrap();
    let floats = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    s.add_model(&ModelInfo {
        name: "d".into(),
        kind: ModelKind::Descriptors {
            dim: 3,
            metric: Metric::Cosine,
        },
        config_hash: String::new(),
    })
    .unwrap();
    let relaxed = ModelInfo {
        name: "r".into(),
        kind: ModelKind::Codes {
            bits: 8,
            relaxed: true,
        },
        config_hash: String::new(),
    };
    s.add_model(&relaxed).unwrap();
    let g = s.generation().unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = s
            .ingest(
                "d",
                &[
                    (case("ok"), floats(&[1.0, 0.0, 0.0])),
                    (case("bad"), floats(&[0.5, bad, 0.0])),
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bad`") && e.contains("not a finite"), "{e}");
        // The relaxed outputs of a code are floats too; its code byte is not.
        let mut v = vec![0xffu8];
        v.extend(floats(&[0.1, -0.2, 0.3, 0.4, 0.5, 0.6, bad, 0.8]));
        let e = s.ingest("r", &[(case("bad"), v)]).unwrap_err().to_string();
        assert!(e.contains("value 6"), "{e}");
    }
    assert_eq!(s.info().unwrap().cases, 0);
    assert_eq!(s.generation().unwrap(), g);
    let mut v = vec![0xffu8];
    v.extend(floats(&[0.0; 8]));
    s.ingest("r", &[(case("fine"), v)]).unwrap();
}
