//! The chest method's training task: interpretable fusion hashing
//! ([`medret_models::cxr_hash`]) on the engine.
//!
//! Loss: `L_cls(hash head) + alpha * L_q + beta * L_b` ([`crate::loss::hash`]), plus the
//! global network's own classification loss, which keeps its saliency map (and so the crop)
//! meaningful. Classification is BCE over the labels when images carry several (NIH
//! findings, "No Finding" a class of its own so that normal films get codes of their own),
//! softmax cross-entropy when every image has exactly one.
//!
//! Schedules:
//! - `staged` (AG-CNN): the first `global_epochs` train the global network alone; then the
//!   local network and the fusion head train on the frozen global network (its maps are
//!   detached, so no gradient reaches it);
//! - `joint`: everything from the first step.
//!
//! Validation (the best epoch): mAP@100 of the validation images' codes among themselves
//! (leave-one-out, shared-label relevance), with the head's loss and AUC beside it. The test
//! split is never looked at here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use medret_data::loader::BatchLoader;
use medret_data::transform::{Augment, Channels, Normalize, Pipeline, TransformConfig};
use medret_data::{Dataset, Record};
use medret_eval::classification::macro_auc;
use medret_eval::code_health::code_health;
use medret_eval::codes::pack_signs;
use medret_eval::evaluate::{HammingSet, evaluate_hamming, evaluate_hamming_refined};
use medret_eval::relevance::{Relevance, Truth};
use medret_models::cxr_hash::{FusionHashConfig, FusionHashNet, Pass};
use medret_models::host::Reads;
use medret_models::weights::{load_module, save_module};
use medret_models::{Arch, DenseNet, load_torchvision};
use serde::{Deserialize, Serialize};

use crate::classify::{bce_with_logits, split_train_val};
use crate::engine::{Metrics, Task};
use crate::error::{Result, TrainError};
use crate::fingerprint::dataset_fingerprint;
use crate::loss::hash::{
    bit_balance_loss, csq_centres, csq_loss, csq_targets, decorrelation_loss, dpsh_loss,
    quantization_loss,
};
use crate::task::batch::{images_host, images_tensor, pixels_tensor, shard_pixels};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelMode {
    /// Several labels per image: one sigmoid per class, BCE.
    MultiLabel,
    /// Exactly one label per image: softmax cross-entropy.
    SingleLabel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HashSchedule {
    Staged { global_epochs: usize },
    Joint,
}

/// Backbone weights the networks start from (C2L or other torchvision-named weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitWeights {
    pub path: PathBuf,
    pub sha256: String,
}

/// The task's settings, stored in every checkpoint and in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashSettings {
    pub net: FusionHashConfig,
    pub classes: Vec<String>,
    pub mode: LabelMode,
    /// Training transform (the card stores the evaluation one: the same without
    /// augmentation).
    pub transform: TransformConfig,
    pub val_fraction: f64,
    /// Weight of the quantization loss (0 turns it off).
    pub alpha: f64,
    /// Weight of the bit-balance loss (0 turns it off).
    pub beta: f64,
    /// Weight of the bit-decorrelation loss (0 turns it off; models trained before it
    /// existed read as 0).
    #[serde(default)]
    pub decorrelation: f64,
    /// The `--preset` the run was started with (`cpu`), if any; the values it set are
    /// the other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub schedule: HashSchedule,
    pub init: Option<InitWeights>,
    /// Fraction of the labelled training patients kept (seeded), to study scarce labels.
    #[serde(default = "one")]
    pub label_fraction: f64,
    /// What trains the hash head beside quantization and bit balance.
    #[serde(default)]
    pub loss: HashLoss,
    /// How an epoch draws its images (`--sampling`; models trained before it existed
    /// read as uniform).
    #[serde(default)]
    pub sampling: crate::sampler::Sampling,
}

