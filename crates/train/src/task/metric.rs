//! The fundus method's training task: deep metric learning of DR-grade descriptors
//! ([`medret_models::fundus_metric`]) on the engine.
//!
//! - Batches are P x K ([`crate::sampler`]): the grades present (up to five) with
//!   `batch_size / P` images each, so every anchor has positives and negatives however
//!   skewed the archive.
//! - Losses (`--loss`): the fine triplet loss (circle form with relevance weights from the
//!   agreement of the two mirror halves), circle loss (the same without the weights) or
//!   batch-hard triplet; plus, with `cls_weight > 0`, cross-entropy of the grade head.
//! - Ungraded images are skipped and counted; a grade outside 0-4 stops with the image
//!   named.
//! - Validation: leave-one-out mAP@100 of the validation descriptors (same-grade
//!   relevance), with NDCG@10 (gain `max(0, 2 - |dg|)`).

use std::path::Path;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use medret_data::loader::BatchLoader;
use medret_data::transform::{Augment, Channels, Normalize, Pipeline, TransformConfig};
use medret_data::{Dataset, Record};
use medret_eval::evaluate::evaluate_cosine;
use medret_eval::relevance::{Relevance, Truth};
use medret_models::Arch;
use medret_models::fundus_metric::binarise::LearnedBinarisation;
use medret_models::fundus_metric::{Attention, FundusMetricConfig, FundusMetricNet};
use medret_models::model_card::{Method, ModelCard};
use medret_models::weights::{load_module, save_module};
use serde::{Deserialize, Serialize};

use crate::classify::split_train_val;
use crate::engine::{Metrics, Task};
use crate::error::{Result, TrainError};
use crate::fingerprint::dataset_fingerprint;
use crate::hash::InitWeights;
use crate::loss::fine_triplet::{agreement, fine_triplet_loss, relevance_weights};
use crate::loss::triplet::batch_hard_triplet_loss;
use crate::task::batch::{images_host, images_tensor, pixels_tensor, shard_pixels};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricLoss {
    FineTriplet,
    Circle,
    Triplet,
}

