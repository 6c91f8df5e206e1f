//! The first task on the engine: image classification with a DenseNet.
//!
//! - Chest X-rays (labels): multi-label, one sigmoid per finding, binary cross-entropy;
//!   validation AUC is the mean of the per-finding ROC AUCs (the CheXNet convention).
//! - Fundus photographs (DR grades 0-4): five-way softmax, cross-entropy; validation
//!   reports accuracy, quadratic weighted kappa and, as `auc`, the ROC AUC of referable DR
//!   (grade >= 2) scored by `P(grade >= 2)`, the screening question an ophthalmologist asks.
//!
//! The validation set is carved out of the training split by patient (no patient on both
//! sides), so the test split stays untouched for the final figure.

use std::path::Path;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, softmax};
use medret_data::loader::BatchLoader;
use medret_data::transform::{Augment, Channels, Normalize, Pipeline, TransformConfig};
use medret_data::{Dataset, Record};
use medret_eval::classification::{macro_auc, quadratic_weighted_kappa, roc_auc};
use medret_models::{DenseNet, DenseNetConfig, load_torchvision, save_torchvision};
use serde::{Deserialize, Serialize};

use crate::engine::{Metrics, Task};
use crate::error::{Result, TrainError};
use crate::fingerprint::dataset_fingerprint;
use crate::task::batch::{images_host, images_tensor, pixels_tensor, shard_pixels};

/// Number of DR grades.
pub const GRADES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyMode {
    /// Multi-label findings, sigmoid + binary cross-entropy.
    MultiLabel,
    /// Ordinal DR grade 0-4, softmax + cross-entropy.
    Grade,
}

/// The task's settings, stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifySettings {
    /// `densenet121`, `tiny`, or `custom` (then `net` is authoritative).
    pub arch: String,
    pub net: DenseNetConfig,
    pub mode: ClassifyMode,
    /// Class names in output order (findings, or `grade0`..`grade4`).
    pub classes: Vec<String>,
    pub transform: TransformConfig,
    /// Fraction of training patients held out for validation.
    pub val_fraction: f64,
}

/// A mini-batch in host memory.
#[derive(Debug, Clone)]
pub struct ClassifyBatch {
    /// `[n, c, h, w]`, row-major.
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
    /// Multi-hot `n x classes` (multi-label) or the grade per sample.
    pub targets: Targets,
}

#[derive(Debug, Clone)]
pub enum Targets {
    MultiHot(Vec<f32>, usize),
    Grades(Vec<i64>),
}

/// Picks the mode from the data: graded datasets (EyePACS) are graded, the rest
/// multi-label over the dataset's label vocabulary.
pub fn mode_for(dataset: &Dataset) -> ClassifyMode {
    let labelled: Vec<&Record> = dataset
        .records
        .iter()
        .filter(|r| !r.is_unlabelled())
        .collect();
    if !labelled.is_empty() && labelled.iter().all(|r| r.grade.is_some()) {
        ClassifyMode::Grade
    } else {
        ClassifyMode::MultiLabel
    }
}

/// The architecture by name, with `classes` outputs.
pub fn arch_config(arch: &str, classes: usize) -> Result<DenseNetConfig> {
    let base = match arch {
        "densenet121" => DenseNetConfig::densenet121(),
        // `densenet-tiny` as `medret model summary` spells it.
        "tiny" | "densenet-tiny" => DenseNetConfig::tiny(),
        other => {
            return Err(TrainError::Config(format!(
                "unknown architecture `{other}`: expected densenet121 or tiny (densenet-tiny)"
            )));
        }
    };
    Ok(DenseNetConfig {
        num_classes: Some(classes),
        ..base
    })
}

