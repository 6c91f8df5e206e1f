//! Records to cases, and "encode with a trained model, then ingest" in one step.

use std::path::Path;

use medret_data::Record;
use medret_models::encoder::Encoder;
use medret_models::model_card::Output;
use medret_store::{CaseStore, Metric, ModelInfo, ModelKind, NewCase};

use crate::binding::ModelBinding;
use crate::error::{Result, SearchError};

/// The case a record becomes: its id as the key, labels, grade, patient id (stored for the
/// archive, never logged) and study metadata (view, eye, split and the dataset's other
/// columns; never DICOM headers wholesale).
pub fn case_from_record(r: &Record) -> NewCase {
    NewCase {
        key: r.id.clone(),
        path: r.source.describe(),
        labels: r.labels.clone(),
        grade: r.grade,
        patient_id: r.patient_id.clone(),
        study: serde_json::json!({
            "view": r.view,
            "eye": r.eye.map(|e| e.name()),
            "split": r.split.map(|s| s.name()),
            "meta": r.meta,
        }),
    }
}

/// The store's model kind for an encoder: its card's output, or with `binary` the
/// binarised descriptors of a descriptor model trained with `binary_bits`.
pub fn model_kind(encoder: &Encoder, binary: bool) -> Result<ModelKind> {
    Ok(match (encoder.card.output, binary) {
        (Output::Codes { bits }, _) => ModelKind::codes(bits),
        (Output::Descriptors { .. }, true) => {
            ModelKind::codes(encoder.binary_bits().ok_or_else(|| {
                SearchError::Invalid(format!(
                    "{}: this model has no binary codes; train it with --binary-bits to index them",
                    encoder.dir.display()
                ))
            })?)
        }
        (Output::Descriptors { dim }, false) => ModelKind::Descriptors {
            dim,
            metric: Metric::Cosine,
        },
    })
}

/// The model kind of a new archive built with `encoder`: [`model_kind`], with a hash
/// model's relaxed outputs stored beside each code for the second stage of ranking.
pub fn archive_kind(encoder: &Encoder, binary: bool) -> Result<ModelKind> {
    Ok(match model_kind(encoder, binary)? {
        ModelKind::Codes { bits, .. } if matches!(encoder.card.output, Output::Codes { .. }) => {
            ModelKind::Codes {
                bits,
                relaxed: true,
            }
        }
        other => other,
    })
}

/// Encodes `records` with `encoder` (all of them, before the store is touched), then
/// ingests them under `name` in one transaction. `build` creates the model (refused if it
/// exists); otherwise the model must exist and have been built by this very model folder.
/// With `flip_tta` a built archive encodes every image with its mirror, and an added
/// batch follows the archive's choice.
#[allow(clippy::too_many_arguments)]
pub fn ingest_with_model(
    store: &mut dyn CaseStore,
    store_name: &str,
    name: &str,
    encoder: &Encoder,
    records: &[Record],
    build: bool,
    binary: bool,
    flip_tta: bool,
    batch: usize,
    progress: &dyn Fn(usize),
) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Err(SearchError::Invalid(
            "no images to index (is the split empty?)".into(),
        ));
    }
    let binding = ModelBinding {
        flip_tta,
        ..ModelBinding::new(&encoder.dir, &encoder.card)
    };
    let mut kind = archive_kind(encoder, binary)?;
    let existing = store.model(name);
    // An archive built before relaxed outputs were stored keeps its layout.
    if let (
        Ok(ModelInfo {
            kind: old @ ModelKind::Codes { bits: b, .. },
            ..
        }),
        ModelKind::Codes { bits, .. },
    ) = (&existing, kind)
        && !build
        && *b == bits
    {
        kind = *old;
    }
    // An added batch is encoded as the archive's first one was.
    let flip = match &existing {
        Ok(e) => ModelBinding::flip_tta_of(&e.config_hash),
        Err(_) => flip_tta,
    };
    match existing {
        Ok(existing) if build => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: format!(
                    "already exists ({}); use `medret index add`",
                    serde_json::to_string(&existing.kind).unwrap_or_default()
                ),
            });
        }
        Ok(existing) if existing.kind != kind => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: format!(
                    "stores {}, but this ingest would add {}",
                    serde_json::to_string(&existing.kind).unwrap_or_default(),
                    serde_json::to_string(&kind).unwrap_or_default()
                ),
            });
        }
        Ok(existing) => match ModelBinding::from_config_hash(&existing.config_hash) {
            Some(b) if flip_tta && !b.flip_tta => {
                return Err(SearchError::Model {
                    model: name.into(),
                    store: store_name.into(),
                    message: "was built without --flip-tta; its cases are added as it encodes them"
                        .into(),
                });
            }
            Some(b) => b.check(&encoder.card, &encoder.dir, name, store_name)?,
            None => {
                return Err(SearchError::Model {
                    model: name.into(),
                    store: store_name.into(),
                    message: "holds vectors ingested from files, not from a model folder; add with --codes or --descriptors".into(),
                });
            }
        },
        Err(_) if !build => {
            return Err(SearchError::Model {
                model: name.into(),
                store: store_name.into(),
                message: "does not exist; use `medret index build`".into(),
            });
        }
        Err(_) => {}
    }
    let vectors: Vec<Vec<u8>> = encoder
        .encode_records_with(records, batch, flip, progress)?
        .iter()
        .map(|e| crate::query::stored_vector(kind, e))
        .collect();
    let items: Vec<(NewCase, Vec<u8>)> =
        records.iter().map(case_from_record).zip(vectors).collect();
    if build {
        // Model and vectors in one transaction: a failed ingest leaves no empty model
        // behind to make the rerun say "already exists".
        Ok(store.create_and_ingest(
            &ModelInfo {
                name: name.into(),
                kind,
                config_hash: binding.to_config_hash(),
            },
            &items,
        )?)
    } else {
        Ok(store.ingest(name, &items)?)
    }
}

