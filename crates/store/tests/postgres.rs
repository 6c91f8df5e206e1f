//! The PostgreSQL store against a real server: the same guarantees as the SQLite store.
//! `.ci/run` installs and starts Debian's postgresql on loopback and sets `MEDRET_PG_URL`;
//! without it these tests say so and pass vacuously.

use medret_store::postgres::SCHEMA_VERSION;
use medret_store::{CaseStore, Metric, ModelInfo, ModelKind, PgStore};

mod common;
use common::{case, codes64};

fn url() -> Option<String> {
    match std::env::var("MEDRET_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("MEDRET_PG_URL is not set: skipping the PostgreSQL tests (.ci/run sets it)");
            None
        }
    }
}

/// A fresh schema per test, so tests run in parallel on one database.
fn fresh(url: &str, name: &str) -> PgStore {
    let schema = format!("t_{name}_{}", std::process::id());
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    PgStore::open(url, &schema).unwrap()
}

#[test]
fn round_trip_all_or_nothing_and_cascade() {
    let Some(url) = url() else { return };
    let mut s = fresh(&url, "rt");
    s.add_model(&codes64()).unwrap();
    s.add_model(&codes64()).unwrap();
    let ids = s
        .ingest(
            "hash64",
            &[(case("a"), vec![1; 8]), (case("b"), vec![2; 8])],
        )
        .unwrap();
    assert_eq!(ids.len(), 2);
    let b = s.case_by_key("b").unwrap().unwrap();
    assert_eq!(b.grade, Some(2));
    assert_eq!(b.study["eye"], "left");
    assert_eq!(s.case(b.id).unwrap().unwrap(), b);
    // A duplicate third item rolls the first two back.
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
    assert!(s.case_by_key("x").unwrap().is_none());
    let err = s.ingest("hash64", &[(case("z"), vec![0; 7])]).unwrap_err();
    assert!(err.to_string().contains("7 bytes"), "{err}");
    // Descriptors for the same cases reuse them; a delete removes every model's vector.
    let desc = ModelInfo {
        name: "desc".into(),
        kind: ModelKind::Descriptors {
            dim: 2,
            metric: Metric::L2,
        },
        config_hash: String::new(),
    };
    s.add_model(&desc).unwrap();
    s.ingest("desc", &[(case("a"), vec![0; 8])]).unwrap();
    let info = s.info().unwrap();
    assert_eq!(info.cases, 2);
    assert_eq!(info.schema_version, SCHEMA_VERSION);
    assert_eq!(s.model("desc").unwrap(), desc);
    assert!(s.delete("a").unwrap());
    assert_eq!(s.vectors("hash64").unwrap().len(), 1);
    assert_eq!(s.vectors("desc").unwrap().len(), 0);
    let mut other = codes64();
    other.kind = ModelKind::codes(128);
    assert!(s.add_model(&other).is_err());
    // Codes with relaxed outputs: the kind survives the database, and the vector size
    // includes the outputs (1 code byte + 8 floats).
    let relaxed = ModelInfo {
        name: "relaxed".into(),
        kind: ModelKind::Codes {
            bits: 8,
            relaxed: true,
        },
        config_hash: String::new(),
    };
    s.add_model(&relaxed).unwrap();
    assert_eq!(s.model("relaxed").unwrap(), relaxed);
    assert!(s.ingest("relaxed", &[(case("b"), vec![0; 1])]).is_err());
    s.ingest("relaxed", &[(case("b"), vec![0; 33])]).unwrap();
}

#[test]
fn reopen_keeps_data_and_foreign_schemas_are_refused() {
    let Some(url) = url() else { return };
    let schema = format!("t_reopen_{}", std::process::id());
    {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .unwrap();
        let mut s = PgStore::open(&url, &schema).unwrap();
        s.add_model(&codes64()).unwrap();
        s.ingest("hash64", &[(case("a"), vec![3; 8])]).unwrap();
    }
    let mut s = PgStore::open(&url, &schema).unwrap();
    assert_eq!(s.vectors("hash64").unwrap()[0].1, vec![3; 8]);

    // Another application's tables in the schema.
    let foreign = format!("t_foreign_{}", std::process::id());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {foreign} CASCADE; CREATE SCHEMA {foreign}; CREATE TABLE {foreign}.patients (x INT);"
    ))
    .unwrap();
    let err = PgStore::open(&url, &foreign).err().expect("refused");
    assert!(err.to_string().contains("another application"), "{err}");
    // A newer medret's store.
    c.batch_execute(&format!(
        "UPDATE {schema}.medret_meta SET version = {}",
        SCHEMA_VERSION + 1
    ))
    .unwrap();
    let err = PgStore::open(&url, &schema).err().expect("refused");
    assert!(err.to_string().contains("newer medret"), "{err}");
    // Bad schema names never reach SQL.
    assert!(PgStore::open(&url, "x; DROP TABLE y").is_err());
}

#[path = "common/replica.rs"]
mod replica;

#[test]
fn replicas_follow_each_other_through_the_change_log() {
    let Some(url) = url() else { return };
    let schema = format!("t_replica_{}", std::process::id());
    drop(fresh(&url, "replica"));
    replica::replicas_follow_each_other(
        || PgStore::open(&url, &schema).unwrap(),
        || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.batch_execute(&format!(
                "UPDATE {schema}.change_floor SET n = (SELECT n FROM {schema}.generation)"
            ))
            .unwrap();
        },
    );
}