/// The loss on the hash head (`--loss`): the paper's classifier after the hash layer, or
/// one of two deep-hashing losses on the codes themselves, same head, same trainer (see
/// [`crate::loss::hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashLoss {
    /// Classification through the head's classifier (Guan et al.).
    #[default]
    Classify,
    /// DPSH pairwise likelihood on the codes.
    Dpsh,
    /// CSQ: codes pulled to their classes' hash centres.
    Csq,
}

impl std::str::FromStr for HashLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "classify" => Ok(HashLoss::Classify),
            "dpsh" => Ok(HashLoss::Dpsh),
            "csq" => Ok(HashLoss::Csq),
            o => Err(format!("hash loss `{o}`: expected classify, dpsh or csq")),
        }
    }
}

/// The validation metric `train hash` selects by (see `validate`).
pub const HEALTHY_MAP: &str = "healthy_map";

fn one() -> f64 {
    1.0
}

/// The bit-decorrelation weight of new models (docs/cxr-method.md, "Codes that use their
/// bits"): kept for the codes' health (it doubles the distinct codes on both real chest
/// sets); on their validation parts its effect on mAP was mixed.
pub const DEFAULT_DECORRELATION: f64 = 1.0;

impl HashSettings {
    /// Defaults for `dataset`: classes from its labels, RGB input with ImageNet
    /// normalisation (so torchvision-named weights apply; grey films are repeated to three
    /// channels), small rotations and intensity jitter (never flips: the heart is on the
    /// left), alpha 0.1, beta 0.1, the joint schedule.
    pub fn for_dataset(dataset: &Dataset, arch: Arch, size: usize, bits: usize) -> Result<Self> {
        let labelled: Vec<&Record> = dataset
            .records
            .iter()
            .filter(|r| !r.labels.is_empty())
            .collect();
        if labelled.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no labelled images (hashing learns from labels; use `medret pretrain c2l` for unlabelled images)",
                dataset.root.display()
            )));
        }
        let classes = dataset.label_names.clone();
        let mode = if labelled.iter().all(|r| r.labels.len() == 1) {
            LabelMode::SingleLabel
        } else {
            LabelMode::MultiLabel
        };
        let net = FusionHashConfig::new(arch, 3, classes.len(), bits);
        net.validate().map_err(TrainError::Config)?;
        Ok(HashSettings {
            net,
            classes,
            mode,
            transform: TransformConfig {
                size,
                channels: Channels::Rgb,
                fundus_crop: false,
                augment: Augment {
                    rotation_deg: 5.0,
                    brightness: 0.1,
                    contrast: 0.1,
                    ..Default::default()
                },
                normalize: Some(Normalize::imagenet()),
            },
            val_fraction: 0.15,
            alpha: 0.1,
            beta: 0.1,
            decorrelation: DEFAULT_DECORRELATION,
            // Chosen on the validation split of chest phantoms (docs/cxr-method.md): at CPU
            // budgets the staged schedule freezes a global network that has not yet learned.
            schedule: HashSchedule::Joint,
            init: None,
            preset: None,
            label_fraction: 1.0,
            loss: HashLoss::Classify,
            sampling: Default::default(),
        })
    }

    /// The preprocessing a query goes through: the training transform without augmentation.
    pub fn eval_transform(&self) -> TransformConfig {
        TransformConfig {
            augment: Augment::default(),
            ..self.transform.clone()
        }
    }

    fn global_stage(&self, epoch: usize) -> bool {
        matches!(self.schedule, HashSchedule::Staged { global_epochs } if epoch < global_epochs)
    }
}

/// A mini-batch in host memory.
#[derive(Debug, Clone)]
pub struct HashBatch {
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
    /// Multi-hot `n x classes`, or class indices.
    pub multi_hot: Vec<f32>,
    pub index: Vec<i64>,
    pub epoch: usize,
}