impl ClassifySettings {
    /// Settings for `dataset`: mode and classes from the data, RGB input normalised as
    /// torchvision expects (so ImageNet or CheXNet weights can be brought in), light
    /// augmentation: horizontal flips for fundus photographs (left and right eyes are
    /// mirror images), small rotations for chest films (never flips: the heart is on the
    /// left).
    pub fn for_dataset(dataset: &Dataset, arch: &str, size: usize) -> Result<Self> {
        let mode = mode_for(dataset);
        let classes: Vec<String> = match mode {
            ClassifyMode::Grade => (0..GRADES).map(|g| format!("grade{g}")).collect(),
            // "No Finding" is the absence of the others, not a class (as in CheXNet).
            ClassifyMode::MultiLabel => dataset
                .label_names
                .iter()
                .filter(|n| n.as_str() != medret_data::labels::NO_FINDING)
                .cloned()
                .collect(),
        };
        if classes.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no labels to learn",
                dataset.root.display()
            )));
        }
        let augment = match mode {
            ClassifyMode::Grade => Augment {
                hflip: 0.5,
                rotation_deg: 10.0,
                brightness: 0.1,
                contrast: 0.1,
                ..Default::default()
            },
            ClassifyMode::MultiLabel => Augment {
                rotation_deg: 5.0,
                brightness: 0.1,
                contrast: 0.1,
                ..Default::default()
            },
        };
        Ok(ClassifySettings {
            arch: arch.to_string(),
            net: arch_config(arch, classes.len())?,
            mode,
            classes,
            transform: TransformConfig {
                size,
                channels: Channels::Rgb,
                fundus_crop: mode == ClassifyMode::Grade,
                augment,
                normalize: Some(Normalize::imagenet()),
            },
            val_fraction: 0.15,
        })
    }
}

pub use medret_data::record::split_train_val;

pub struct ClassifyTask {
    pub settings: ClassifySettings,
    pub train: Vec<Record>,
    pub val: Vec<Record>,
    train_pipeline: Pipeline,
    eval_pipeline: Pipeline,
    fingerprint: String,
}

impl ClassifyTask {
    pub fn new(dataset: &Dataset, settings: ClassifySettings, seed: u64) -> Result<Self> {
        let (train, val) = split_train_val(&dataset.records, settings.val_fraction, seed);
        if train.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no labelled training images",
                dataset.root.display()
            )));
        }
        if settings.mode == ClassifyMode::Grade
            && let Some(r) = train.iter().chain(&val).find(|r| r.grade.is_none())
        {
            return Err(TrainError::Data(format!(
                "{}: image {} has no grade",
                dataset.root.display(),
                r.id
            )));
        }
        let fingerprint = dataset_fingerprint(train.iter().chain(&val));
        let eval_cfg = TransformConfig {
            augment: Augment::default(),
            ..settings.transform.clone()
        };
        Ok(ClassifyTask {
            train_pipeline: Pipeline::new(settings.transform.clone(), seed),
            eval_pipeline: Pipeline::new(eval_cfg, seed),
            settings,
            train,
            val,
            fingerprint,
        })
    }

    fn targets(&self, records: &[&Record]) -> Targets {
        match self.settings.mode {
            ClassifyMode::Grade => Targets::Grades(
                records
                    .iter()
                    .map(|r| r.grade.unwrap_or(0) as i64)
                    .collect(),
            ),
            ClassifyMode::MultiLabel => {
                let classes = &self.settings.classes;
                let mut v = Vec::with_capacity(records.len() * classes.len());
                for r in records {
                    v.extend(classes.iter().map(|n| {
                        if r.labels.iter().any(|l| l == n) {
                            1.0
                        } else {
                            0.0
                        }
                    }));
                }
                Targets::MultiHot(v, classes.len())
            }
        }
    }

    /// Class probabilities (`n x classes`, sigmoid or softmax) for `records`, eval mode.
    pub fn predict(
        &self,
        model: &DenseNet,
        records: &[Record],
        device: &Device,
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        let k = self.settings.classes.len();
        let mut out = vec![0.0f32; records.len() * k];
        for batch in BatchLoader::new(records, &self.eval_pipeline, batch_size, 0, false) {
            let batch = batch?;
            let logits = model.forward(images_tensor(&batch.images, device));
            let probs = match self.settings.mode {
                ClassifyMode::MultiLabel => sigmoid(logits),
                ClassifyMode::Grade => softmax(logits, 1),
            };
            let p = medret_models::host::read(probs);
            for (j, &i) in batch.indices.iter().enumerate() {
                out[i * k..(i + 1) * k].copy_from_slice(&p[j * k..(j + 1) * k]);
            }
        }
        Ok(out)
    }

    /// Metrics of predicted probabilities against `records`' truth (see the module docs).
    pub fn score(&self, probs: &[f32], records: &[Record]) -> Metrics {
        let k = self.settings.classes.len();
        let refs: Vec<&Record> = records.iter().collect();
        let mut m = Metrics::new();
        let eps = 1e-7f64;
        match self.targets(&refs) {
            Targets::MultiHot(t, _) => {
                let bce = probs
                    .iter()
                    .zip(&t)
                    .map(|(&p, &y)| {
                        let p = (p as f64).clamp(eps, 1.0 - eps);
                        -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
                    })
                    .sum::<f64>()
                    / t.len().max(1) as f64;
                m.insert("loss".into(), bce);
                let (per, mean) = macro_auc(probs, &t, k);
                if let Some(a) = mean {
                    m.insert("auc".into(), a);
                }
                m.insert(
                    "auc_labels".into(),
                    per.iter().filter(|a| a.is_some()).count() as f64,
                );
            }
            Targets::Grades(g) => {
                let n = g.len().max(1) as f64;
                let ce = g
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| -(probs[i * k + y as usize] as f64).max(eps).ln())
                    .sum::<f64>()
                    / n;
                m.insert("loss".into(), ce);
                let pred: Vec<usize> = (0..g.len())
                    .map(|i| argmax(&probs[i * k..(i + 1) * k]))
                    .collect();
                let truth: Vec<usize> = g.iter().map(|&y| y as usize).collect();
                let acc = pred.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / n;
                m.insert("accuracy".into(), acc);
                if let Some(kappa) = quadratic_weighted_kappa(&truth, &pred, k) {
                    m.insert("kappa".into(), kappa);
                }
                let referable: Vec<f32> = (0..g.len())
                    .map(|i| probs[i * k + 2..(i + 1) * k].iter().sum())
                    .collect();
                let positive: Vec<bool> = truth.iter().map(|&y| y >= 2).collect();
                if let Some(a) = roc_auc(&referable, &positive) {
                    m.insert("auc".into(), a);
                }
            }
        }
        m
    }

    /// Per-class AUCs (findings, or one-vs-rest per grade) for the report.
    pub fn per_class_auc(&self, probs: &[f32], records: &[Record]) -> Vec<(String, Option<f64>)> {
        let k = self.settings.classes.len();
        let refs: Vec<&Record> = records.iter().collect();
        let t = match self.targets(&refs) {
            Targets::MultiHot(t, _) => t,
            Targets::Grades(g) => {
                let mut t = vec![0.0; g.len() * k];
                for (i, &y) in g.iter().enumerate() {
                    t[i * k + y as usize] = 1.0;
                }
                t
            }
        };
        let (per, _) = macro_auc(probs, &t, k);
        self.settings.classes.iter().cloned().zip(per).collect()
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// Binary cross-entropy on logits, mean over all entries, in the stable form
/// `max(z, 0) - z y + log(1 + exp(-|z|))`.
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let softplus_neg_abs = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    (relu(logits.clone()) - logits * targets + softplus_neg_abs).mean()
}

