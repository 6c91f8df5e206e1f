//! `medret index` and `medret search` end to end, bad input, and crash safety: ingests
//! killed with SIGKILL inside their transaction leave a store holding exactly the
//! committed ingests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use medret_data::npy::write_u8_matrix;
use medret_store::{CaseStore, SqliteStore};

mod common;
use common::{fails as err, ok};

fn synth(dir: &Path, n: usize) {
    common::synth("fundus", dir, n, 32, 4);
}

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}

/// `n` random codes of `bytes` bytes.
fn codes(path: &Path, n: usize, bytes: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let data: Vec<u8> = (0..n * bytes).map(|_| (lcg(&mut s) >> 56) as u8).collect();
    write_u8_matrix(path, n, bytes, &data).unwrap();
    data
}

fn cases(store: &Path) -> u64 {
    SqliteStore::open(store).unwrap().info().unwrap().cases
}

#[test]
fn build_search_delete_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("f");
    synth(&data, 30);
    let ds = medret_data::open_dataset(&data, None, &Default::default()).unwrap();
    let c = tmp.path().join("c.npy");
    let code_bytes = codes(&c, 30, 8, 1);
    let store = tmp.path().join("s.db");
    let (d, cs, st) = (
        data.to_str().unwrap(),
        c.to_str().unwrap(),
        store.to_str().unwrap(),
    );
    ok(&[
        "index",
        "build",
        "--store",
        st,
        "--name",
        "h64",
        "--codes",
        cs,
        "--manifest",
        d,
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["index", "info", "--store", st, "--json"])).unwrap();
    assert_eq!(info["cases"], 30);
    assert_eq!(info["models"][0][1], 30);

    // Search by a stored case: the case itself is left out; the rest ranks by (distance,
    // manifest order), checked against distances computed here.
    let q = 7usize;
    let key = ds.records[q].id.clone();
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "search", "--store", st, "--model", "h64", "--case", &key, "-k", "5", "--json",
    ]))
    .unwrap();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let dist = |i: usize| -> u32 {
        (0..8)
            .map(|b| (code_bytes[q * 8 + b] ^ code_bytes[i * 8 + b]).count_ones())
            .sum()
    };
    let mut want: Vec<(u32, usize)> = (0..30).filter(|&i| i != q).map(|i| (dist(i), i)).collect();
    want.sort();
    for (r, (dw, iw)) in results.iter().zip(&want) {
        assert_eq!(r["case_id"], ds.records[*iw].id.as_str());
        assert_eq!(r["distance"].as_f64().unwrap() as u32, *dw);
        assert_eq!(r["patient_id"], "****", "patient ids are masked by default");
        assert!(r["labels"].is_array() && r["path"].is_string() && r["rank"].is_number());
    }
    // By hex code: the case whose code it is comes first at distance 0.
    let hex: String = code_bytes[3 * 8..4 * 8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "search",
        "--store",
        st,
        "--model",
        "h64",
        "--code",
        &hex,
        "-k",
        "1",
        "--json",
        "--show-ids",
    ]))
    .unwrap();
    assert_eq!(out["results"][0]["case_id"], ds.records[3].id.as_str());
    assert_eq!(out["results"][0]["distance"], 0.0);
    assert_eq!(
        out["results"][0]["patient_id"],
        ds.records[3].patient_id.as_str()
    );

    // Bad input: nothing is written.
    let short = tmp.path().join("short.npy");
    codes(&short, 29, 8, 2);
    let e = err(&[
        "index",
        "add",
        "--store",
        st,
        "--name",
        "h64",
        "--codes",
        short.to_str().unwrap(),
        "--manifest",
        d,
    ]);
    assert!(e.contains("29 rows") && e.contains("30 cases"), "{e}");
    let wide = tmp.path().join("wide.npy");
    codes(&wide, 30, 16, 3);
    let e = err(&[
        "index",
        "add",
        "--store",
        st,
        "--name",
        "h64",
        "--codes",
        wide.to_str().unwrap(),
        "--manifest",
        d,
    ]);
    assert!(e.contains("128"), "{e}");
    let e = err(&[
        "index",
        "add",
        "--store",
        st,
        "--name",
        "h64",
        "--codes",
        cs,
        "--manifest",
        d,
    ]);
    assert!(e.contains("already has a vector"), "{e}");
    let e = err(&[
        "index",
        "build",
        "--store",
        st,
        "--name",
        "h64",
        "--codes",
        cs,
        "--manifest",
        d,
    ]);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(cases(&store), 30);
    let foreign = tmp.path().join("notes.txt");
    std::fs::write(&foreign, "x".repeat(200)).unwrap();
    let e = err(&["index", "info", "--store", foreign.to_str().unwrap()]);
    assert!(
        e.contains("notes.txt") && e.contains("not a medret store"),
        "{e}"
    );
    let e = err(&[
        "search", "--store", st, "--model", "h64", "--code", "zz", "-k", "1",
    ]);
    assert!(e.contains("`z` is not a hex digit"), "{e}");
    let e = err(&[
        "search", "--store", st, "--model", "h64", "--code", "0a", "-k", "1",
    ]);
    assert!(e.contains("2 hex digits") && e.contains("need 16"), "{e}");

    // Delete removes the case from the store and from search results.
    ok(&["index", "delete", "--store", st, &key]);
    assert_eq!(cases(&store), 29);
    let out = ok(&[
        "search", "--store", st, "--model", "h64", "--code", &hex, "-k", "29", "--json",
    ]);
    assert!(!out.contains(&format!("\"{key}\"")));
    let e = err(&["index", "delete", "--store", st, &key]);
    assert!(e.contains("not in the store"), "{e}");
}