pub struct HashTask {
    pub settings: HashSettings,
    pub train: Vec<Record>,
    pub val: Vec<Record>,
    train_pipeline: Pipeline,
    eval_pipeline: Pipeline,
    fingerprint: String,
    epoch: AtomicUsize,
    /// Each training image's class for the sampler: its rarest label.
    keys: Vec<usize>,
}

/// Each record's rarest label (by count among `records`), as an index into `classes`;
/// an image without a known label gets `classes.len()`.
fn rarest_labels(records: &[Record], classes: &[String]) -> Vec<usize> {
    let idx = |r: &Record| -> Vec<usize> {
        r.labels
            .iter()
            .filter_map(|l| classes.iter().position(|c| c == l))
            .collect()
    };
    let mut count = vec![0usize; classes.len() + 1];
    for r in records {
        for i in idx(r) {
            count[i] += 1;
        }
    }
    records
        .iter()
        .map(|r| {
            idx(r)
                .into_iter()
                .min_by_key(|&i| (count[i], i))
                .unwrap_or(classes.len())
        })
        .collect()
}

/// Names of the two DenseNets inside the fusion network, for the weights' key names.
fn nets(cfg: &FusionHashConfig) -> [(String, medret_models::DenseNetConfig); 2] {
    [
        ("global.".into(), cfg.global_config()),
        ("local.".into(), cfg.local_config()),
    ]
}

pub fn save_fusion(model: &FusionHashNet, cfg: &FusionHashConfig, path: &Path) -> Result<()> {
    let n = nets(cfg);
    let refs: Vec<(&str, &medret_models::DenseNetConfig)> =
        n.iter().map(|(p, c)| (p.as_str(), c)).collect();
    Ok(save_module(model, &refs, path)?)
}

pub fn load_fusion(
    mut model: FusionHashNet,
    cfg: &FusionHashConfig,
    path: &Path,
) -> Result<FusionHashNet> {
    let n = nets(cfg);
    let refs: Vec<(&str, &medret_models::DenseNetConfig)> =
        n.iter().map(|(p, c)| (p.as_str(), c)).collect();
    load_module(&mut model, &refs, path)?;
    Ok(model)
}

/// Checks that `path` holds a backbone (`features.*`, torchvision names) for `cfg`'s
/// architecture, and returns its hash.
pub fn check_init(cfg: &FusionHashConfig, path: &Path) -> Result<InitWeights> {
    let probe = cfg.local_config().init(&Device::flex());
    medret_models::weights::check(&probe, path)?;
    let sha256 =
        medret_models::model_card::sha256_file(path).map_err(crate::error::io_err(path))?;
    Ok(InitWeights {
        path: path.to_path_buf(),
        sha256,
    })
}

fn load_backbone(cfg: &FusionHashConfig, path: &Path, device: &Device) -> DenseNet {
    let local = cfg.local_config();
    let mut net = local.init(device);
    load_torchvision(&mut net, &local, path).expect("checked by check_init");
    net
}

