//! Writes through the server's path (`ingest_images`) and bounded answers: a committed
//! ingest never loses its image files, even when the index cannot follow; a crash's
//! leftovers are finished or undone by the sweep; a radius search answers in pages.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;

use medret_search::ingest::{NewImage, PARTIAL_GRACE, ingest_images, sweep_uploads};
use medret_search::query::{MAX_HITS, QueryOptions, search_vector_page};
use medret_store::{
    Archive, Case, CaseStore, ModelInfo, ModelKind, NewCase, SqliteStore, StoreError, StoreInfo,
};

/// A SQLite store whose generation counter can be made to fail: after a commit, that is
/// the archive's next read, so the index cannot follow a write the store holds.
struct Flaky {
    inner: SqliteStore,
    fail_generation: Rc<Cell<bool>>,
    /// A case whose row reads as gone (deleted by another writer after the index search).
    vanished: Rc<Cell<Option<u64>>>,
}

impl CaseStore for Flaky {
    fn add_model(&mut self, model: &ModelInfo) -> medret_store::Result<()> {
        self.inner.add_model(model)
    }
    fn model(&mut self, name: &str) -> medret_store::Result<ModelInfo> {
        self.inner.model(name)
    }
    fn ingest(
        &mut self,
        model: &str,
        items: &[(NewCase, Vec<u8>)],
    ) -> medret_store::Result<Vec<u64>> {
        let ids = self.inner.ingest(model, items)?;
        // Committed: from now on the generation cannot be read.
        self.fail_generation.set(true);
        Ok(ids)
    }
    fn create_and_ingest(
        &mut self,
        model: &ModelInfo,
        items: &[(NewCase, Vec<u8>)],
    ) -> medret_store::Result<Vec<u64>> {
        self.inner.create_and_ingest(model, items)
    }
    fn delete(&mut self, key: &str) -> medret_store::Result<bool> {
        self.inner.delete(key)
    }
    fn case(&mut self, id: u64) -> medret_store::Result<Option<Case>> {
        if self.vanished.get() == Some(id) {
            return Ok(None);
        }
        self.inner.case(id)
    }
    fn case_by_key(&mut self, key: &str) -> medret_store::Result<Option<Case>> {
        self.inner.case_by_key(key)
    }
    fn vectors(&mut self, model: &str) -> medret_store::Result<Vec<(u64, Vec<u8>)>> {
        self.inner.vectors(model)
    }
    fn vector(&mut self, model: &str, id: u64) -> medret_store::Result<Option<Vec<u8>>> {
        self.inner.vector(model, id)
    }
    fn generation(&mut self) -> medret_store::Result<u64> {
        if self.fail_generation.get() {
            return Err(StoreError::InvalidCase("connection lost (injected)".into()));
        }
        self.inner.generation()
    }
    fn info(&mut self) -> medret_store::Result<StoreInfo> {
        self.inner.info()
    }
    fn paths_with_prefix(&mut self, prefix: &str) -> medret_store::Result<BTreeSet<String>> {
        self.inner.paths_with_prefix(prefix)
    }
    fn changes(
        &mut self,
        model: &str,
        after: u64,
        up_to: u64,
    ) -> medret_store::Result<Option<Vec<medret_store::Change>>> {
        self.inner.changes(model, after, up_to)
    }
    fn case_paths(&mut self) -> medret_store::Result<Vec<(u64, String)>> {
        self.inner.case_paths()
    }
    fn setting(&mut self, name: &str) -> medret_store::Result<Option<String>> {
        self.inner.setting(name)
    }
}

fn template() -> NewCase {
    NewCase {
        key: String::new(),
        path: String::new(),
        labels: vec!["Effusion".into()],
        grade: None,
        patient_id: String::new(),
        study: serde_json::Value::Null,
    }
}

fn code_store(path: &Path, bits: usize) -> SqliteStore {
    let mut store = SqliteStore::open(path).unwrap();
    store
        .add_model(&ModelInfo {
            name: "h".into(),
            kind: ModelKind::codes(bits),
            config_hash: String::new(),
        })
        .unwrap();
    store
}

