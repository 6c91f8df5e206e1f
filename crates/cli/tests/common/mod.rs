//! What the CLI's integration tests share: running the `medret` binary, phantoms, small
//! models, and a server on a store.

#![allow(dead_code)]

use std::io::BufRead;
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

/// A run that must fail with a clear error, not a panic, naming each of `needles`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let err = fails(args);
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "medret {args:?}: `{n}` not in: {err}");
    }
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

/// A running `medret serve`, killed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
}

impl Server {
    pub fn start(store: &str, extra: &[&str]) -> Server {
        Self::start_env(store, extra, &[])
    }

    /// Most tests compare the server's answers with the CLI's case ids, so they run with
    /// `--opaque-ids false` unless they say otherwise.
    pub fn start_env(store: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_logged(store, extra, env, None)
    }

    /// With `log`, the server's standard error goes to that file.
    pub fn start_logged(
        store: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Server {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_medret"));
        cmd.args(["serve", "--store", store, "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(match log {
                Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
                None => std::process::Stdio::null(),
            });
        if !extra.contains(&"--opaque-ids") {
            cmd.args(["--opaque-ids", "false"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, base: addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
