//! An archive's in-memory index stays in step with its store through ingests and
//! deletes: after every operation its answers equal those of an archive freshly loaded
//! from the store, and a naive scan of the stored vectors.

use medret_store::{Archive, CaseStore, ModelInfo, ModelKind, NewCase, SqliteStore};

mod common;
use common::{case, lcg};

#[test]
fn index_follows_ingest_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store
        .add_model(&ModelInfo {
            name: "h".into(),
            kind: ModelKind::codes(16),
            config_hash: String::new(),
        })
        .unwrap();
    let mut archive = Archive::open(store, "h").unwrap();
    let mut s = 3u64;
    let mut next_key = 0;
    let mut keys: Vec<String> = Vec::new();
    for round in 0..30 {
        if round % 3 == 2 && !keys.is_empty() {
            let k = keys.remove((lcg(&mut s) as usize) % keys.len());
            assert!(archive.delete(&k).unwrap());
        } else {
            let batch: Vec<(NewCase, Vec<u8>)> = (0..5)
                .map(|_| {
                    next_key += 1;
                    keys.push(format!("c{next_key}"));
                    // Few distinct codes: many ties.
                    let v = (lcg(&mut s) >> 60) as u16 * 0x0101;
                    (case(&format!("c{next_key}")), v.to_le_bytes().to_vec())
                })
                .collect();
            archive.ingest(&batch).unwrap();
        }
        assert_eq!(archive.len(), keys.len());
        let q = ((lcg(&mut s) >> 48) as u16).to_le_bytes();
        let got = archive.search(&q, 7).unwrap();
        let fresh = Archive::open(SqliteStore::open(&path).unwrap(), "h").unwrap();
        assert_eq!(got, fresh.search(&q, 7).unwrap(), "round {round}");
        // Naive: every stored vector's distance, ranked by (distance, id).
        let mut naive: Vec<(u32, u64)> = archive
            .store()
            .vectors("h")
            .unwrap()
            .into_iter()
            .map(|(id, v)| {
                let c = u16::from_le_bytes([v[0], v[1]]);
                ((c ^ u16::from_le_bytes(q)).count_ones(), id)
            })
            .collect();
        naive.sort();
        let want: Vec<(u32, u64)> = naive.into_iter().take(7).collect();
        let have: Vec<(u32, u64)> = got.iter().map(|f| (f.distance as u32, f.id)).collect();
        assert_eq!(have, want, "round {round}");
    }
    // A failed ingest (duplicate) changes neither the store nor the index.
    let before = archive.len();
    let dup = vec![(case(&keys[0]), vec![0, 0])];
    assert!(archive.ingest(&dup).is_err());
    assert_eq!(archive.len(), before);
}