fn image(key: &str, byte: u8) -> NewImage {
    NewImage {
        key: key.into(),
        extension: "png",
        bytes: vec![byte; 100],
        vector: vec![byte],
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_committed_ingest_keeps_its_images_when_the_index_cannot_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let up = tmp.path().join("up");
    let fail = Rc::new(Cell::new(false));
    let store = Flaky {
        inner: code_store(&db, 8),
        fail_generation: fail.clone(),
        vanished: Default::default(),
    };
    let mut archive = Archive::open(store, "h").unwrap();
    let ids = ingest_images(
        &mut archive,
        &[image("a", 1), image("b", 2)],
        &template(),
        &up,
    )
    .expect("the store committed: the ingest succeeded");
    assert_eq!(ids.len(), 2);
    // The rows and the files are both there, under their final names.
    let mut check = SqliteStore::open(&db).unwrap();
    for key in ["a", "b"] {
        let case = check.case_by_key(key).unwrap().expect("committed row");
        let name = medret_search::ingest::uploaded_file_name(&case.path)
            .unwrap_or_else(|| panic!("{key}: stored as {}", case.path));
        assert_eq!(std::fs::read(up.join(name)).unwrap().len(), 100, "{key}");
    }
    assert_eq!(files(&up).len(), 2, "{:?}", files(&up));
    // The index could not follow: it is reloaded on the next use and then holds both.
    assert!(archive.is_stale());
    fail.set(false);
    assert!(archive.sync().unwrap());
    assert_eq!(archive.len(), 2);
    assert!(!archive.is_stale());
}

#[test]
fn a_refused_ingest_leaves_no_file_and_the_sweep_finishes_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let up = tmp.path().join("up");
    let mut archive = Archive::open(code_store(&db, 8), "h").unwrap();
    ingest_images(&mut archive, &[image("a", 1)], &template(), &up).unwrap();
    let committed = files(&up);
    // A vector of the wrong size: the store refuses the batch, and nothing stays.
    let mut bad = image("c", 3);
    bad.vector = vec![1, 2];
    let e = ingest_images(&mut archive, &[image("b", 2), bad], &template(), &up).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
    assert_eq!(files(&up), committed);
    assert!(archive.store().case_by_key("b").unwrap().is_none());

    // What a kill leaves: a partial file whose ingest committed (its case refers to it),
    // and one whose ingest never did. Both old enough to be swept; a young one stays.
    let store = archive.store();
    let case_a = store.case_by_key("a").unwrap().unwrap();
    let name_a = medret_search::ingest::uploaded_file_name(&case_a.path)
        .unwrap()
        .to_string();
    std::fs::rename(
        up.join(&name_a),
        up.join(format!(".{name_a}.x1y2z3.partial")),
    )
    .unwrap();
    std::fs::write(up.join(".lost-0123abcd.png.q9w8e7.partial"), b"x").unwrap();
    let old = std::time::SystemTime::now() - PARTIAL_GRACE * 2;
    for f in files(&up) {
        std::fs::File::options()
            .write(true)
            .open(up.join(&f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    std::fs::write(up.join(".young-0123abcd.png.a1b2c3.partial"), b"x").unwrap();
    let sweep = sweep_uploads(store, &up).unwrap();
    assert_eq!((sweep.completed, sweep.removed), (1, 1), "{sweep:?}");
    assert_eq!(
        files(&up),
        vec![".young-0123abcd.png.a1b2c3.partial".to_string(), name_a]
    );
}

#[test]
fn a_radius_search_answers_in_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let mut archive = Archive::open(code_store(&db, 8), "h").unwrap();
    let n = MAX_HITS + 100;
    let items: Vec<(NewCase, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                NewCase {
                    key: format!("c{i:04}"),
                    ..template()
                },
                vec![(i % 7) as u8],
            )
        })
        .collect();
    archive.ingest(&items).unwrap();
    let mut opts = QueryOptions {
        radius: Some(8),
        ..QueryOptions::default()
    };
    let first = search_vector_page(&mut archive, &[0], &opts, &[]).unwrap();
    assert_eq!(first.hits.len(), MAX_HITS);
    assert!(first.truncated && first.exact);
    assert_eq!(first.next_offset, Some(MAX_HITS));
    opts.offset = MAX_HITS;
    let second = search_vector_page(&mut archive, &[0], &opts, &[]).unwrap();
    assert_eq!(second.hits.len(), 100);
    assert!(!second.truncated && second.next_offset.is_none());
    assert_eq!(second.hits[0].rank, MAX_HITS + 1);
    // The two pages are the whole radius, each case once, in rank order.
    let all: BTreeSet<String> = first
        .hits
        .iter()
        .chain(&second.hits)
        .map(|h| h.case_id.clone())
        .collect();
    assert_eq!(all.len(), n);
    let d: Vec<f64> = first
        .hits
        .iter()
        .chain(&second.hits)
        .map(|h| h.distance)
        .collect();
    assert!(d.windows(2).all(|w| w[0] <= w[1]));
    // A filtered search looks at a bounded number of candidates and says when it ran
    // out: no case has this label.
    let filtered = QueryOptions {
        k: 5,
        filters: medret_search::query::Filters {
            label: Some("Nodule".into()),
            ..Default::default()
        },
        ..QueryOptions::default()
    };
    let page = search_vector_page(&mut archive, &[0], &filtered, &[]).unwrap();
    assert!(page.hits.is_empty() && !page.truncated, "600 < the bound");
}

