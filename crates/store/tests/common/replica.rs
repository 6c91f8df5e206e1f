//! Two archives on one store, as two servers (replicas) hold them: each follows the
//! other's writes through the store's change log, without reloading every vector, and
//! after every round both answer exactly as an archive freshly loaded from the store.

use medret_store::{Archive, CaseStore, ModelInfo, ModelKind, NewCase};

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

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

/// `open` gives a new connection to one empty store; `cut_log` makes the store's change
/// log start after its current generation (as if older entries had been trimmed).
pub fn replicas_follow_each_other<S: CaseStore>(open: impl Fn() -> S, cut_log: impl Fn()) {
    let mut store = open();
    store
        .add_model(&ModelInfo {
            name: "h".into(),
            kind: ModelKind::codes(16),
            config_hash: String::new(),
        })
        .unwrap();
    let mut a = Archive::open(open(), "h").unwrap();
    let mut b = Archive::open(open(), "h").unwrap();
    let mut s = 11u64;
    let mut keys: Vec<String> = Vec::new();
    let mut next = 0;
    let all = |x: &Archive<S>| x.search(&[0, 0], 10_000).unwrap();
    for round in 0..40 {
        // An ingest on one replica beside a delete on the other.
        let batch: Vec<(NewCase, Vec<u8>)> = (0..2)
            .map(|_| {
                next += 1;
                keys.push(format!("k{next}"));
                let code = (lcg(&mut s) as u16).to_le_bytes().to_vec();
                (case(&format!("k{next}")), code)
            })
            .collect();
        a.ingest(&batch).unwrap();
        if round % 2 == 1 {
            let k = keys.remove(lcg(&mut s) as usize % keys.len());
            assert!(b.delete(&k).unwrap(), "round {round}: {k}");
        }
        a.sync().unwrap();
        b.sync().unwrap();
        let fresh = Archive::open(open(), "h").unwrap();
        assert_eq!(fresh.len(), keys.len(), "round {round}");
        assert_eq!(all(&a), all(&fresh), "round {round}: replica A");
        assert_eq!(all(&b), all(&fresh), "round {round}: replica B");
    }
    assert_eq!(
        (a.full_loads(), b.full_loads()),
        (1, 1),
        "the replicas reloaded every vector instead of reading the change log"
    );
    // A replica further behind than the log reaches reloads, and is right.
    a.ingest(&[(case("late"), vec![1, 2])]).unwrap();
    cut_log();
    assert!(b.sync().unwrap());
    assert_eq!(b.full_loads(), 2);
    let fresh = Archive::open(open(), "h").unwrap();
    assert_eq!(all(&b), all(&fresh));
}
