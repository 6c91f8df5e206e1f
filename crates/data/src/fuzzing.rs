//! The bodies of medret's fuzz targets (`fuzz/fuzz_targets/*.rs`), kept here so that the
//! committed corpora replay on stable without libFuzzer (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, runs them through the parser as medret uses it and
//! ignores the result: an error is a correct answer, a panic (or an abort, or an
//! allocation beyond libFuzzer's memory limit) is a finding.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::record::ReadOptions;

/// The most pixels a target decodes, checked against the declared size first as the
/// server checks its `max_pixels` before decoding an upload; larger images are a
/// question of budget (answered there), not of parsing.
const MAX_PIXELS: u64 = 1 << 20;

/// The DICOM reader: the file meta group and data set, the declared size, the record's
/// attributes, and (when the declared size is within [`MAX_PIXELS`]) the pixel decoding.
pub fn dicom(data: &[u8]) {
    let name = Path::new("fuzz.dcm");
    let Ok(obj) = crate::dicom::open_bytes(name, data) else {
        return;
    };
    let _ = crate::dicom::record_of(name, &obj);
    if let Ok((h, w)) = crate::dicom::declared_size_bytes(name, data)
        && h * w <= MAX_PIXELS
    {
        let _ = crate::dicom::decode_dicom_bytes(name, data);
    }
}

/// PNG and JPEG as medret decodes them ([`crate::decode::decode_file`]), after the size
/// check that the server makes with the image crate's header reader.
pub fn image(data: &[u8]) {
    let Ok(reader) = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format()
    else {
        return;
    };
    let Ok((w, h)) = reader.into_dimensions() else {
        return;
    };
    if u64::from(w) * u64::from(h) <= MAX_PIXELS {
        let _ = crate::decode::decode_bytes(Path::new("fuzz.png"), data);
    }
}

/// `.npy` matrices: float32 features and uint8 codes.
pub fn npy(data: &[u8]) {
    let name = Path::new("fuzz.npy");
    let _ = crate::npy::read_f32_matrix_bytes(name, data);
    let _ = crate::npy::read_u8_matrix_bytes(name, data);
}

/// A folder in which `manifest.csv` is rewritten for each input, beside the files a seed
/// names (`a.png`, `b.dcm`, `masks/a_MA.png`), so that rows get past the check that their
/// images exist. One per process; the lock keeps concurrent callers apart.
fn manifest_dir() -> &'static Mutex<PathBuf> {
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("medret-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("masks"));
        for f in ["a.png", "b.dcm", "masks/a_MA.png"] {
            let _ = std::fs::write(dir.join(f), b"");
        }
        Mutex::new(dir)
    })
}

/// The manifest CSV reader, strict and with `skip_bad`, without and with a vocabulary.
pub fn manifest(data: &[u8]) {
    let dir = manifest_dir().lock().unwrap_or_else(|e| e.into_inner());
    let csv = dir.join("manifest.csv");
    if std::fs::write(&csv, data).is_err() {
        return;
    }
    let vocabulary = Some(vec!["Effusion".to_string(), "Nodule".to_string()]);
    for skip_bad in [false, true] {
        for label_vocabulary in [None, vocabulary.clone()] {
            let opts = ReadOptions {
                skip_bad,
                label_vocabulary,
                ..ReadOptions::default()
            };
            let _ = crate::manifest::read_manifest(&csv, &opts);
        }
    }
}

/// The repository's `fuzz/` folder (this crate lives in `crates/data`).
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file of `fuzz/<kind>/<target>`, sorted; the folder must exist and hold files
/// unless `may_be_empty`, so that a moved or emptied corpus fails instead of passing
/// silently. For the replay tests.
pub fn corpus_files(kind: &str, target: &str, may_be_empty: bool) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) if may_be_empty && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.sort();
    assert!(
        may_be_empty || !files.is_empty(),
        "{}: no corpus files",
        dir.display()
    );
    files
}

/// Runs `body` on every input of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`,
/// naming each input first so that a panic says which one it was.
pub fn replay(target: &str, body: fn(&[u8])) {
    let mut n = 0;
    for p in corpus_files("corpus", target, false)
        .into_iter()
        .chain(corpus_files("regressions", target, true))
    {
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        eprintln!("{}", p.display());
        body(&bytes);
        n += 1;
    }
    eprintln!("{target}: replayed {n} inputs");
}