impl HashTask {
    pub fn new(dataset: &Dataset, settings: HashSettings, seed: u64) -> Result<Self> {
        settings.net.validate().map_err(TrainError::Config)?;
        let (train, val) = split_train_val(&dataset.records, settings.val_fraction, seed);
        let keep = |v: Vec<Record>| -> Vec<Record> {
            v.into_iter().filter(|r| !r.labels.is_empty()).collect()
        };
        let (mut train, val) = (keep(train), keep(val));
        if settings.label_fraction < 1.0 {
            let (kept, _) = split_train_val(&train, 1.0 - settings.label_fraction, seed ^ 0x1abe1);
            train = kept;
        }
        if train.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no labelled training images",
                dataset.root.display()
            )));
        }
        let fingerprint = dataset_fingerprint(train.iter().chain(&val));
        let keys = rarest_labels(&train, &settings.classes);
        Ok(HashTask {
            keys,
            train_pipeline: Pipeline::new(settings.transform.clone(), seed),
            eval_pipeline: Pipeline::new(settings.eval_transform(), seed),
            settings,
            train,
            val,
            fingerprint,
            epoch: AtomicUsize::new(0),
        })
    }

    /// The model card of a run of this task with `cfg`: codes of `bits` bits, the class
    /// names, the evaluation transform, every hyper-parameter.
    pub fn model_card(&self, cfg: &crate::TrainConfig) -> medret_models::model_card::ModelCard {
        use medret_models::model_card::{Method, ModelCard, Output};
        ModelCard::new(
            Method::CxrFusionHash(self.settings.net.clone()),
            Output::Codes {
                bits: self.settings.net.bits,
            },
            self.settings.classes.clone(),
            self.settings.eval_transform(),
            serde_json::json!({"engine": cfg, "task": self.settings}),
            self.fingerprint.clone(),
            cfg.seed,
        )
    }

    /// Up to 1024 training images, evenly spaced: what the epoch's code health is
    /// judged on (see `validate`). The share of distinct codes falls as the set grows,
    /// so a sample much smaller than the database flatters it (201 of `chest_xray`'s
    /// 402 training images: 52% distinct where all 402 had 41%); 1024 covers the
    /// databases a CPU run trains on.
    fn health_probe(&self) -> Vec<Record> {
        let step = self.train.len().div_ceil(1024).max(1);
        self.train.iter().step_by(step).cloned().collect()
    }

    fn truth(&self, r: &Record) -> Truth {
        Truth::labels(
            r.labels
                .iter()
                .filter_map(|l| self.settings.classes.iter().position(|c| c == l))
                .map(|i| i as u32)
                .collect(),
        )
    }

    fn targets(&self, records: &[&Record]) -> (Vec<f32>, Vec<i64>) {
        let k = self.settings.classes.len();
        let mut hot = vec![0.0f32; records.len() * k];
        let mut index = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let t = self.truth(r);
            for &c in &t.labels {
                hot[i * k + c as usize] = 1.0;
            }
            index.push(t.labels.first().copied().unwrap_or(0) as i64);
        }
        (hot, index)
    }

    fn cls_loss(&self, logits: Tensor<2>, batch: &HashBatch, device: &Device) -> Tensor<1> {
        let n = batch.shape[0];
        match self.settings.mode {
            LabelMode::MultiLabel => {
                let y = Tensor::<2>::from_data(
                    TensorData::new(batch.multi_hot.clone(), [n, self.settings.classes.len()]),
                    device,
                );
                bce_with_logits(logits, y)
            }
            LabelMode::SingleLabel => {
                let y =
                    Tensor::<1, Int>::from_data(TensorData::new(batch.index.clone(), [n]), device);
                CrossEntropyLossConfig::new()
                    .init(device)
                    .forward(logits, y)
            }
        }
    }

    /// Relaxed codes `n x K`, head logits `n x classes` and global logits, eval mode.
    pub fn encode(
        &self,
        model: &FusionHashNet,
        records: &[Record],
        device: &Device,
        batch_size: usize,
        global_only: bool,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (k, c) = (self.settings.net.bits, self.settings.classes.len());
        let (mut h, mut logits, mut global) = (
            vec![0.0f32; records.len() * k],
            vec![0.0f32; records.len() * c],
            vec![0.0f32; records.len() * c],
        );
        for batch in BatchLoader::new(records, &self.eval_pipeline, batch_size, 0, false) {
            let batch = batch?;
            let x = images_tensor(&batch.images, device);
            let pass = if global_only {
                Pass::GlobalOnly
            } else {
                Pass::Full {
                    detach_global: false,
                }
            };
            let out = model.forward(&self.settings.net, x, pass);
            // One read for the batch's outputs.
            let mut reads = Reads::new().with(out.global_logits);
            if let (Some(h), Some(l)) = (out.h, out.logits) {
                reads = reads.with(h).with(l);
            }
            let mut v = reads.f32().into_iter();
            let g = v.next().expect("global scores read");
            let (hv, lv) = (v.next(), v.next());
            for (j, &i) in batch.indices.iter().enumerate() {
                global[i * c..(i + 1) * c].copy_from_slice(&g[j * c..(j + 1) * c]);
                if let (Some(hv), Some(lv)) = (&hv, &lv) {
                    h[i * k..(i + 1) * k].copy_from_slice(&hv[j * k..(j + 1) * k]);
                    logits[i * c..(i + 1) * c].copy_from_slice(&lv[j * c..(j + 1) * c]);
                }
            }
        }
        Ok((h, logits, global))
    }

    /// Leave-one-out mAP@100 of `records`' codes among themselves (shared-label
    /// relevance), ranked the way the archive ranks (Hamming, ties by the relaxed codes),
    /// and by Hamming distance alone (ties by index).
    pub fn self_map(&self, h: &[f32], records: &[Record]) -> (f64, f64) {
        let k = self.settings.net.bits;
        let codes: Vec<Vec<u64>> = h.chunks(k).map(pack_signs).collect();
        let raw: Vec<Vec<f32>> = h.chunks(k).map(<[f32]>::to_vec).collect();
        let truth: Vec<Truth> = records.iter().map(|r| self.truth(r)).collect();
        let set = HammingSet {
            codes: &codes,
            truth: &truth,
            bits: k,
        };
        let at100 = |r: medret_eval::Report| r.map.get("100").copied().unwrap_or(f64::NAN);
        (
            at100(evaluate_hamming_refined(
                &set,
                &raw,
                &set,
                &raw,
                Relevance::SharesLabel,
                true,
            )),
            at100(evaluate_hamming(&set, &set, Relevance::SharesLabel, true)),
        )
    }

    fn auc(&self, logits: &[f32], records: &[Record]) -> Option<f64> {
        let refs: Vec<&Record> = records.iter().collect();
        let (hot, _) = self.targets(&refs);
        macro_auc(logits, &hot, self.settings.classes.len()).1
    }
}

