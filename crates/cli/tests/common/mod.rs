//! Running the `medret` binary from the CLI tests. New test files use these; the older
//! ones keep their own copies until they are next touched.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub fn medret(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medret"))
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let o = medret(args);
    assert!(
        o.status.success(),
        "medret {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

pub fn fails(args: &[&str]) -> String {
    let o = medret(args);
    assert!(!o.status.success(), "medret {args:?} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `medret synth KIND --n N --size PX --seed SEED --out DIR`: phantoms to train on.
pub fn synth(kind: &str, dir: &Path, n: usize, size: usize, seed: u64) {
    ok(&[
        "synth",
        kind,
        "--n",
        &n.to_string(),
        "--size",
        &size.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        s(dir),
    ]);
}

/// A small chest hashing model (densenet-tiny, 32 px, 16 bits, 2 epochs): seconds to
/// train, enough for the product path.
pub fn train_hash(data: &Path, out: &Path, seed: &str, extra: &[&str]) -> String {
    train_hash_epochs(data, out, seed, "2", extra)
}

/// [`train_hash`] for `epochs` epochs.
pub fn train_hash_epochs(
    data: &Path,
    out: &Path,
    seed: &str,
    epochs: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "train",
        "hash",
        "--data",
        s(data),
        "--arch",
        "densenet-tiny",
        "--size",
        "32",
        "--bits",
        "16",
        "--epochs",
        epochs,
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--seed",
        seed,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    ok(&args)
}