/// Cases with their stored vector bytes, in manifest order.
pub type Items = Vec<(NewCase, Vec<u8>)>;

/// Where precomputed vectors come from: packed codes (uint8 `.npy`, N x bits/8) or
/// float32 descriptors (`.npy`, N x d) compared by `metric`.
pub enum VectorFile<'a> {
    Codes(&'a Path),
    Descriptors(&'a Path, Metric),
}

/// Reads a vector file whose rows follow dataset `ds` (named `manifest` in messages) one
/// to one, and checks that they agree, before anything is written.
pub fn items_from_files(
    ds: &medret_data::Dataset,
    manifest: &Path,
    vectors: VectorFile<'_>,
) -> Result<(ModelKind, Items)> {
    use medret_data::npy::{read_f32_matrix, read_u8_matrix};
    let bad = |p: &Path, m: String| SearchError::File {
        path: p.to_path_buf(),
        message: m,
    };
    let (file, kind, rows, bytes, data) = match vectors {
        VectorFile::Codes(p) => {
            let (shape, data) = read_u8_matrix(p)?;
            let bits = shape[1] * 8;
            if bits == 0 || bits > 1024 {
                return Err(bad(
                    p,
                    format!(
                        "{} bytes per code; codes are 1 to 128 bytes (8 to 1024 bits)",
                        shape[1]
                    ),
                ));
            }
            (p, ModelKind::codes(bits), shape[0], shape[1], data)
        }
        VectorFile::Descriptors(p, metric) => {
            let (shape, data) = read_f32_matrix(p)?;
            if shape.len() != 2 || shape[1] == 0 {
                return Err(bad(
                    p,
                    format!("expected a 2-D float32 array (N x d), found shape {shape:?}"),
                ));
            }
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(bad(
                    p,
                    format!("row {} holds a non-finite value", i / shape[1]),
                ));
            }
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            let dim = shape[1];
            (
                p,
                ModelKind::Descriptors { dim, metric },
                shape[0],
                dim * 4,
                bytes,
            )
        }
    };
    if rows != ds.records.len() {
        return Err(bad(
            file,
            format!(
                "{rows} rows, but {} lists {} cases; rows must follow the dataset's order one to one",
                manifest.display(),
                ds.records.len()
            ),
        ));
    }
    let items = ds
        .records
        .iter()
        .zip(data.chunks_exact(bytes))
        .map(|(r, v)| (case_from_record(r), v.to_vec()))
        .collect();
    Ok((kind, items))
}

