//! C2L self-supervised pretraining (Zhou et al., MICCAI 2020) on the engine. The encoders
//! and the queue are in [`medret_models::c2l`]; this is the task: two views per image, the
//! mixup terms, the three InfoNCE terms, the momentum update and the FIFO queue.
//!
//! Per step, with `x1`, `x2` two augmented views of the batch, `lambda ~ Beta(1, 1)`,
//! `lambda = max(lambda, 1 - lambda)` and one permutation `p` of the batch:
//! - `q1 = q(x1)`, `k2 = k(x2)` (key features `f2` before normalisation);
//! - `x1m = lambda x1 + (1 - lambda) x1[p]`, `x2m` the same; `q1m = q(x1m)`, `k2m = k(x2m)`;
//! - the mixed keys `km = normalise(lambda f2 + (1 - lambda) f2[p])`;
//! - `L = (InfoNCE(q1, k2) + InfoNCE(q1m, k2m) + InfoNCE(q1m, km)) / 3`.
//!
//! The negatives of all three terms are the queue as it was at the start of the step; after
//! the optimiser step, the key encoder moves by EMA and the three terms' keys are enqueued
//! (in the authors' code each term enqueues right after its loss; ours keeps one queue state
//! per step so data-parallel shards see the same negatives).
//!
//! Images of the test split are left out: pretraining sees no image that evaluation will
//! query with. Labels are ignored; unlabelled images are welcome.

use std::path::Path;
use std::sync::Mutex;