impl Task for ClassifyTask {
    type Model = DenseNet;
    type Batch = ClassifyBatch;

    fn kind(&self) -> &'static str {
        "classify"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("settings serialise")
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn init_model(&self, device: &Device) -> DenseNet {
        self.settings.net.init(device)
    }

    fn steps_per_epoch(&self, batch_size: usize) -> usize {
        self.train.len().div_ceil(batch_size.max(1))
    }

    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<ClassifyBatch>> + Send + '_> {
        let loader = BatchLoader::new(
            &self.train,
            &self.train_pipeline,
            batch_size,
            epoch as u64,
            true,
        );
        Box::new(loader.map(move |b| {
            let b = b?;
            let refs: Vec<&Record> = b.indices.iter().map(|&i| &self.train[i]).collect();
            let (pixels, shape) = images_host(&b.images);
            Ok(ClassifyBatch {
                pixels,
                shape,
                targets: self.targets(&refs),
            })
        }))
    }

    fn batch_len(&self, batch: &ClassifyBatch) -> usize {
        batch.shape[0]
    }

    fn split(&self, batch: ClassifyBatch, parts: usize) -> Vec<ClassifyBatch> {
        crate::engine::shard_ranges(batch.shape[0], parts)
            .into_iter()
            .map(|(s, e)| {
                let (pixels, shape) = shard_pixels(&batch.pixels, batch.shape, s, e);
                ClassifyBatch {
                    pixels,
                    shape,
                    targets: match &batch.targets {
                        Targets::MultiHot(t, k) => Targets::MultiHot(t[s * k..e * k].to_vec(), *k),
                        Targets::Grades(g) => Targets::Grades(g[s..e].to_vec()),
                    },
                }
            })
            .collect()
    }

    fn loss(&self, model: &DenseNet, batch: &ClassifyBatch, device: &Device) -> Tensor<1> {
        let logits = model.forward(pixels_tensor(&batch.pixels, batch.shape, device));
        match &batch.targets {
            Targets::MultiHot(t, k) => {
                let y = Tensor::<2>::from_data(
                    TensorData::new(t.clone(), [batch.shape[0], *k]),
                    device,
                );
                bce_with_logits(logits, y)
            }
            Targets::Grades(g) => {
                let y = Tensor::<1, Int>::from_data(TensorData::new(g.clone(), [g.len()]), device);
                CrossEntropyLossConfig::new()
                    .init(device)
                    .forward(logits, y)
            }
        }
    }

    fn validate(&self, model: &DenseNet, device: &Device) -> Result<Metrics> {
        if self.val.is_empty() {
            return Ok(Metrics::new());
        }
        let probs = self.predict(model, &self.val, device, 32)?;
        Ok(self.score(&probs, &self.val))
    }

    fn save_weights(&self, model: &DenseNet, path: &Path) -> Result<()> {
        Ok(save_torchvision(model, &self.settings.net, path)?)
    }

    fn load_weights(&self, mut model: DenseNet, path: &Path) -> Result<DenseNet> {
        load_torchvision(&mut model, &self.settings.net, path)?;
        Ok(model)
    }
}