impl Task for HashTask {
    type Model = FusionHashNet;
    type Batch = HashBatch;

    fn kind(&self) -> &'static str {
        "cxr_hash"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("settings serialise")
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn init_model(&self, device: &Device) -> FusionHashNet {
        let cfg = &self.settings.net;
        let mut net = cfg.init(device);
        if let Some(init) = &self.settings.init {
            net.global.features = load_backbone(cfg, &init.path, device).features;
            if let Some(local) = &mut net.local {
                local.features = load_backbone(cfg, &init.path, device).features;
            }
        }
        net
    }

    fn steps_per_epoch(&self, batch_size: usize) -> usize {
        self.train.len().div_ceil(batch_size.max(1))
    }

    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<HashBatch>> + Send + '_> {
        self.epoch.store(epoch, Ordering::SeqCst);
        let loader = match self.settings.sampling {
            crate::sampler::Sampling::Uniform => BatchLoader::new(
                &self.train,
                &self.train_pipeline,
                batch_size,
                epoch as u64,
                true,
            ),
            s => BatchLoader::with_order(
                &self.train,
                &self.train_pipeline,
                batch_size,
                epoch as u64,
                crate::sampler::epoch_order(&self.keys, s, self.train_pipeline.seed, epoch as u64),
            ),
        };
        Box::new(loader.map(move |b| {
            let b = b?;
            let refs: Vec<&Record> = b.indices.iter().map(|&i| &self.train[i]).collect();
            let (multi_hot, index) = self.targets(&refs);
            let (pixels, shape) = images_host(&b.images);
            Ok(HashBatch {
                pixels,
                shape,
                multi_hot,
                index,
                epoch,
            })
        }))
    }

    fn batch_len(&self, batch: &HashBatch) -> usize {
        batch.shape[0]
    }

    fn split(&self, batch: HashBatch, parts: usize) -> Vec<HashBatch> {
        let k = self.settings.classes.len();
        crate::engine::shard_ranges(batch.shape[0], parts)
            .into_iter()
            .map(|(s, e)| {
                let (pixels, shape) = shard_pixels(&batch.pixels, batch.shape, s, e);
                HashBatch {
                    pixels,
                    shape,
                    multi_hot: batch.multi_hot[s * k..e * k].to_vec(),
                    index: batch.index[s..e].to_vec(),
                    epoch: batch.epoch,
                }
            })
            .collect()
    }

    fn loss(&self, model: &FusionHashNet, batch: &HashBatch, device: &Device) -> Tensor<1> {
        let x = pixels_tensor(&batch.pixels, batch.shape, device);
        let s = &self.settings;
        if s.global_stage(batch.epoch) {
            let out = model.forward(&s.net, x, Pass::GlobalOnly);
            return self.cls_loss(out.global_logits, batch, device);
        }
        let staged = matches!(s.schedule, HashSchedule::Staged { .. });
        let out = model.forward(
            &s.net,
            x,
            Pass::Full {
                detach_global: staged,
            },
        );
        let h = out.h.expect("codes");
        let n = batch.shape[0];
        let k = s.classes.len();
        let mut loss = match s.loss {
            HashLoss::Classify => self.cls_loss(out.logits.expect("logits"), batch, device),
            HashLoss::Dpsh => {
                let y = Tensor::<2>::from_data(
                    TensorData::new(batch.multi_hot.clone(), [n, k]),
                    device,
                );
                let sim = y.clone().matmul(y.transpose()).clamp(0.0, 1.0);
                dpsh_loss(h.clone(), sim)
            }
            HashLoss::Csq => {
                let centres = csq_centres(k, s.net.bits, 0);
                let t = csq_targets(&batch.multi_hot, k, &centres);
                let t = Tensor::<2>::from_data(TensorData::new(t, [n, s.net.bits]), device);
                csq_loss(h.clone(), t)
            }
        };
        if s.alpha > 0.0 {
            loss = loss + quantization_loss(h.clone()).mul_scalar(s.alpha);
        }
        if s.beta > 0.0 {
            loss = loss + bit_balance_loss(h.clone()).mul_scalar(s.beta);
        }
        if s.decorrelation > 0.0 {
            loss = loss + decorrelation_loss(h).mul_scalar(s.decorrelation);
        }
        if !staged {
            loss = loss + self.cls_loss(out.global_logits, batch, device);
        }
        if out.fallbacks > 0 {
            tracing::debug!(
                fallbacks = out.fallbacks,
                "empty saliency maps cropped to the whole image"
            );
        }
        loss
    }

    fn validate(&self, model: &FusionHashNet, device: &Device) -> Result<Metrics> {
        let mut m = Metrics::new();
        if self.val.is_empty() {
            return Ok(m);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let global_only = self.settings.global_stage(epoch);
        let (h, logits, global) = self.encode(model, &self.val, device, 32, global_only)?;
        if let Some(a) = self.auc(&global, &self.val) {
            m.insert("global_auc".into(), a);
        }
        if global_only {
            // No codes yet: the best epoch is chosen among the later stage's.
            m.insert("map".into(), f64::NAN);
            m.insert(HEALTHY_MAP.into(), f64::NAN);
            return Ok(m);
        }
        let (refined, hamming_only) = self.self_map(&h, &self.val);
        m.insert("map".into(), refined);
        m.insert("map_hamming_only".into(), hamming_only);
        let k = self.settings.net.bits;
        let codes: Vec<Vec<u64>> = h.chunks(k).map(pack_signs).collect();
        let health = code_health(&codes, k);
        // A share of the validation images, so that runs of any size compare.
        m.insert(
            "distinct_codes".into(),
            health.distinct as f64 / health.codes.max(1) as f64,
        );
        m.insert("skewed_bits".into(), health.skewed_bits as f64);
        // What `train hash` selects the epoch by: the mAP, with every epoch whose
        // codes have collapsed (fewer than half distinct, or a constant bit) ranked
        // below every healthy one. On 50-60 validation images the
        // mAP of neighbouring epochs differs by less than its noise, and the best one
        // was often an early epoch with a few dozen near-constant bits.
        // The database is the training split itself, whose codes collapse first (the
        // network fits them): health is judged on the training images (a fixed sample
        // of a large split), by the archive's rule: half distinct, no constant bit.
        let probe = self.health_probe();
        let (hp, _, _) = self.encode(model, &probe, device, 32, false)?;
        let probe_codes: Vec<Vec<u64>> = hp.chunks(k).map(pack_signs).collect();
        let train_health = code_health(&probe_codes, k);
        m.insert(
            "train_distinct_codes".into(),
            train_health.distinct as f64 / train_health.codes.max(1) as f64,
        );
        m.insert(
            "train_constant_bits".into(),
            train_health.constant_bits as f64,
        );
        let healthy =
            2 * train_health.distinct >= train_health.codes && train_health.constant_bits == 0;
        m.insert(
            HEALTHY_MAP.into(),
            if healthy { refined } else { refined - 1.0 },
        );
        m.insert("mean_hamming".into(), health.mean_pairwise_hamming);
        m.insert("bit_entropy".into(), health.mean_bit_entropy);
        if let Some(a) = self.auc(&logits, &self.val) {
            m.insert("auc".into(), a);
        }
        let hq: f64 = h
            .iter()
            .map(|v| ((v.abs() - 1.0) as f64).powi(2))
            .sum::<f64>()
            / h.len().max(1) as f64;
        m.insert("quantization".into(), hq);
        Ok(m)
    }

    fn save_weights(&self, model: &FusionHashNet, path: &Path) -> Result<()> {
        save_fusion(model, &self.settings.net, path)
    }

    fn load_weights(&self, model: FusionHashNet, path: &Path) -> Result<FusionHashNet> {
        load_fusion(model, &self.settings.net, path)
    }
}

