//! DenseNet weights in and out as safetensors with torchvision's `state_dict` names
//! (`features.conv0.weight`, `features.denseblock1.denselayer1.norm1.running_mean`,
//! `classifier.weight`, ...), so weights move both ways between medret and PyTorch.
//!
//! Loading is strict: before anything is applied, the file's header is checked against the
//! model, and a missing key, an unexpected key, a wrong shape or a dtype other than F32 is
//! an error naming the file and the key. `num_batches_tracked` is accepted and ignored (it
//! only matters for BatchNorm with `momentum=None`). Saving writes a temporary file and
//! renames it, so an interrupted save never leaves a truncated weights file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};

use crate::densenet::{DenseNet, DenseNetConfig};

/// What can go wrong reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: missing {} key(s) the model needs: {}", keys.len(), short_list(keys))]
    Missing { path: PathBuf, keys: Vec<String> },
    #[error("{path}: {} key(s) the model does not have: {} (wrong architecture or configuration?)", keys.len(), short_list(keys))]
    Unexpected { path: PathBuf, keys: Vec<String> },
    #[error("{path}: `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: `{key}` has dtype {found}; expected F32 (convert with `.float()` in PyTorch)")]
    DType {
        path: PathBuf,
        key: String,
        found: String,
    },
}

fn short_list(keys: &[String]) -> String {
    let mut s = keys.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > 5 {
        s.push_str(&format!(", ... ({} more)", keys.len() - 5));
    }
    s
}

/// burn's path of a DenseNet tensor to torchvision's key.
pub fn torchvision_key(burn_path: &str) -> String {
    let parts: Vec<&str> = burn_path.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        match (
            parts[i],
            parts.get(i + 1),
            parts.get(i + 2),
            parts.get(i + 3),
        ) {
            ("blocks", Some(b), Some(&"layers"), Some(l)) => {
                let (b, l) = (
                    b.parse::<usize>().unwrap_or(0),
                    l.parse::<usize>().unwrap_or(0),
                );
                out.push(format!("denseblock{}", b + 1));
                out.push(format!("denselayer{}", l + 1));
                i += 4;
            }
            ("transitions", Some(t), ..) => {
                out.push(format!("transition{}", t.parse::<usize>().unwrap_or(0) + 1));
                i += 2;
            }
            (p, ..) => {
                out.push(p.to_string());
                i += 1;
            }
        }
    }
    out.join(".")
}

/// One tensor the model holds, under its torchvision name.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedTensor {
    pub key: String,
    pub shape: Vec<usize>,
}

impl ExpectedTensor {
    /// BatchNorm running statistics are buffers, not parameters.
    pub fn is_buffer(&self) -> bool {
        self.key.ends_with(".running_mean") || self.key.ends_with(".running_var")
    }
}

/// Every tensor of the model with its torchvision name and PyTorch-layout shape, in the
/// model's order.
pub fn expected_tensors(model: &DenseNet) -> Vec<ExpectedTensor> {
    expected_tensors_of(model)
}

/// [`expected_tensors`] for any module holding DenseNets (the fusion network, C2L's
/// encoders): burn paths with each DenseNet's blocks and transitions renamed as
/// torchvision names them, wherever they sit in the tree.
pub fn expected_tensors_of<M: Module>(model: &M) -> Vec<ExpectedTensor> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| ExpectedTensor {
            key: torchvision_key(&t.name),
            shape: t.shape.to_vec(),
        })
        .collect()
}