use burn::prelude::*;
use medret_data::phantom::draw::mix_seed;
use medret_data::transform::{Augment, Channels, Normalize, Pipeline, TransformConfig};
use medret_data::{Dataset, Record, Split};
use medret_models::c2l::{C2lConfig, C2lNet, l2_normalise};
use medret_models::weights::{load_module, save_module};
use medret_models::{Arch, DenseNetConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::{Metrics, Task};
use crate::error::{Result, TrainError};
use crate::fingerprint::dataset_fingerprint;
use crate::loss::info_nce::info_nce;
use crate::task::batch::images_host;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct C2lSettings {
    pub net: C2lConfig,
    pub temperature: f64,
    /// EMA momentum of the key encoder.
    pub momentum: f64,
    pub mixup: bool,
    /// Groups the key batch is normalised in (the one-device ShuffleBN); 1 turns it off.
    pub shuffle_bn_groups: usize,
    /// The view transform (each view draws its own randomness).
    pub view: TransformConfig,
}

impl C2lSettings {
    /// The methods.md defaults: projection 128, queue 16,384, temperature 0.07, momentum
    /// 0.999, mixup on, two views of random resized crop (0.2-1), rotation up to 10 degrees,
    /// colour jitter 0.4, horizontal flip, cutout.
    pub fn new(arch: Arch, size: usize) -> Self {
        C2lSettings {
            net: C2lConfig {
                arch,
                backbone: arch.config(None),
                proj_dim: 128,
                queue: 16_384,
            },
            temperature: 0.07,
            momentum: 0.999,
            mixup: true,
            shuffle_bn_groups: 2,
            view: TransformConfig {
                size,
                channels: Channels::Rgb,
                fundus_crop: false,
                augment: Augment {
                    random_resized_crop: Some((0.2, 1.0)),
                    hflip: 0.5,
                    vflip: 0.0,
                    rotation_deg: 10.0,
                    brightness: 0.4,
                    contrast: 0.4,
                    saturation: 0.4,
                    // C2L cuts 3 holes of 32 px at 224; our pipeline cuts one of 1/7 side.
                    cutout: Some((1.0, 32.0 / 224.0)),
                },
                normalize: Some(Normalize::imagenet()),
            },
        }
    }
}

/// Two views of a batch with the step's mixup draw.
#[derive(Debug, Clone)]
pub struct C2lBatch {
    pub x1: Vec<f32>,
    pub x2: Vec<f32>,
    pub shape: [usize; 4],
    pub lambda: f32,
    /// The mixup permutation.
    pub perm: Vec<usize>,
    /// The key encoder's shuffle.
    pub key_order: Vec<usize>,
    /// Position of this shard in the full batch (data-parallel order of the keys).
    pub offset: usize,
}

pub struct C2lTask {
    pub settings: C2lSettings,
    pub images: Vec<Record>,
    view1: Pipeline,
    view2: Pipeline,
    seed: u64,
    fingerprint: String,
    /// Keys computed by `loss`, enqueued by `after_step` (by shard offset).
    pending: Mutex<Vec<(usize, Tensor<2>)>>,
}

/// The largest queue and batch that suit `n` images: the queue holds fewer keys than there
/// are images, so an image never meets its own earlier key as a negative.
pub fn scaled_sizes(n: usize, queue: usize, batch: usize) -> (usize, usize) {
    let batch = batch.min((n / 2).max(2));
    let q = queue.min(n - n % batch.max(1)).max(batch);
    (q, batch)
}

impl C2lTask {
    pub fn new(dataset: &Dataset, settings: C2lSettings, seed: u64) -> Result<Self> {
        let images: Vec<Record> = dataset
            .records
            .iter()
            .filter(|r| r.split != Some(Split::Test))
            .cloned()
            .collect();
        if images.len() < 4 {
            return Err(TrainError::Data(format!(
                "{}: {} images outside the test split; contrastive pretraining needs at least 4",
                dataset.root.display(),
                images.len()
            )));
        }
        let fingerprint = dataset_fingerprint(images.iter());
        Ok(C2lTask {
            view1: Pipeline::new(settings.view.clone(), mix_seed(seed, 1, 0xc21)),
            view2: Pipeline::new(settings.view.clone(), mix_seed(seed, 2, 0xc21)),
            settings,
            images,
            seed,
            fingerprint,
            pending: Mutex::new(Vec::new()),
        })
    }

    fn mix(x: Tensor<4>, perm: &[usize], lambda: f32) -> Tensor<4> {
        let idx = perm_tensor(perm, &x.device());
        x.clone().mul_scalar(lambda) + x.select(0, idx).mul_scalar(1.0 - lambda)
    }

    /// The step's loss and the keys to enqueue.
    pub fn contrast(
        &self,
        model: &C2lNet,
        b: &C2lBatch,
        device: &Device,
    ) -> (Tensor<1>, Tensor<2>) {
        let s = &self.settings;
        let x1 = Tensor::<4>::from_data(TensorData::new(b.x1.clone(), b.shape), device);
        let x2 = Tensor::<4>::from_data(TensorData::new(b.x2.clone(), b.shape), device);
        let neg = model.negatives();
        let groups = s.shuffle_bn_groups;
        let q1 = model.query_embedding(x1.clone());
        let f2 = model.key_features(x2.clone(), &b.key_order, groups);
        let k2 = l2_normalise(f2.clone());
        let l1 = info_nce(q1, k2.clone(), neg.clone(), s.temperature);
        if !s.mixup {
            return (l1, k2);
        }
        let lam = b.lambda;
        let q1m = model.query_embedding(Self::mix(x1, &b.perm, lam));
        let k2m =
            l2_normalise(model.key_features(Self::mix(x2, &b.perm, lam), &b.key_order, groups));
        let idx = perm_tensor(&b.perm, device);
        let km = l2_normalise(f2.clone().mul_scalar(lam) + f2.select(0, idx).mul_scalar(1.0 - lam));
        let l2 = info_nce(q1m.clone(), k2m.clone(), neg.clone(), s.temperature);
        let l3 = info_nce(q1m, km.clone(), neg, s.temperature);
        (
            (l1 + l2 + l3).div_scalar(3.0),
            Tensor::cat(vec![k2, k2m, km], 0),
        )
    }
}

fn perm_tensor(perm: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_data(
        TensorData::new(
            perm.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [perm.len()],
        ),
        device,
    )
}

/// `lambda ~ Beta(1, 1)` (uniform), folded to `max(lambda, 1 - lambda)`.
pub fn draw_lambda<R: Rng>(rng: &mut R) -> f32 {
    let l: f32 = rng.random();
    l.max(1.0 - l)
}

impl Task for C2lTask {
    type Model = C2lNet;
    type Batch = C2lBatch;

    fn kind(&self) -> &'static str {
        "c2l"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("settings serialise")
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn init_model(&self, device: &Device) -> C2lNet {
        self.settings.net.init(device)
    }

    fn steps_per_epoch(&self, batch_size: usize) -> usize {
        // Drop the last incomplete batch: a batch of one has nothing to mix with.
        (self.images.len() / batch_size.max(1)).max(1)
    }

    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<C2lBatch>> + Send + '_> {
        use rayon::prelude::*;
        let steps = self.steps_per_epoch(batch_size);
        let bs = batch_size.max(1).min(self.images.len());
        let mut order: Vec<usize> = (0..self.images.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(
            self.seed,
            u64::MAX,
            epoch as u64,
        )));
        let seed = self.seed;
        Box::new((0..steps).map(move |step| {
            let idx = &order[step * bs..(step + 1) * bs];
            let load = |p: &Pipeline| {
                idx.par_iter()
                    .map(|&i| p.load(&self.images[i], epoch as u64, i as u64))
                    .collect::<std::result::Result<Vec<_>, _>>()
            };
            let (a, b) = (load(&self.view1)?, load(&self.view2)?);
            let (x1, shape) = images_host(&a);
            let (x2, _) = images_host(&b);
            let n = shape[0];
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64, step as u64));
            let lambda = draw_lambda(&mut rng);
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng);
            let mut key_order: Vec<usize> = (0..n).collect();
            key_order.shuffle(&mut rng);
            Ok(C2lBatch {
                x1,
                x2,
                shape,
                lambda,
                perm,
                key_order,
                offset: 0,
            })
        }))
    }

    fn batch_len(&self, batch: &C2lBatch) -> usize {
        batch.shape[0]
    }

    fn split(&self, batch: C2lBatch, parts: usize) -> Vec<C2lBatch> {
        // Mixup partners and the key shuffle are drawn within each shard.
        let item = batch.shape[1] * batch.shape[2] * batch.shape[3];
        crate::engine::shard_ranges(batch.shape[0], parts)
            .into_iter()
            .map(|(s, e)| {
                let local = |v: &[usize]| -> Vec<usize> {
                    v.iter()
                        .filter(|&&i| (s..e).contains(&i))
                        .map(|&i| i - s)
                        .collect()
                };
                C2lBatch {
                    x1: batch.x1[s * item..e * item].to_vec(),
                    x2: batch.x2[s * item..e * item].to_vec(),
                    shape: [e - s, batch.shape[1], batch.shape[2], batch.shape[3]],
                    lambda: batch.lambda,
                    perm: local(&batch.perm),
                    key_order: local(&batch.key_order),
                    offset: batch.offset + s,
                }
            })
            .collect()
    }

    fn loss(&self, model: &C2lNet, batch: &C2lBatch, device: &Device) -> Tensor<1> {
        let (loss, keys) = self.contrast(model, batch, device);
        // The keys stay on the device: the queue is updated there after the step.
        let keys = keys.detach();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((batch.offset, keys));
        loss
    }

    fn after_step(&self, model: C2lNet) -> C2lNet {
        let mut pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        pending.sort_by_key(|(o, _)| *o);
        let mut model = model;
        model.key = medret_models::c2l::ema_update(model.key, &model.query, self.settings.momentum)
            .no_grad();
        let device = model.queue.val().device();
        for (_, keys) in pending {
            // A replica's keys move to the main device (a no-op on one device).
            model = model.enqueue(keys.to_device(&device));
        }
        model
    }

    fn validate(&self, _model: &C2lNet, _device: &Device) -> Result<Metrics> {
        // Pretraining keeps its last epoch, as the authors do; nothing to select on.
        Ok(Metrics::new())
    }

    fn save_weights(&self, model: &C2lNet, path: &Path) -> Result<()> {
        let cfg = self.settings.net.encoder_config();
        Ok(save_module(
            model,
            &[("query.", &cfg), ("key.", &cfg)],
            path,
        )?)
    }

    fn load_weights(&self, mut model: C2lNet, path: &Path) -> Result<C2lNet> {
        let cfg = self.settings.net.encoder_config();
        load_module(&mut model, &[("query.", &cfg), ("key.", &cfg)], path)?;
        model.key = model.key.no_grad();
        Ok(model)
    }
}