/// Retrieval figures of a trained model: `queries` (the test split) against `database`
/// (the training split), shared-label relevance, with the chance and always-majority
/// levels beside them.
pub fn retrieval_report(
    task: &HashTask,
    model: &FusionHashNet,
    database: &[Record],
    queries: &[Record],
    device: &Device,
) -> Result<serde_json::Value> {
    if database.is_empty() || queries.is_empty() {
        return Err(TrainError::Data(format!(
            "retrieval needs database and query images: {} and {}",
            database.len(),
            queries.len()
        )));
    }
    let k = task.settings.net.bits;
    let (hd, _, _) = task.encode(model, database, device, 32, false)?;
    let (hq, logits, _) = task.encode(model, queries, device, 32, false)?;
    let dc: Vec<Vec<u64>> = hd.chunks(k).map(pack_signs).collect();
    let qc: Vec<Vec<u64>> = hq.chunks(k).map(pack_signs).collect();
    let dt: Vec<Truth> = database.iter().map(|r| task.truth(r)).collect();
    let qt: Vec<Truth> = queries.iter().map(|r| task.truth(r)).collect();
    let rule = Relevance::SharesLabel;
    let report = evaluate_hamming(
        &HammingSet {
            codes: &qc,
            truth: &qt,
            bits: k,
        },
        &HammingSet {
            codes: &dc,
            truth: &dt,
            bits: k,
        },
        rule,
        false,
    );
    let hamming_only = report;
    let raw = |h: &[f32]| -> Vec<Vec<f32>> { h.chunks(k).map(<[f32]>::to_vec).collect() };
    let report = evaluate_hamming_refined(
        &HammingSet {
            codes: &qc,
            truth: &qt,
            bits: k,
        },
        &raw(&hq),
        &HammingSet {
            codes: &dc,
            truth: &dt,
            bits: k,
        },
        &raw(&hd),
        rule,
        false,
    );
    let health = code_health(&dc, k);
    tracing::info!(database = %health.summary(), "code health");
    let levels = medret_eval::baseline::levels(&qt, &dt, rule);
    let strict = evaluate_hamming(
        &HammingSet {
            codes: &qc,
            truth: &qt,
            bits: k,
        },
        &HammingSet {
            codes: &dc,
            truth: &dt,
            bits: k,
        },
        Relevance::SameLabelSet,
        false,
    );
    Ok(serde_json::json!({
        "queries": queries.len(),
        "database": database.len(),
        "bits": k,
        "relevance": rule.describe(),
        "ranking": "Hamming distance, ties by the relaxed codes' squared Euclidean distance",
        "map@100": report.map.get("100"),
        "map@all": report.map.get("all"),
        "map@100_hamming_only": hamming_only.map.get("100"),
        "code_health": {
            "database": health,
            "queries": code_health(&qc, k),
        },
        "p@10": report.precision.get("10"),
        "p@h<=2": report.precision_hamming_radius_2,
        "chance_precision": levels.chance_precision,
        "majority_map@100": levels.majority_map_100,
        "majority_p@10": levels.majority_p_10,
        "same_label_set_map@100": strict.map.get("100"),
        "classification_auc": task.auc(&logits, queries),
        "report": report,
    }))
}