/// Ingests precomputed vectors under `name`: `build` creates the model (refused if it
/// exists) in the same transaction as the vectors; otherwise the model must exist and
/// store the same kind.
pub fn ingest_items(
    store: &mut dyn CaseStore,
    store_name: &str,
    name: &str,
    kind: ModelKind,
    config_hash: &str,
    items: &[(NewCase, Vec<u8>)],
    build: bool,
) -> Result<Vec<u64>> {
    let model_err = |message: String| SearchError::Model {
        model: name.into(),
        store: store_name.into(),
        message,
    };
    let shown = |k: &ModelKind| serde_json::to_string(k).unwrap_or_default();
    match store.model(name) {
        Ok(existing) if build => Err(model_err(format!(
            "already exists ({}); use `medret index add`",
            shown(&existing.kind)
        ))),
        Ok(existing) if existing.kind != kind => Err(model_err(format!(
            "stores {}, but the file holds {}",
            shown(&existing.kind),
            shown(&kind)
        ))),
        Ok(_) => Ok(store.ingest(name, items)?),
        Err(_) if !build => Err(model_err("does not exist; use `medret index build`".into())),
        Err(_) => Ok(store.create_and_ingest(
            &ModelInfo {
                name: name.into(),
                kind,
                config_hash: config_hash.into(),
            },
            items,
        )?),
    }
}

/// Records of `split` (`None`: all).
pub fn select_split(records: &[Record], split: Option<medret_data::Split>) -> Vec<Record> {
    records
        .iter()
        .filter(|r| split.is_none() || r.split == split)
        .cloned()
        .collect()
}

/// A model folder's path as stored (absolute when it exists).
pub fn absolute(dir: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A new image for [`ingest_images`]: its case id, the extension it is stored under, its
/// file bytes, and its vector as the archive stores it.
pub struct NewImage {
    pub key: String,
    pub extension: &'static str,
    pub bytes: Vec<u8>,
    pub vector: Vec<u8>,
}

/// `upload-` and 16 hex digits of the bytes' SHA-256: case ids for images sent without one.
pub fn content_key(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("upload-{}", crate::query::hex(&Sha256::digest(bytes)[..8]))
}

/// How the store records an image that the server itself wrote: `upload:` and its file
/// name in the upload folder. Only such images are ever removed by medret (with their
/// case); images ingested from a dataset are referenced by their own path and never
/// touched.
pub const UPLOAD_SCHEME: &str = "upload:";

/// The file name in the upload folder of a stored path written by the server, or `None`
/// for any other path. A name with a separator or `..` is refused, so a stored path can
/// never reach outside the upload folder.
pub fn uploaded_file_name(stored: &str) -> Option<&str> {
    let name = stored.strip_prefix(UPLOAD_SCHEME)?;
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.');
    plain.then_some(name)
}

/// A case id as a file name: anything but ASCII letters, digits, `-`, `_` and `.`
/// becomes `_`, and 8 hex digits of the id's SHA-256 follow, so that two ids that clean
/// to the same text (`a/b`, `a_b`) never share a file.
fn file_stem(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let clean: String = key
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{clean}-{}",
        crate::query::hex(&Sha256::digest(key.as_bytes())[..4])
    )
}

/// The suffix of an image written before its ingest committed. Such a file is named
/// `.<final name>.<random>.partial`; it becomes `<final name>` only after the commit, so
/// a crash never leaves a file under a name that blocks a later ingest.
const PARTIAL: &str = ".partial";

/// How old a partial file must be before a sweep touches it: far longer than any ingest
/// transaction waits.
pub const PARTIAL_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// The final name a partial file stands for.
fn partial_target(file: &str) -> Option<&str> {
    let inner = file.strip_prefix('.')?.strip_suffix(PARTIAL)?;
    let (target, _random) = inner.rsplit_once('.')?;
    (!target.is_empty()).then_some(target)
}

/// Stores each image in `dir` and ingests them all, with the metadata of `template`
/// (its key and path replaced), into `archive` in one transaction: all or nothing. Case
/// ids that exist or repeat within the batch are refused before anything is written.
///
/// Each image is written under a temporary name first. If the store does not commit,
/// those files are removed; once it has committed, nothing is removed: the files are
/// renamed to their final names (a crash in between is completed by [`sweep_uploads`]).
/// The store records each image as `upload:<file name>` ([`UPLOAD_SCHEME`]).
pub fn ingest_images<S: CaseStore>(
    archive: &mut medret_store::Archive<S>,
    images: &[NewImage],
    template: &NewCase,
    dir: &Path,
) -> Result<Vec<u64>> {
    let cases: Vec<NewCase> = images.iter().map(|_| template.clone()).collect();
    ingest_images_as(archive, images, &cases, dir)
}