/// Reads a trained classifier: `config.json` of a run folder (or checkpoint) and the
/// weights beside it.
pub fn load_trained(
    run_dir: &Path,
    weights: &Path,
    device: &Device,
) -> Result<(ClassifySettings, DenseNet)> {
    let run: crate::config::RunConfig = crate::checkpoint::read_json(&run_dir.join("config.json"))?;
    if run.task_kind != "classify" {
        return Err(TrainError::Checkpoint {
            path: run_dir.join("config.json"),
            message: format!("a `{}` run, not a classifier", run.task_kind),
        });
    }
    let settings: ClassifySettings =
        serde_json::from_value(run.task).map_err(|e| TrainError::Checkpoint {
            path: run_dir.join("config.json"),
            message: format!("classifier settings: {e}"),
        })?;
    let mut model = settings.net.init(device);
    load_torchvision(&mut model, &settings.net, weights)?;
    Ok((settings, model.valid()))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;
    use medret_data::Split;

    #[test]
    fn bce_matches_the_naive_formula() {
        let dev = Device::flex();
        let z = [2.0f32, -1.0, 0.0, 30.0, -30.0, 0.5];
        let y = [1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0];
        let logits = Tensor::<2>::from_data(TensorData::new(z.to_vec(), [2, 3]), &dev);
        let t = Tensor::<2>::from_data(TensorData::new(y.to_vec(), [2, 3]), &dev);
        let got = bce_with_logits(logits, t)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0] as f64;
        // Reference in f64: -(y ln s(z) + (1-y) ln(1-s(z))), with ln s(z) = -ln(1+e^-z).
        let want = z
            .iter()
            .zip(y)
            .map(|(&z, y)| {
                let z = z as f64;
                let ls = -(1.0 + (-z).exp()).ln();
                let l1s = -(1.0 + z.exp()).ln();
                -(y as f64 * ls + (1.0 - y as f64) * l1s)
            })
            .sum::<f64>()
            / 6.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn validation_is_patient_disjoint() {
        let mut records = Vec::new();
        for i in 0..200 {
            let mut r = Record::new(
                format!("img{i}"),
                medret_data::ImageSource::File("x.png".into()),
            );
            r.patient_id = format!("p{}", i / 3);
            r.labels = vec!["Mass".into()];
            r.split = Some(if i % 10 == 0 {
                Split::Test
            } else {
                Split::Train
            });
            records.push(r);
        }
        let (train, val) = split_train_val(&records, 0.2, 7);
        assert!(
            train
                .iter()
                .chain(&val)
                .all(|r| r.split != Some(Split::Test))
        );
        for v in &val {
            assert!(train.iter().all(|t| t.patient_id != v.patient_id));
        }
        let frac = val.len() as f64 / (train.len() + val.len()) as f64;
        assert!((0.08..0.35).contains(&frac), "validation fraction {frac}");
        // Deterministic under the seed, different under another.
        let (_, val2) = split_train_val(&records, 0.2, 7);
        assert_eq!(val.len(), val2.len());
        let (_, val3) = split_train_val(&records, 0.2, 8);
        let ids = |v: &[Record]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_ne!(ids(&val), ids(&val3));
    }
}