/// mAP@100, P@10 and P@H<=2 of codes, shared-label relevance.
fn hamming_figures(
    bits: usize,
    qc: &[Vec<u64>],
    qt: &[Truth],
    dc: &[Vec<u64>],
    dt: &[Truth],
) -> serde_json::Value {
    let r = evaluate_hamming(
        &HammingSet {
            codes: qc,
            truth: qt,
            bits,
        },
        &HammingSet {
            codes: dc,
            truth: dt,
            bits,
        },
        Relevance::SharesLabel,
        false,
    );
    serde_json::json!({
        "map@100": r.map.get("100"),
        "p@10": r.precision.get("10"),
        "p@h<=2": r.precision_hamming_radius_2,
    })
}

/// The model-free baselines at the same code length, same splits: LSH over raw pixels
/// (32 x 32 grey) and LSH over the pooled features of a randomly initialised backbone of
/// the same architecture (seeded).
pub fn baseline_report(
    task: &HashTask,
    database: &[Record],
    queries: &[Record],
    device: &Device,
    seed: u64,
) -> Result<serde_json::Value> {
    let bits = task.settings.net.bits;
    let dt: Vec<Truth> = database.iter().map(|r| task.truth(r)).collect();
    let qt: Vec<Truth> = queries.iter().map(|r| task.truth(r)).collect();
    let load = |records: &[Record]| medret_data::transform::grey_thumbnails(records, 32, seed);
    let (pd, pq) = (load(database)?, load(queries)?);
    let lsh =
        |fit: &[Vec<f32>], v: &[Vec<f32>]| medret_eval::baseline::lsh_codes(fit, v, bits, seed);
    let raw = hamming_figures(bits, &lsh(&pd, &pq), &qt, &lsh(&pd, &pd), &dt);

    let cfg = task.settings.net.local_config();
    device.seed(seed);
    let random = cfg.init(device);
    let feats = |records: &[Record]| {
        medret_models::features::pooled_features(
            &random,
            records,
            &task.eval_pipeline,
            32,
            device,
            &|| {},
        )
    };
    let (fd, fq) = (feats(database)?, feats(queries)?);
    let rand_feat = hamming_figures(bits, &lsh(&fd, &fq), &qt, &lsh(&fd, &fd), &dt);
    Ok(serde_json::json!({
        "raw_pixel_lsh": raw,
        "random_init_feature_lsh": rand_feat,
        "bits": bits,
        "seed": seed,
    }))
}
