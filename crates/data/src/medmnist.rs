//! MedMNIST `.npz`: `{train,val,test}_{images,labels}`; images uint8 `(N,H,W)` or
//! `(N,H,W,3)`; labels `(N,1)` class index or `(N,14)` ChestMNIST multi-label.

use std::path::Path;
use std::sync::Arc;

use npyz::npz::NpzArchive;
use npyz::{DType, TypeChar};

use crate::error::{DataError, Result};
use crate::labels::{NIH_FINDINGS, NO_FINDING};
use crate::record::{Dataset, Format, ImageSource, ReadOptions, Record, Split};

fn npz_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Npz {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads an array of any integer dtype as `i64`, with its shape.
fn read_ints<R: std::io::Read + std::io::Seek>(
    npz: &mut NpzArchive<R>,
    path: &Path,
    name: &str,
) -> Result<Option<(Vec<u64>, Vec<i64>)>> {
    let Some(arr) = npz
        .by_name(name)
        .map_err(|e| npz_err(path, format!("array `{name}`: {e}")))?
    else {
        return Ok(None);
    };
    let shape = arr.shape().to_vec();
    let DType::Plain(ts) = arr.dtype() else {
        return Err(npz_err(
            path,
            format!("array `{name}` has a structured dtype"),
        ));
    };
    let e = |e: std::io::Error| npz_err(path, format!("array `{name}`: {e}"));
    let data: Vec<i64> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Uint, 1) => arr
            .into_vec::<u8>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 2) => arr
            .into_vec::<u16>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 4) => arr
            .into_vec::<u32>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 8) => arr
            .into_vec::<u64>()
            .map_err(e)?
            .into_iter()
            .map(|v| v as i64)
            .collect(),
        (TypeChar::Int, 1) => arr
            .into_vec::<i8>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 2) => arr
            .into_vec::<i16>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 4) => arr
            .into_vec::<i32>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 8) => arr.into_vec::<i64>().map_err(e)?,
        _ => {
            return Err(npz_err(
                path,
                format!("array `{name}` has dtype {ts}, expected integers"),
            ));
        }
    };
    let expected: u64 = shape.iter().product();
    if data.len() as u64 != expected {
        return Err(npz_err(path, format!("array `{name}` is truncated")));
    }
    Ok(Some((shape, data)))
}

/// Reads a MedMNIST `.npz`. The task is inferred from the label shape and the file name:
/// 14 columns is ChestMNIST (NIH findings), `retinamnist` gives DR grades, anything else
/// single-label classes named `class_K`.
pub fn read_medmnist(path: &Path, _opts: &ReadOptions) -> Result<Dataset> {
    let mut npz =
        NpzArchive::open(path).map_err(|e| npz_err(path, format!("not a readable .npz: {e}")))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_retina = stem.contains("retina");
    let mut records = Vec::new();
    let mut label_names: Option<Vec<String>> = None;
    let mut any = false;
    for split in [Split::Train, Split::Val, Split::Test] {
        let ik = format!("{}_images", split.name());
        let lk = format!("{}_labels", split.name());
        let Some((ishape, ipx)) = read_ints(&mut npz, path, &ik)? else {
            continue;
        };
        any = true;
        let (lshape, labels) = read_ints(&mut npz, path, &lk)?
            .ok_or_else(|| npz_err(path, format!("`{ik}` present but `{lk}` missing")))?;
        let (n, h, w, c) = match ishape.as_slice() {
            [n, h, w] => (*n as usize, *h as usize, *w as usize, 1),
            [n, h, w, 3] => (*n as usize, *h as usize, *w as usize, 3),
            s => {
                return Err(npz_err(
                    path,
                    format!("`{ik}` has shape {s:?}, expected (N,H,W) or (N,H,W,3)"),
                ));
            }
        };
        let ncol = match lshape.as_slice() {
            [m] if *m as usize == n => 1,
            [m, k] if *m as usize == n => *k as usize,
            s => {
                return Err(npz_err(
                    path,
                    format!("`{lk}` has shape {s:?}, expected ({n},K)"),
                ));
            }
        };
        let pixels: Arc<[u8]> = ipx
            .iter()
            .map(|&v| {
                u8::try_from(v).map_err(|_| npz_err(path, format!("`{ik}` holds {v}, not uint8")))
            })
            .collect::<Result<Vec<u8>>>()?
            .into();
        label_names.get_or_insert_with(|| {
            if ncol == 14 {
                let mut v: Vec<String> = NIH_FINDINGS.iter().map(|s| s.to_string()).collect();
                v.push(NO_FINDING.into());
                v
            } else if is_retina {
                (0..5).map(crate::eyepacs::grade_label).collect()
            } else {
                Vec::new()
            }
        });
        for i in 0..n {
            let row = &labels[i * ncol..(i + 1) * ncol];
            let mut rec = Record::new(
                format!("{}_{i}", split.name()),
                ImageSource::Array {
                    file: path.to_path_buf(),
                    key: ik.clone(),
                    index: i,
                    height: h,
                    width: w,
                    channels: c,
                    pixels: pixels.clone(),
                },
            );
            rec.split = Some(split);
            // MedMNIST has no patient ids: each image is its own patient.
            rec.patient_id = format!("{}_{i}", split.name());
            if ncol == 14 {
                for (k, &v) in row.iter().enumerate() {
                    if v != 0 {
                        rec.labels.push(NIH_FINDINGS[k].to_string());
                    }
                }
                if rec.labels.is_empty() {
                    rec.labels.push(NO_FINDING.into());
                }
            } else if ncol == 1 {
                let k = row[0];
                if is_retina {
                    let g = u8::try_from(k).ok().filter(|g| *g <= 4).ok_or_else(|| {
                        npz_err(path, format!("`{lk}`[{i}] = {k} is not a DR grade 0-4"))
                    })?;
                    rec.grade = Some(g);
                    rec.labels.push(crate::eyepacs::grade_label(g));
                } else {
                    rec.labels.push(format!("class_{k}"));
                }
            } else {
                return Err(npz_err(
                    path,
                    format!("`{lk}` has {ncol} columns; expected 1 or 14"),
                ));
            }
            records.push(rec);
        }
    }
    if !any {
        return Err(npz_err(
            path,
            "no `train_images`, `val_images` or `test_images` array",
        ));
    }
    let label_names = match label_names {
        Some(v) if !v.is_empty() => v,
        _ => {
            let mut v: Vec<String> = records.iter().flat_map(|r| r.labels.clone()).collect();
            v.sort_by_key(|s| {
                s.trim_start_matches("class_")
                    .parse::<i64>()
                    .unwrap_or(i64::MAX)
            });
            v.dedup();
            v
        }
    };
    Ok(Dataset {
        format: Format::Medmnist,
        root: path.to_path_buf(),
        label_names,
        records,
        skipped: Vec::new(),
    })
}