/// Writes the query encoder's feature extractor (`features.*`, torchvision names): what
/// `--init` of the training commands loads.
pub fn export_backbone(model: &C2lNet, backbone: &DenseNetConfig, path: &Path) -> Result<()> {
    let cfg = DenseNetConfig {
        num_classes: None,
        ..backbone.clone()
    };
    Ok(medret_models::save_torchvision(
        &model.backbone(),
        &cfg,
        path,
    )?)
}

/// Reads a C2L checkpoint's weights into a model on `device`.
pub fn load_c2l(settings: &C2lSettings, weights: &Path, device: &Device) -> Result<C2lNet> {
    let cfg = settings.net.encoder_config();
    let mut model = settings.net.init(device);
    load_module(&mut model, &[("query.", &cfg), ("key.", &cfg)], weights)?;
    Ok(model)
}

/// kNN retrieval with a backbone's pooled features (cosine), `queries` against
/// `database`: mAP@100 and P@10 under shared-label relevance (same grade for graded data),
/// the check that pretraining learned something a retrieval can use.
pub fn knn_report(
    backbone: &medret_models::DenseNet,
    database: &[Record],
    queries: &[Record],
    size: usize,
    device: &Device,
) -> Result<serde_json::Value> {
    use medret_eval::relevance::{Relevance, Truth};
    let graded = database.iter().chain(queries).all(|r| r.grade.is_some());
    let mut names: Vec<String> = database
        .iter()
        .chain(queries)
        .flat_map(|r| r.labels.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    let truth = |r: &Record| match (graded, r.grade) {
        (true, Some(g)) => Truth::grade(g),
        _ => Truth::labels(
            r.labels
                .iter()
                .filter_map(|l| names.binary_search(l).ok())
                .map(|i| i as u32)
                .collect(),
        ),
    };
    let rule = if graded {
        Relevance::SameGrade
    } else {
        Relevance::SharesLabel
    };
    let pipeline = medret_models::features::torchvision_pipeline(size);
    let feats = |records: &[Record]| {
        medret_models::features::pooled_features(backbone, records, &pipeline, 32, device, &|| {})
    };
    let (fd, fq) = (feats(database)?, feats(queries)?);
    let (dt, qt): (Vec<Truth>, Vec<Truth>) = (
        database.iter().map(truth).collect(),
        queries.iter().map(truth).collect(),
    );
    let r = medret_eval::evaluate::evaluate_cosine(&fq, &qt, &fd, &dt, rule, false);
    let levels = medret_eval::baseline::levels(&qt, &dt, rule);
    Ok(serde_json::json!({
        "map@100": r.map.get("100"),
        "p@10": r.precision.get("10"),
        "chance_precision": levels.chance_precision,
        "majority_map@100": levels.majority_map_100,
        "relevance": rule.describe(),
        "queries": queries.len(),
        "database": database.len(),
    }))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;

    #[test]
    fn lambda_is_folded_to_the_upper_half() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let v: Vec<f32> = (0..2000).map(|_| draw_lambda(&mut rng)).collect();
        assert!(v.iter().all(|&l| (0.5..=1.0).contains(&l)));
        // max(U, 1 - U) is uniform on [0.5, 1]: mean 0.75.
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 0.75).abs() < 0.01, "{mean}");
    }

    #[test]
    fn mixup_terms_hand_computed() {
        // Two one-pixel "images" 1 and 3, lambda 0.75, partners swapped:
        // mixed = 0.75 * [1, 3] + 0.25 * [3, 1] = [1.5, 2.5].
        let dev = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 3.0], [2, 1, 1, 1]), &dev);
        let m = C2lTask::mix(x, &[1, 0], 0.75)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(m, vec![1.5, 2.5]);
    }

    #[test]
    fn sizes_scale_down_to_small_datasets() {
        assert_eq!(scaled_sizes(100_000, 16_384, 128), (16_384, 128));
        // 300 images: queue 256 (< 300, a multiple of the batch), batch kept.
        assert_eq!(scaled_sizes(300, 16_384, 128), (256, 128));
        // 10 images, batch 128 -> 5, queue 10.
        assert_eq!(scaled_sizes(10, 16_384, 128), (10, 5));
    }
}