/// Spawns `medret index build` with the store's test hook set: halfway through its
/// transaction the ingest creates `marker` and sleeps, so the kill that follows is known
/// to land inside the transaction.
fn build_paused(
    store: &str,
    name: &str,
    codes: &Path,
    data: &str,
    marker: &Path,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_medret"))
        .args([
            "index",
            "build",
            "--store",
            store,
            "--name",
            name,
            "--codes",
            codes.to_str().unwrap(),
            "--manifest",
            data,
        ])
        .env("MEDRET_TEST_INGEST_PAUSE", marker)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn killed_ingests_leave_exactly_the_committed_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, other) = (tmp.path().join("f"), tmp.path().join("g"));
    let n = 400;
    synth(&data, n);
    // A second dataset with other case ids: its killed ingest must add no case.
    ok(&[
        "synth",
        "fundus",
        "--n",
        "40",
        "--size",
        "32",
        "--seed",
        "5",
        "--out",
        other.to_str().unwrap(),
    ]);
    let store = tmp.path().join("s.db");
    let st = store.to_str().unwrap();
    let d = data.to_str().unwrap();
    let c0 = tmp.path().join("c0.npy");
    codes(&c0, n, 8, 10);
    ok(&[
        "index",
        "build",
        "--store",
        st,
        "--name",
        "m0",
        "--codes",
        c0.to_str().unwrap(),
        "--manifest",
        d,
    ]);
    let rounds: [(&str, &Path, usize); 3] =
        [("m1", &data, n), ("m2", &other, 40), ("m1", &data, n)];
    for (i, (name, set, rows)) in rounds.into_iter().enumerate() {
        let c = tmp.path().join(format!("c{}.npy", i + 1));
        codes(&c, rows, 8, 11 + i as u64);
        let marker = tmp.path().join(format!("in-tx-{i}"));
        let mut child = build_paused(st, name, &c, set.to_str().unwrap(), &marker);
        let t = Instant::now();
        while !marker.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {i}: the ingest ended before reaching its transaction's midpoint"
            );
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "round {i}: no marker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL, inside the transaction
        child.wait().unwrap();
        // The store opens and holds exactly what was committed before: the first build's
        // cases and vectors, and no trace of the killed model (no empty model either,
        // which would make the rerun fail with "already exists").
        let mut s = SqliteStore::open(&store).unwrap();
        let info = s.info().unwrap();
        assert_eq!(info.cases, n as u64, "round {i}: cases after the kill");
        let names: Vec<&str> = info.models.iter().map(|(m, _)| m.name.as_str()).collect();
        assert_eq!(names, ["m0"], "round {i}: models after the kill");
        assert_eq!(s.vectors("m0").unwrap().len(), n);
    }
    // The same build, rerun without the hook, succeeds and commits every vector.
    let c = tmp.path().join("c1.npy");
    ok(&[
        "index",
        "build",
        "--store",
        st,
        "--name",
        "m1",
        "--codes",
        c.to_str().unwrap(),
        "--manifest",
        d,
    ]);
    let mut s = SqliteStore::open(&store).unwrap();
    assert_eq!(s.vectors("m1").unwrap().len(), n);
}

#[test]
fn postgres_store_through_the_cli() {
    let url = match std::env::var("MEDRET_PG_URL") {
        Ok(u) if u.starts_with("postgres") => u,
        _ => {
            eprintln!("MEDRET_PG_URL (postgresql://...) is not set: skipping (.ci/run sets it)");
            return;
        }
    };
    let schema = format!("t_cli_{}", std::process::id());
    {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("f");
    synth(&data, 12);
    let c = tmp.path().join("c.npy");
    let code_bytes = codes(&c, 12, 8, 5);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_medret"))
            .env("MEDRET_PG_SCHEMA", &schema)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "index",
        "build",
        "--store",
        &url,
        "--name",
        "h64",
        "--codes",
        c.to_str().unwrap(),
        "--manifest",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("indexed 12 cases"), "{said}");
    if let Some(pass) = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|c| c.split(':').nth(1))
    {
        assert!(
            !said.contains(&format!(":{pass}@")),
            "the password leaked into the output: {said}"
        );
    }
    let hex: String = code_bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
    let o = run(&[
        "search", "--store", &url, "--model", "h64", "--code", &hex, "-k", "3", "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["results"][0]["distance"], 0.0);
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
}