/// A descriptor archive served by the HNSW graph follows ingests and deletes like the
/// exact one: on an archive this small the graph's top hits equal the exact scan's,
/// deleted cases never come back, and `auto` keeps the exact scan at this size. (This
/// test caught usearch stranding nodes when the graph was built on many threads: it
/// failed on a CI machine with more cores; see `SEQUENTIAL_SEED` in
/// medret-index's hnsw.rs.)
#[test]
fn graph_archive_follows_ingest_and_delete() {
    use medret_store::Metric;
    use medret_store::archive::FloatSearch;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store
        .add_model(&ModelInfo {
            name: "d".into(),
            kind: ModelKind::Descriptors {
                dim: 8,
                metric: Metric::Cosine,
            },
            config_hash: String::new(),
        })
        .unwrap();
    let mut s = 9u64;
    let vector = |s: &mut u64| -> Vec<f32> {
        (0..8)
            .map(|_| (lcg(s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    };
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let first: Vec<(NewCase, Vec<u8>)> = (0..200)
        .map(|i| (case(&format!("a{i}")), bytes(&vector(&mut s))))
        .collect();
    store.ingest("d", &first).unwrap();
    let graph = FloatSearch::Graph(Default::default());
    let mut archive = Archive::open_with(store, "d", graph).unwrap();
    assert!(archive.is_approximate());
    let more: Vec<(NewCase, Vec<u8>)> = (0..50)
        .map(|i| (case(&format!("b{i}")), bytes(&vector(&mut s))))
        .collect();
    archive.ingest(&more).unwrap();
    assert!(archive.delete("a3").unwrap());
    assert!(archive.delete("b7").unwrap());
    assert_eq!(archive.len(), 248);
    let exact =
        Archive::open_with(SqliteStore::open(&path).unwrap(), "d", FloatSearch::Exact).unwrap();
    let auto = Archive::open(SqliteStore::open(&path).unwrap(), "d").unwrap();
    assert!(!exact.is_approximate() && !auto.is_approximate());
    let mut agree = 0;
    for _ in 0..20 {
        let q = bytes(&vector(&mut s));
        let g = archive.search(&q, 5).unwrap();
        let e = exact.search(&q, 5).unwrap();
        assert_eq!(g.len(), 5);
        agree += usize::from(g.iter().map(|f| f.id).eq(e.iter().map(|f| f.id)));
        for f in &g {
            // Every hit is a live case at the distance the exact scan gives it.
            let d = exact.search(&q, 248).unwrap();
            let x = d
                .iter()
                .find(|x| x.id == f.id)
                .expect("a deleted case came back");
            assert!((x.distance - f.distance).abs() < 1e-5);
        }
    }
    assert!(
        agree >= 18,
        "graph and exact top-5 agree on {agree}/20 queries"
    );
    assert!(archive.radius(&bytes(&[0.0; 8]), 1).is_err());
}

/// Two archives on one store file (two servers, in effect): each sees the other's
/// ingests and deletes through the generation counter, and its own writes do not force a
/// reload.
#[test]
fn archives_on_one_store_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let model = ModelInfo {
        name: "m".into(),
        kind: ModelKind::codes(16),
        config_hash: String::new(),
    };
    let mut s = SqliteStore::open(&path).unwrap();
    s.create_and_ingest(&model, &[(case("a"), vec![0, 0])])
        .unwrap();
    let mut one = Archive::open(SqliteStore::open(&path).unwrap(), "m").unwrap();
    let mut two = Archive::open(SqliteStore::open(&path).unwrap(), "m").unwrap();
    one.ingest(&[(case("b"), vec![0xff, 0])]).unwrap();
    assert!(!one.sync().unwrap(), "its own ingest made it reload");
    assert_eq!(two.len(), 1);
    assert!(two.sync().unwrap());
    assert_eq!(two.len(), 2);
    let hits = two.search(&[0xff, 0], 1).unwrap();
    assert_eq!(two.store().case(hits[0].id).unwrap().unwrap().key, "b");
    assert!(two.delete("a").unwrap());
    assert!(one.sync().unwrap());
    assert_eq!(one.len(), 1);
    assert_eq!(one.generation(), two.generation());
}

/// A stored vector of an 8-bit code model with relaxed outputs: the code, then 8 floats.
fn relaxed_vector(code: u8, outputs: [f32; 8]) -> Vec<u8> {
    let mut v = vec![code];
    v.extend(outputs.iter().flat_map(|x| x.to_le_bytes()));
    v
}

#[test]
fn codes_with_relaxed_outputs_rank_ties_by_them_not_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let kind = ModelKind::Codes {
        bits: 8,
        relaxed: true,
    };
    store
        .add_model(&ModelInfo {
            name: "h".into(),
            kind,
            config_hash: String::new(),
        })
        .unwrap();
    assert_eq!(
        store.model("h").unwrap().kind,
        kind,
        "the kind survives SQLite"
    );
    // a, b, c share code 0b1111_0000; d is one bit away. Relaxed distance to the query
    // outputs q: c closest, then b, then a, so ids (a < b < c) would give the opposite.
    let q = [-0.9, -0.9, -0.9, -0.9, 0.9, 0.9, 0.9, 0.9];
    let near = |e: f32| [-e, -e, -e, -e, e, e, e, e];
    let mut archive = Archive::open(store, "h").unwrap();
    let ids = archive
        .ingest(&[
            (case("a"), relaxed_vector(0b1111_0000, near(0.1))),
            (case("b"), relaxed_vector(0b1111_0000, near(0.5))),
            (case("c"), relaxed_vector(0b1111_0000, near(0.85))),
            (case("d"), relaxed_vector(0b1111_0001, near(0.9))),
        ])
        .unwrap();
    let order =
        |found: Vec<medret_store::Found>| -> Vec<u64> { found.iter().map(|f| f.id).collect() };
    let query = relaxed_vector(0b1111_0000, q);
    let want = vec![ids[2], ids[1], ids[0], ids[3]];
    assert_eq!(order(archive.search(&query, 4).unwrap()), want);
    // The cut at k sees the whole tie: the best of the three, not the lowest id.
    assert_eq!(order(archive.search(&query, 1).unwrap()), vec![ids[2]]);
    assert_eq!(
        order(archive.radius(&query, 0).unwrap()),
        want[..3].to_vec()
    );
    // Reloaded from the store: the same order.
    let fresh = Archive::open(SqliteStore::open(&path).unwrap(), "h").unwrap();
    assert_eq!(order(fresh.search(&query, 4).unwrap()), want);
    // The code alone (a hex query) ranks ties by the distance to its signs (+-1): c's
    // outputs are the nearest to that corner.
    assert_eq!(
        order(archive.search(&[0b1111_0000], 1).unwrap()),
        vec![ids[2]]
    );
    // A query of any other length is refused, naming both accepted sizes.
    let err = archive.search(&[0; 5], 1).unwrap_err().to_string();
    assert!(err.contains("33") && err.contains("(1)"), "{err}");
    // A deleted case leaves the second stage too.
    assert!(archive.delete("c").unwrap());
    assert_eq!(
        order(archive.search(&query, 4).unwrap()),
        vec![ids[1], ids[0], ids[3]]
    );
}

#[path = "common/replica.rs"]
mod replica;

#[test]
fn replicas_follow_each_other_through_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    replica::replicas_follow_each_other(
        || SqliteStore::open(&path).unwrap(),
        || {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute("UPDATE change_floor SET n = (SELECT n FROM generation)", [])
                .unwrap();
        },
    );
}