/// [`ingest_images`] with each image's own metadata: `cases[i]` (its key and path
/// replaced) goes with `images[i]`.
pub fn ingest_images_as<S: CaseStore>(
    archive: &mut medret_store::Archive<S>,
    images: &[NewImage],
    cases: &[NewCase],
    dir: &Path,
) -> Result<Vec<u64>> {
    if images.len() != cases.len() {
        return Err(SearchError::Invalid(format!(
            "{} images for {} cases",
            images.len(),
            cases.len()
        )));
    }
    let conflict = |m: String| SearchError::Conflict(m);
    let io = |what: &str, e: std::io::Error| SearchError::File {
        path: dir.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    for (i, im) in images.iter().enumerate() {
        if images[..i].iter().any(|o| o.key == im.key) {
            return Err(SearchError::Invalid(format!(
                "case `{}` twice in one batch (the same image?)",
                im.key
            )));
        }
        if archive.store().case_by_key(&im.key)?.is_some() {
            return Err(conflict(format!("case `{}` already exists", im.key)));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create the image folder", e))?;
    let mut partial: Vec<(tempfile::TempPath, String)> = Vec::new();
    let mut items = Vec::new();
    for (im, template) in images.iter().zip(cases) {
        let name = format!("{}.{}", file_stem(&im.key), im.extension);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(PARTIAL)
            .tempfile_in(dir)
            .map_err(|e| io("temporary file", e))?;
        std::io::Write::write_all(&mut tmp, &im.bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| io("writing an image", e))?;
        items.push((
            NewCase {
                key: im.key.clone(),
                path: format!("{UPLOAD_SCHEME}{name}"),
                ..template.clone()
            },
            im.vector.clone(),
        ));
        // Dropping a TempPath removes the file: every early return below cleans up.
        partial.push((tmp.into_temp_path(), name));
    }
    let ids = archive.ingest(&items)?;
    // Committed: from here on, nothing is removed.
    for (tmp, name) in partial {
        let target = dir.join(&name);
        if let Err(e) = tmp.persist(&target) {
            // The file stays under its temporary name; the next sweep completes it.
            let _ = e.path.keep();
            tracing::error!(
                error = %e.error,
                "an ingested image could not be moved to its final name; it is kept and the next start-up completes the move"
            );
        }
    }
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(ids)
}

/// What [`sweep_uploads`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Images whose ingest committed but whose rename did not happen (a crash): renamed.
    pub completed: usize,
    /// Images of ingests that never committed: removed.
    pub removed: usize,
}

/// Finishes or undoes what a crash interrupted in the upload folder `dir`: a partial
/// file whose case the store holds (recorded as `upload:<its final name>`) is renamed to
/// that name (whatever its age); any other partial file older than [`PARTIAL_GRACE`] is
/// removed (a younger one may be an ingest in flight on another server). Files under
/// final names are left alone (`medret index check` lists those no case refers to).
pub fn sweep_uploads(store: &mut dyn CaseStore, dir: &Path) -> Result<Sweep> {
    let mut sweep = Sweep::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(sweep);
    };
    let referenced = store.paths_with_prefix(UPLOAD_SCHEME)?;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(target) = file.to_str().and_then(partial_target) else {
            continue;
        };
        let path = entry.path();
        let committed = referenced.contains(&format!("{UPLOAD_SCHEME}{target}"));
        // An uncommitted partial file this young may belong to an ingest in flight on
        // another server sharing the folder; it is left for a later sweep. A committed
        // one is finished at once (its server would only have renamed it).
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < PARTIAL_GRACE);
        if young && !committed {
            continue;
        }
        if committed {
            let to = dir.join(target);
            if to.exists() {
                std::fs::remove_file(&path).ok();
                sweep.removed += 1;
            } else if std::fs::rename(&path, &to).is_ok() {
                sweep.completed += 1;
            }
        } else if std::fs::remove_file(&path).is_ok() {
            sweep.removed += 1;
        }
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_stay_inside_the_folder() {
        assert_eq!(uploaded_file_name("upload:a-1.png"), Some("a-1.png"));
        for bad in [
            "upload:",
            "upload:../x.png",
            "upload:a/b.png",
            "upload:..",
            "upload:.a.png.x.partial",
            "/data/x.png",
            "x.png",
        ] {
            assert_eq!(uploaded_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_names_differ_for_ids_that_clean_alike() {
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        assert!(file_stem("../etc/passwd").starts_with("___etc_passwd-"));
        assert_eq!(
            partial_target(".x-1234abcd.png.Ab12Cd.partial"),
            Some("x-1234abcd.png")
        );
        assert_eq!(partial_target("x.png"), None);
    }
}