/// `(dtype, shape)` of each tensor in a safetensors file, from its JSON header.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>, WeightsError> {
    let fmt = |m: String| WeightsError::Format {
        path: path.to_path_buf(),
        message: m,
    };
    let mut f = std::fs::File::open(path).map_err(|e| fmt(e.to_string()))?;
    let size = f.metadata().map_err(|e| fmt(e.to_string()))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        fmt("not a safetensors file (shorter than its 8-byte header length)".into())
    })?;
    let n = u64::from_le_bytes(n);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(fmt(format!(
            "not a safetensors file, or truncated: header of {n} bytes in a {size}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| fmt(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| fmt(format!("unreadable safetensors header: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| fmt("safetensors header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    let mut data_end = 0u64;
    for (k, v) in obj {
        if k == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap_or("?").to_string();
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(end) = v["data_offsets"].get(1).and_then(|e| e.as_u64()) {
            data_end = data_end.max(end);
        }
        out.insert(k.clone(), (dtype, shape));
    }
    if 8 + n + data_end > size {
        return Err(fmt(format!(
            "truncated: tensors end at byte {} but the file has {size}",
            8 + n + data_end
        )));
    }
    Ok(out)
}

/// Checks a file against the model without loading anything.
pub fn check(model: &DenseNet, path: &Path) -> Result<(), WeightsError> {
    check_module(model, path)
}

/// [`check`] for any module holding DenseNets.
pub fn check_module<M: Module>(model: &M, path: &Path) -> Result<(), WeightsError> {
    let header = read_header(path)?;
    let expected = expected_tensors_of(model);
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !header.contains_key(&e.key))
        .map(|e| e.key.clone())
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::Missing {
            path: path.to_path_buf(),
            keys: missing,
        });
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|e| e.key.as_str()).collect();
    let unexpected: Vec<String> = header
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with(".num_batches_tracked"))
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(WeightsError::Unexpected {
            path: path.to_path_buf(),
            keys: unexpected,
        });
    }
    for e in &expected {
        let (dtype, shape) = &header[&e.key];
        if dtype != "F32" {
            return Err(WeightsError::DType {
                path: path.to_path_buf(),
                key: e.key.clone(),
                found: dtype.clone(),
            });
        }
        if *shape != e.shape {
            return Err(WeightsError::Shape {
                path: path.to_path_buf(),
                key: e.key.clone(),
                expected: e.shape.clone(),
                found: shape.clone(),
            });
        }
    }
    Ok(())
}

/// Regex patterns between torchvision's and burn's names, for DenseNets at the given
/// path prefixes (`""`, `"global."`, ...).
fn patterns_at(nets: &[(&str, &DenseNetConfig)], to_burn: bool) -> KeyRemapper {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (prefix, cfg) in nets {
        for (b, &n) in cfg.block_config.iter().enumerate() {
            for l in 0..n {
                let tv = format!("{prefix}features.denseblock{}.denselayer{}.", b + 1, l + 1);
                let burn = format!("{prefix}features.blocks.{b}.layers.{l}.");
                pairs.push(if to_burn { (tv, burn) } else { (burn, tv) });
            }
            if b + 1 < cfg.block_config.len() {
                let tv = format!("{prefix}features.transition{}.", b + 1);
                let burn = format!("{prefix}features.transitions.{b}.");
                pairs.push(if to_burn { (tv, burn) } else { (burn, tv) });
            }
        }
    }
    let escaped: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(from, to)| (format!("^{}", from.replace('.', r"\.")), to))
        .collect();
    KeyRemapper::from_patterns(escaped).expect("patterns are valid regexes")
}

/// Loads torchvision-named weights into `model` (built from `cfg`), strictly.
pub fn load_torchvision(
    model: &mut DenseNet,
    cfg: &DenseNetConfig,
    path: &Path,
) -> Result<(), WeightsError> {
    load_module(model, &[("", cfg)], path)
}

/// Loads a module holding DenseNets at the given prefixes, strictly (see
/// [`load_torchvision`]).
pub fn load_module<M: Module>(
    model: &mut M,
    nets: &[(&str, &DenseNetConfig)],
    path: &Path,
) -> Result<(), WeightsError> {
    check_module(model, path)?;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(patterns_at(nets, true))
        .allow_partial(false)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| WeightsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(WeightsError::Format {
            path: path.to_path_buf(),
            message: result.to_string(),
        });
    }
    Ok(())
}

/// Saves `model` with torchvision names, atomically (temporary file, then rename).
pub fn save_torchvision(
    model: &DenseNet,
    cfg: &DenseNetConfig,
    path: &Path,
) -> Result<(), WeightsError> {
    save_module(model, &[("", cfg)], path)
}

/// Saves a module holding DenseNets at the given prefixes with torchvision names for
/// each, atomically.
pub fn save_module<M: Module>(
    model: &M,
    nets: &[(&str, &DenseNetConfig)],
    path: &Path,
) -> Result<(), WeightsError> {
    let tmp = path.with_extension("safetensors.tmp");
    let err = |m: String| WeightsError::Format {
        path: path.to_path_buf(),
        message: m,
    };
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(patterns_at(nets, false))
        .overwrite(true);
    // Running statistics may hold a pending update until synchronised.
    let synced = model.valid();
    synced
        .save_into(&mut store)
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| err(format!("cannot move the saved weights into place: {e}")))?;
    Ok(())
}