#[test]
fn index_check_finds_missing_and_orphan_files_and_repairs_only_orphans() {
    use medret_search::check::{Files, check};
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let up = tmp.path().join("up");
    let mut archive = Archive::open(code_store(&db, 8), "h").unwrap();
    ingest_images(
        &mut archive,
        &[image("a", 1), image("b", 2)],
        &template(),
        &up,
    )
    .unwrap();
    let files = Files {
        upload_dir: Some(up.clone()),
        image_root: None,
    };
    let open = || Ok(SqliteStore::open(&db).unwrap());
    let mut store = SqliteStore::open(&db).unwrap();
    let r = check(&mut store, open, &files, false).unwrap();
    assert!(r.consistent, "{:?}", r.lines());
    assert_eq!(r.models[0].index_cases, Some(2));

    // An orphan, and a case whose file is gone.
    std::fs::write(up.join("stray.png"), b"x").unwrap();
    let b = store.case_by_key("b").unwrap().unwrap();
    let b_file = up.join(medret_search::ingest::uploaded_file_name(&b.path).unwrap());
    std::fs::remove_file(&b_file).unwrap();
    let r = check(&mut store, open, &files, false).unwrap();
    assert!(!r.consistent);
    assert_eq!(r.orphan_files.first, vec!["stray.png".to_string()]);
    assert_eq!(r.missing_files.first, vec!["b".to_string()]);
    // Repair removes the orphan, never a referenced file; the missing one stays missing.
    let r = check(&mut store, open, &files, true).unwrap();
    assert_eq!(r.removed.first, vec!["stray.png".to_string()]);
    assert!(!up.join("stray.png").exists());
    assert!(!r.consistent && r.missing_files.count == 1);
    let a = store.case_by_key("a").unwrap().unwrap();
    assert!(
        up.join(medret_search::ingest::uploaded_file_name(&a.path).unwrap())
            .exists()
    );
    assert!(store.delete("b").unwrap());
    assert!(check(&mut store, open, &files, false).unwrap().consistent);

    // A vector the index cannot take makes its model inconsistent.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE vectors SET data = x'0102' WHERE model = 'h'", [])
        .unwrap();
    let r = check(&mut store, open, &files, false).unwrap();
    assert!(
        !r.consistent && r.models[0].error.is_some(),
        "{:?}",
        r.lines()
    );
}

#[test]
fn a_case_deleted_between_the_index_search_and_its_row_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let vanished = Rc::new(Cell::new(None));
    let fail = Rc::new(Cell::new(false));
    let store = Flaky {
        inner: code_store(&tmp.path().join("s.db"), 8),
        fail_generation: fail.clone(),
        vanished: vanished.clone(),
    };
    let mut archive = Archive::open(store, "h").unwrap();
    let items: Vec<(NewCase, Vec<u8>)> = (0..5u8)
        .map(|i| {
            (
                NewCase {
                    key: format!("k{i}"),
                    ..template()
                },
                vec![i],
            )
        })
        .collect();
    let ids = archive.ingest(&items).unwrap();
    fail.set(false);
    vanished.set(Some(ids[0]));
    let opts = QueryOptions {
        k: 3,
        ..QueryOptions::default()
    };
    let page = search_vector_page(&mut archive, &[0], &opts, &[]).expect("not an error");
    let keys: Vec<&str> = page.hits.iter().map(|h| h.case_id.as_str()).collect();
    assert_eq!(
        keys,
        ["k1", "k2", "k4"],
        "k0 is gone; the next nearest fill k"
    );
    assert_eq!(page.hits[0].rank, 1);
}
