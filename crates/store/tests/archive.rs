//! An archive's in-memory index stays in step with its store through ingests and
//! deletes: after every operation its answers equal those of an archive freshly loaded
//! from the store, and a naive scan of the stored vectors.

use medret_store::{Archive, CaseStore, ModelInfo, ModelKind, NewCase, SqliteStore};

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}

fn case(key: &str) -> NewCase {
    NewCase {
        key: key.into(),
        path: String::new(),
        labels: vec![],
        grade: None,
        patient_id: String::new(),
        study: serde_json::Value::Null,
    }
}

#[test]
fn index_follows_ingest_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store
        .add_model(&ModelInfo {
            name: "h".into(),
            kind: ModelKind::Codes { bits: 16 },
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