impl std::str::FromStr for MetricLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fine-triplet" => Ok(MetricLoss::FineTriplet),
            "circle" => Ok(MetricLoss::Circle),
            "triplet" => Ok(MetricLoss::Triplet),
            o => Err(format!(
                "loss `{o}`: expected fine-triplet, circle or triplet"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSettings {
    pub net: FundusMetricConfig,
    pub loss: MetricLoss,
    /// Circle/fine triplet margin `m` (0.25); batch-hard triplet margin.
    pub margin: f64,
    /// Circle/fine triplet scale `gamma`.
    pub gamma: f64,
    /// Weight of the grade cross-entropy (0: no classification head).
    pub cls_weight: f64,
    pub transform: TransformConfig,
    pub val_fraction: f64,
    pub init: Option<InitWeights>,
    /// The `--preset` the run was started with (`cpu`), if any; the values it set are
    /// the other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

impl MetricSettings {
    /// Defaults: mirror attention, fine triplet loss (m 0.25, gamma 32), no classification
    /// head, RGB with the fundus disc crop and ImageNet normalisation, horizontal flips
    /// (left and right eyes are mirror images), rotations up to 10 degrees, ±10% brightness
    /// and contrast.
    pub fn new(arch: Arch, size: usize, attention: Attention, loss: MetricLoss) -> Self {
        MetricSettings {
            net: FundusMetricConfig::new(arch, attention),
            loss,
            margin: 0.25,
            gamma: 32.0,
            cls_weight: 0.0,
            transform: TransformConfig {
                size,
                channels: Channels::Rgb,
                fundus_crop: true,
                augment: Augment {
                    hflip: 0.5,
                    rotation_deg: 10.0,
                    brightness: 0.1,
                    contrast: 0.1,
                    ..Default::default()
                },
                normalize: Some(Normalize::imagenet()),
            },
            val_fraction: 0.15,
            init: None,
            preset: None,
        }
    }

    pub fn eval_transform(&self) -> TransformConfig {
        TransformConfig {
            augment: Augment::default(),
            ..self.transform.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricBatch {
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
    pub grades: Vec<u8>,
}

pub struct MetricTask {
    pub settings: MetricSettings,
    pub train: Vec<Record>,
    pub val: Vec<Record>,
    /// Images skipped for having no grade.
    pub ungraded: usize,
    train_pipeline: Pipeline,
    eval_pipeline: Pipeline,
    fingerprint: String,
    seed: u64,
}

fn graded(records: Vec<Record>) -> Result<(Vec<Record>, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for r in records {
        match r.grade {
            Some(g) if g <= 4 => out.push(r),
            Some(g) => {
                return Err(TrainError::Data(format!(
                    "image {}: grade {g} is outside 0-4",
                    r.source.describe()
                )));
            }
            None => skipped += 1,
        }
    }
    Ok((out, skipped))
}

impl MetricTask {
    pub fn new(dataset: &Dataset, settings: MetricSettings, seed: u64) -> Result<Self> {
        let (train, val) = split_train_val(&dataset.records, settings.val_fraction, seed);
        let (train, a) = graded(train)?;
        let (val, b) = graded(val)?;
        let distinct = {
            let mut g: Vec<u8> = train.iter().filter_map(|r| r.grade).collect();
            g.sort_unstable();
            g.dedup();
            g.len()
        };
        if distinct < 2 {
            return Err(TrainError::Data(format!(
                "{}: the training images hold {distinct} grade(s); metric learning needs at least two (no negatives otherwise)",
                dataset.root.display()
            )));
        }
        let fingerprint = dataset_fingerprint(train.iter().chain(&val));
        Ok(MetricTask {
            train_pipeline: Pipeline::new(settings.transform.clone(), seed),
            eval_pipeline: Pipeline::new(settings.eval_transform(), seed),
            settings,
            train,
            val,
            ungraded: a + b,
            fingerprint,
            seed,
        })
    }

    /// The model card of a run of this task with `cfg`: float descriptors, grade names,
    /// the evaluation transform, every hyper-parameter.
    pub fn model_card(&self, cfg: &crate::TrainConfig) -> medret_models::model_card::ModelCard {
        use medret_models::model_card::{Method, ModelCard, Output};
        ModelCard::new(
            Method::FundusMetric(self.settings.net.clone()),
            Output::Descriptors {
                dim: self.settings.net.descriptor_dim(),
            },
            (0..crate::classify::GRADES)
                .map(|g| format!("grade{g}"))
                .collect(),
            self.settings.eval_transform(),
            serde_json::json!({"engine": cfg, "task": self.settings}),
            self.fingerprint.clone(),
            cfg.seed,
        )
    }

    fn grades_present(&self) -> usize {
        let mut g: Vec<u8> = self.train.iter().filter_map(|r| r.grade).collect();
        g.sort_unstable();
        g.dedup();
        g.len()
    }

    /// Descriptors (`n x D`, unit rows) in eval mode.
    pub fn describe(
        &self,
        model: &FundusMetricNet,
        records: &[Record],
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        let d = self.settings.net.descriptor_dim();
        let mut out = vec![Vec::new(); records.len()];
        for batch in BatchLoader::new(records, &self.eval_pipeline, 16, 0, false) {
            let batch = batch?;
            let x = images_tensor(&batch.images, device);
            let v = medret_models::host::read(model.forward(x, false).descriptor);
            for (j, &i) in batch.indices.iter().enumerate() {
                out[i] = v[j * d..(j + 1) * d].to_vec();
            }
        }
        Ok(out)
    }
}

fn truth(records: &[Record]) -> Vec<Truth> {
    records
        .iter()
        .map(|r| Truth::grade(r.grade.unwrap_or(0)))
        .collect()
}

/// Retrieval figures of `queries` against `database` by cosine, same-grade relevance,
/// graded NDCG, with the chance and always-majority-grade levels.
pub fn retrieval_report(
    task: &MetricTask,
    model: &FundusMetricNet,
    database: &[Record],
    queries: &[Record],
    device: &Device,
) -> Result<serde_json::Value> {
    let (database, _) = graded(database.to_vec())?;
    let (queries, skipped) = graded(queries.to_vec())?;
    if database.is_empty() || queries.is_empty() {
        return Err(TrainError::Data(
            "retrieval needs graded database and query images".into(),
        ));
    }
    let (fd, fq) = (
        task.describe(model, &database, device)?,
        task.describe(model, &queries, device)?,
    );
    let (dt, qt) = (truth(&database), truth(&queries));
    let rule = Relevance::SameGrade;
    let r = evaluate_cosine(&fq, &qt, &fd, &dt, rule, false);
    let map10 = map_at_10(&fq, &qt, &fd, &dt);
    let levels = medret_eval::baseline::levels(&qt, &dt, rule);
    Ok(serde_json::json!({
        "queries": queries.len(),
        "database": database.len(),
        "ungraded_skipped": skipped,
        "relevance": rule.describe(),
        "ndcg_gain": "max(0, 2 - |grade difference|)",
        "map@10": map10,
        "map@100": r.map.get("100"),
        "p@10": r.precision.get("10"),
        "ndcg@10": r.ndcg.get("10"),
        "ndcg@100": r.ndcg.get("100"),
        "chance_precision": levels.chance_precision,
        "majority_map@100": levels.majority_map_100,
        "majority_p@10": levels.majority_p_10,
        "report": r,
    }))
}

/// mAP@10 (DeepHash's convention, `R_k` in the denominator) by cosine.
fn map_at_10(q: &[Vec<f32>], qt: &[Truth], d: &[Vec<f32>], dt: &[Truth]) -> f64 {
    use medret_eval::codes::cosine;
    use medret_eval::metrics::average_precision;
    use medret_eval::ranking::rank_similarity;
    let total: f64 = q
        .iter()
        .zip(qt)
        .map(|(qv, t)| {
            let sims: Vec<f32> = d.iter().map(|x| cosine(qv, x)).collect();
            let rel: Vec<bool> = rank_similarity(&sims, None)
                .iter()
                .map(|r| Relevance::SameGrade.is_relevant(t, &dt[r.index]))
                .collect();
            average_precision(&rel, Some(10))
        })
        .sum();
    total / q.len().max(1) as f64
}

impl Task for MetricTask {
    type Model = FundusMetricNet;
    type Batch = MetricBatch;

    fn kind(&self) -> &'static str {
        "fundus_metric"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("settings serialise")
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn init_model(&self, device: &Device) -> FundusMetricNet {
        let mut net = self.settings.net.init(device);
        if let Some(init) = &self.settings.init {
            let cfg = DenseNetConfigExt::features(&self.settings.net);
            let mut b = cfg.init(device);
            medret_models::load_torchvision(&mut b, &cfg, &init.path)
                .expect("checked before training");
            net.backbone.features = b.features;
        }
        net
    }

    fn steps_per_epoch(&self, batch_size: usize) -> usize {
        (self.train.len() / batch_size.max(1)).max(1)
    }

    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<MetricBatch>> + Send + '_> {
        use rayon::prelude::*;
        let p = self.grades_present();
        let k = (batch_size / p).max(2);
        let grades: Vec<u8> = self.train.iter().map(|r| r.grade.unwrap_or(0)).collect();
        let plan = crate::sampler::pk_batches(&grades, p, k, self.seed, epoch as u64);
        let steps = self.steps_per_epoch(batch_size);
        Box::new(plan.into_iter().take(steps).map(move |idx| {
            let images = idx
                .par_iter()
                .enumerate()
                // The position in the epoch's plan keeps repeated images' augmentations apart.
                .map(|(pos, &i)| {
                    self.train_pipeline
                        .load(&self.train[i], epoch as u64, (i * 31 + pos) as u64)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let (pixels, shape) = images_host(&images);
            Ok(MetricBatch {
                pixels,
                shape,
                grades: idx.iter().map(|&i| grades[i]).collect(),
            })
        }))
    }

    fn batch_len(&self, batch: &MetricBatch) -> usize {
        batch.shape[0]
    }

    fn split(&self, batch: MetricBatch, parts: usize) -> Vec<MetricBatch> {
        crate::engine::shard_ranges(batch.shape[0], parts)
            .into_iter()
            .map(|(s, e)| {
                let (pixels, shape) = shard_pixels(&batch.pixels, batch.shape, s, e);
                MetricBatch {
                    pixels,
                    shape,
                    grades: batch.grades[s..e].to_vec(),
                }
            })
            .collect()
    }

    fn loss(&self, model: &FundusMetricNet, batch: &MetricBatch, device: &Device) -> Tensor<1> {
        let s = &self.settings;
        let x = pixels_tensor(&batch.pixels, batch.shape, device);
        let out = model.forward(x, false);
        let pair = match s.loss {
            MetricLoss::Triplet => batch_hard_triplet_loss(out.descriptor, &batch.grades, s.margin),
            MetricLoss::Circle => {
                fine_triplet_loss(out.descriptor, &batch.grades, None, s.margin, s.gamma)
            }
            MetricLoss::FineTriplet => {
                let w = out
                    .halves
                    .map(|(h, v)| relevance_weights(agreement(h, v), &batch.grades));
                fine_triplet_loss(out.descriptor, &batch.grades, w, s.margin, s.gamma)
            }
        };
        if pair.anchors == 0 {
            tracing::warn!("a batch with a single grade: no negatives, no metric loss for it");
        }
        let mut loss = pair.loss;
        if let (Some(logits), true) = (out.logits, s.cls_weight > 0.0) {
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(
                    batch.grades.iter().map(|&g| g as i64).collect::<Vec<_>>(),
                    [batch.grades.len()],
                ),
                device,
            );
            loss = loss
                + CrossEntropyLossConfig::new()
                    .init(device)
                    .forward(logits, y)
                    .mul_scalar(s.cls_weight);
        }
        loss
    }

    fn validate(&self, model: &FundusMetricNet, device: &Device) -> Result<Metrics> {
        let mut m = Metrics::new();
        if self.val.len() < 2 {
            return Ok(m);
        }
        let f = self.describe(model, &self.val, device)?;
        let t = truth(&self.val);
        let r = evaluate_cosine(&f, &t, &f, &t, Relevance::SameGrade, true);
        m.insert("map".into(), r.map.get("100").copied().unwrap_or(f64::NAN));
        if let Some(n) = r.ndcg.get("10") {
            m.insert("ndcg10".into(), *n);
        }
        Ok(m)
    }

    fn save_weights(&self, model: &FundusMetricNet, path: &Path) -> Result<()> {
        let cfg = DenseNetConfigExt::features(&self.settings.net);
        Ok(save_module(model, &[("backbone.", &cfg)], path)?)
    }

    fn load_weights(&self, mut model: FundusMetricNet, path: &Path) -> Result<FundusMetricNet> {
        let cfg = DenseNetConfigExt::features(&self.settings.net);
        load_module(&mut model, &[("backbone.", &cfg)], path)?;
        Ok(model)
    }
}

/// The backbone's feature-extractor configuration of a fundus model.
struct DenseNetConfigExt;

impl DenseNetConfigExt {
    fn features(cfg: &FundusMetricConfig) -> medret_models::DenseNetConfig {
        medret_models::DenseNetConfig {
            num_classes: None,
            ..cfg.backbone.clone()
        }
    }
}

/// Checks that `path` holds a backbone for `cfg`'s architecture, and returns its hash.
pub fn check_init(cfg: &FundusMetricConfig, path: &Path) -> Result<InitWeights> {
    let probe = DenseNetConfigExt::features(cfg).init(&Device::flex());
    medret_models::weights::check(&probe, path)?;
    let sha256 =
        medret_models::model_card::sha256_file(path).map_err(crate::error::io_err(path))?;
    Ok(InitWeights {
        path: path.to_path_buf(),
        sha256,
    })
}

/// ITQ iterations; the quantization error has flattened well before on every set tried.
pub const ITQ_ITERS: usize = 50;

/// How `learn_binarisation` left the model's codes.
pub enum Binarisation {
    /// ITQ fitted on `descriptors` training descriptors, with its quantization error at
    /// the random start and at the end.
    Itq {
        card: ModelCard,
        descriptors: usize,
        error_before: f64,
        error_after: f64,
    },
    /// ITQ needs at least `bits` images and dimensions: the card keeps the seeded random
    /// projection.
    Random {
        card: ModelCard,
        descriptors: usize,
        dim: usize,
    },
}

/// Fits ITQ on the training descriptors of the model just written to `dir` (a fundus
/// model with `binary_bits`) and rewrites its card with the learned binarisation; PCA has
/// no `bits` directions with fewer images or dimensions than bits, and then the card is
/// left with the random projection (SimHash may have more bits than dimensions).
pub fn learn_binarisation(
    card: ModelCard,
    train: &[Record],
    bits: usize,
    seed: u64,
    dir: &Path,
    device: &Device,
) -> Result<Binarisation> {
    let encoder = medret_models::encoder::Encoder::open(dir, device)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let descriptors: Vec<Vec<f32>> = encoder
        .encode_records_full(train, 32, &|_| {})
        .map_err(|e| TrainError::Data(e.to_string()))?
        .into_iter()
        .map(|e| e.raw)
        .collect();
    let n = descriptors.len();
    let Some(itq) = medret_eval::baseline::Itq::fit(&descriptors, bits, seed, ITQ_ITERS) else {
        return Ok(Binarisation::Random {
            card,
            descriptors: n,
            dim: descriptors.first().map_or(0, Vec::len),
        });
    };
    let (error_before, error_after) = (itq.errors[0], *itq.errors.last().unwrap_or(&itq.errors[0]));
    let mut card = card;
    let Method::FundusMetric(c) = &mut card.method else {
        return Err(TrainError::Config(format!(
            "{}: a learned binarisation is for descriptor models",
            dir.display()
        )));
    };
    c.binary_learned = Some(LearnedBinarisation {
        method: format!("itq on {n} training descriptors, {ITQ_ITERS} iterations, seed {seed}"),
        mean: itq.mean,
        matrix: itq.matrix,
    });
    card.check()
        .map_err(|e| TrainError::Config(format!("{}: {e}", dir.display())))?;
    let card = card
        .write(dir)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok(Binarisation::Itq {
        card,
        descriptors: n,
        error_before,
        error_after,
    })
}
