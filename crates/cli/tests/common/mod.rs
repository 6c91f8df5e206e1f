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
