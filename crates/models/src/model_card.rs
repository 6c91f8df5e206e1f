//! `model.json`: what a trained retrieval model is, written beside its weights
//! (`model.safetensors`). It names the method and its configuration, the output (binary
//! codes or float descriptors, which decides the index kind), the class names, the
//! preprocessing a query image goes through, the training settings, the dataset
//! fingerprint, the seed and the weights' SHA-256.
//!
//! The card carries a checksum of its own content: a card edited by hand (a changed code
//! length, another preprocessing) no longer describes the weights, and is refused by name
//! rather than producing codes that silently do not match the archive.

use std::io::Read;
use std::path::{Path, PathBuf};

use medret_data::transform::TransformConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cxr_hash::FusionHashConfig;

pub const CARD_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
const FORMAT: &str = "medret-model";
const VERSION: u32 = 1;
const BLANK: &str = "\"checksum\": \"\"";

/// The retrieval method and its network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Method {
    /// Chest X-ray fusion hashing ([`crate::cxr_hash`]).
    CxrFusionHash(FusionHashConfig),
    /// Fundus metric learning with mirror attention ([`crate::fundus_metric`]).
    FundusMetric(crate::fundus_metric::FundusMetricConfig),
}

/// What the model yields per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// Packed binary codes (Hamming distance).
    Codes { bits: usize },
    /// L2-normalised float descriptors (cosine).
    Descriptors { dim: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub version: u32,
    pub method: Method,
    pub output: Output,
    pub class_names: Vec<String>,
    /// The evaluation transform every query and archive image goes through.
    pub preprocessing: TransformConfig,
    /// Every training hyper-parameter (the engine's config and the task's settings).
    pub training: serde_json::Value,
    pub dataset_fingerprint: String,
    pub seed: u64,
    pub weights_sha256: String,
    pub medret_version: String,
    /// SHA-256 of the card's JSON with this field empty.
    #[serde(default)]
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> CardError {
    CardError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ModelCard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: Method,
        output: Output,
        class_names: Vec<String>,
        preprocessing: TransformConfig,
        training: serde_json::Value,
        dataset_fingerprint: String,
        seed: u64,
    ) -> Self {
        ModelCard {
            format: FORMAT.into(),
            version: VERSION,
            method,
            output,
            class_names,
            preprocessing,
            training,
            dataset_fingerprint,
            seed,
            weights_sha256: String::new(),
            medret_version: env!("CARGO_PKG_VERSION").into(),
            checksum: String::new(),
        }
    }

    /// The checksum is over the file's text with the checksum's value blanked, not over
    /// re-serialised values: floats need not survive a parse and print unchanged.
    fn text_checksum(blank_text: &str) -> String {
        hex(&Sha256::digest(blank_text.as_bytes()))
    }

    /// Writes `dir/model.json` for the weights already at `dir/model.safetensors`.
    pub fn write(mut self, dir: &Path) -> Result<Self, CardError> {
        let weights = dir.join(WEIGHTS_FILE);
        self.weights_sha256 =
            sha256_file(&weights).map_err(|e| invalid(&weights, format!("cannot read: {e}")))?;
        self.checksum.clear();
        let blank = serde_json::to_string_pretty(&self).expect("card serialises");
        self.checksum = Self::text_checksum(&blank);
        let text = blank.replacen(BLANK, &format!("\"checksum\": \"{}\"", self.checksum), 1);
        let path = dir.join(CARD_FILE);
        let tmp = dir.join("model.json.tmp");
        std::fs::write(&tmp, text).map_err(|e| invalid(&tmp, format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| invalid(&path, format!("cannot write: {e}")))?;
        Ok(self)
    }

    /// Reads and verifies `dir/model.json` (format, checksum) and the weights' hash.
    pub fn read(dir: &Path) -> Result<Self, CardError> {
        let path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(
                &path,
                if e.kind() == std::io::ErrorKind::NotFound {
                    "missing: not a medret model folder (train one with `medret train hash`)"
                        .to_string()
                } else {
                    format!("cannot read: {e}")
                },
            )
        })?;
        let card = Self::parse(&path, &text, true)?;
        let weights = dir.join(WEIGHTS_FILE);
        let sha =
            sha256_file(&weights).map_err(|e| invalid(&weights, format!("cannot read: {e}")))?;
        if sha != card.weights_sha256 {
            return Err(invalid(
                &weights,
                format!(
                    "SHA-256 {sha} differs from the {} that {CARD_FILE} records: the weights were replaced",
                    card.weights_sha256
                ),
            ));
        }
        Ok(card)
    }

    /// Parses a card's text: the format and version, the checksum when `verify` (the
    /// fuzz target skips it to reach the checks behind it), and [`ModelCard::check`].
    pub fn parse(path: &Path, text: &str, verify: bool) -> Result<Self, CardError> {
        let card: ModelCard = serde_json::from_str(text)
            .map_err(|e| invalid(path, format!("not a valid model card: {e}")))?;
        if card.format != FORMAT {
            return Err(invalid(
                path,
                format!("format `{}` is not {FORMAT}", card.format),
            ));
        }
        if card.version > VERSION {
            return Err(invalid(
                path,
                format!("written by a newer medret (card version {})", card.version),
            ));
        }
        if verify {
            let blank = text.replacen(&format!("\"checksum\": \"{}\"", card.checksum), BLANK, 1);
            if card.checksum.is_empty() || card.checksum != Self::text_checksum(&blank) {
                return Err(invalid(
                    path,
                    "edited after training (its checksum does not match its content); restore it or retrain",
                ));
            }
        }
        card.check().map_err(|m| invalid(path, m))?;
        Ok(card)
    }

    /// Refuses a configuration no medret trains: the checksum proves a card unedited, not
    /// sane (anyone can compute it), and a network built from a growth rate of 10^12 or a
    /// zero-wide layer would abort the process rather than fail.
    pub fn check(&self) -> Result<(), String> {
        fn within(what: &str, v: usize, lo: usize, hi: usize) -> Result<(), String> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} is {v}; expected {lo} to {hi}"))
            }
        }
        fn unit(what: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!("{what} is {v}; expected {lo} to {hi}"))
            }
        }
        let backbone = |b: &crate::densenet::DenseNetConfig| -> Result<(), String> {
            within("backbone.growth_rate", b.growth_rate, 1, 256)?;
            within("backbone.block_config's length", b.block_config.len(), 1, 8)?;
            for &n in &b.block_config {
                within("a backbone block's layer count", n, 1, 128)?;
            }
            within("backbone.num_init_features", b.num_init_features, 1, 1024)?;
            within("backbone.bn_size", b.bn_size, 1, 16)?;
            within("backbone.in_channels", b.in_channels, 1, 3)?;
            if let Some(c) = b.num_classes {
                within("backbone.num_classes", c, 1, 100_000)?;
            }
            unit("backbone.compression", b.compression, 0.01, 1.0)?;
            unit("backbone.bn_eps", b.bn_eps, 1e-12, 1.0)?;
            unit("backbone.bn_momentum", b.bn_momentum, 0.0, 1.0)?;
            Ok(())
        };
        let classes = match (&self.method, self.output) {
            (Method::CxrFusionHash(c), Output::Codes { bits }) => {
                backbone(&c.backbone)?;
                c.validate()?;
                if bits != c.bits {
                    return Err(format!("output has {bits} bits but the network {}", c.bits));
                }
                within("fc_dim", c.fc_dim, 1, 16_384)?;
                within("classes", c.classes, 1, 100_000)?;
                let crop = &c.crop;
                unit("crop.margin", crop.margin.into(), 0.0, 1.0)?;
                unit("crop.min_size", crop.min_size.into(), 0.0, 1.0)?;
                if let crate::cxr_hash::cam_crop::Threshold::Fixed(t) = crop.threshold {
                    unit("crop.threshold", t.into(), 0.0, 1.0)?;
                }
                Some(c.classes)
            }
            (Method::FundusMetric(c), Output::Descriptors { dim }) => {
                backbone(&c.backbone)?;
                if let Some(d) = c.dim {
                    within("dim", d, 1, 16_384)?;
                }
                if dim != c.descriptor_dim() {
                    return Err(format!(
                        "output has {dim} dimensions but the network {}",
                        c.descriptor_dim()
                    ));
                }
                unit("gem_p", c.gem_p.into(), 0.1, 100.0)?;
                if let Some(k) = c.classes {
                    within("classes", k, 1, 100_000)?;
                }
                if let Some(b) = c.binary_bits
                    && (b == 0 || !b.is_multiple_of(8) || b > 4096)
                {
                    return Err(format!(
                        "binary_bits is {b}; expected a multiple of 8 from 8 to 4096"
                    ));
                }
                if let Some(l) = &c.binary_learned {
                    let bits = c.binary_bits.ok_or("binary_learned without binary_bits")?;
                    if c.projection().is_none() {
                        return Err(format!(
                            "binary_learned has a {} x {} matrix and {} means; expected {bits} x {dim} and {dim}",
                            l.matrix.len() / dim.max(1),
                            dim,
                            l.mean.len()
                        ));
                    }
                    if !l.matrix.iter().chain(&l.mean).all(|x| x.is_finite()) {
                        return Err("binary_learned holds a value that is not finite".into());
                    }
                }
                c.classes
            }
            (Method::CxrFusionHash(_), _) => {
                return Err("a fusion hash model's output is codes".into());
            }
            (Method::FundusMetric(_), _) => {
                return Err("a fundus metric model's output is descriptors".into());
            }
        };
        if let Some(k) = classes
            && !self.class_names.is_empty()
            && self.class_names.len() != k
        {
            return Err(format!(
                "{} class names for {k} classes",
                self.class_names.len()
            ));
        }
        let p = &self.preprocessing;
        within("preprocessing.size", p.size, 8, 4096)?;
        // A query goes through the evaluation transform; random augmentations there would
        // make the same image encode differently from one search to the next.
        if p.augment != medret_data::transform::Augment::default() {
            return Err("preprocessing.augment must be off (an evaluation transform)".into());
        }
        if let Some(n) = &p.normalize {
            let ok = n.mean.len() == n.std.len()
                && (1..=3).contains(&n.mean.len())
                && n.mean.iter().all(|m| m.is_finite())
                && n.std.iter().all(|s| s.is_finite() && *s > 0.0);
            if !ok {
                return Err(
                    "preprocessing.normalize needs 1 to 3 finite means and positive stds, as many of each"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Bytes of one stored vector.
    pub fn vector_bytes(&self) -> usize {
        match self.output {
            Output::Codes { bits } => bits / 8,
            Output::Descriptors { dim } => dim * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    fn card() -> ModelCard {
        let mut cfg = FusionHashConfig::new(Arch::DenseNetTiny, 3, 2, 16);
        cfg.crop.margin = 0.05; // an f32 that does not survive f64 text exactly
        ModelCard::new(
            Method::CxrFusionHash(cfg),
            Output::Codes { bits: 16 },
            vec!["A".into(), "B".into()],
            TransformConfig::default(),
            serde_json::json!({"lr": 0.1f32, "beta": 0.009999999776482582f64}),
            "fp".into(),
            7,
        )
    }

    #[test]
    fn round_trip_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"weights v1").unwrap();
        let written = card().write(dir.path()).unwrap();
        let read = ModelCard::read(dir.path()).unwrap();
        assert_eq!(read.checksum, written.checksum);
        assert_eq!(read.output, Output::Codes { bits: 16 });
        assert_eq!(
            read.weights_sha256,
            sha256_file(&dir.path().join(WEIGHTS_FILE)).unwrap()
        );

        // An edited card (another code length) is refused by name.
        let path = dir.path().join(CARD_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"bits\": 16", "\"bits\": 32", 1)).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("edited"),
            "{err}"
        );
        std::fs::write(&path, &text).unwrap();
        ModelCard::read(dir.path()).unwrap();

        // Replaced weights are refused by name.
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"weights v2").unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("replaced"),
            "{err}"
        );

        // A card with a valid checksum (anyone can compute one) but a network no medret
        // trains is refused by name before a layer is built.
        let mut huge = card();
        if let Method::CxrFusionHash(c) = &mut huge.method {
            c.backbone.growth_rate = 1 << 40;
        }
        huge.write(dir.path()).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("growth_rate"),
            "{err}"
        );
        let mut mismatched = card();
        mismatched.output = Output::Codes { bits: 32 };
        mismatched.write(dir.path()).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("32 bits but the network 16"), "{err}");
        let mut fundus = card();
        fundus.method = Method::FundusMetric(crate::fundus_metric::FundusMetricConfig::new(
            Arch::DenseNetTiny,
            crate::fundus_metric::Attention::Mirror,
        ));
        fundus.write(dir.path()).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("output is descriptors"), "{err}");

        // A learned binarisation whose shapes or values do not fit is refused by name,
        // before any code is made with it.
        let mut cfg = crate::fundus_metric::FundusMetricConfig::new(
            Arch::DenseNetTiny,
            crate::fundus_metric::Attention::Mirror,
        );
        let dim = cfg.descriptor_dim();
        cfg.binary_bits = Some(8);
        let learned =
            |rows: usize, value: f32| crate::fundus_metric::binarise::LearnedBinarisation {
                method: "itq".into(),
                mean: vec![0.0; dim],
                matrix: vec![value; rows * dim],
            };
        let with = |l| {
            let mut c = card();
            let mut cfg = cfg.clone();
            cfg.binary_learned = Some(l);
            c.method = Method::FundusMetric(cfg);
            c.output = Output::Descriptors { dim };
            c.class_names.clear();
            c
        };
        with(learned(7, 0.1)).write(dir.path()).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("binary_learned has a 7 x"),
            "{err}"
        );
        // JSON has no NaN: `train metric` checks the card before writing it.
        let err = with(learned(8, f32::NAN)).check().unwrap_err();
        assert!(err.contains("not finite"), "{err}");
        with(learned(8, 0.1)).write(dir.path()).unwrap();
        ModelCard::read(dir.path()).unwrap();

        // Not JSON at all.
        std::fs::write(&path, "{ nope").unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid model card"), "{err}");
    }
}
