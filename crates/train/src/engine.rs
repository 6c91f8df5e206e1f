//! The training loop every method shares: mini-batches from a [`Task`], a learning-rate
//! schedule with warm-up, an optimiser step with global-norm clipping, validation in eval
//! mode, a checkpoint every epoch, resume, early stopping and logs.
//!
//! Data parallelism uses burn's own multi-device gradient accumulation
//! ([`burn::optim::MultiGradientsParams`]): the batch is split across devices, each replica
//! computes its shard's gradients in its own thread, and the sums feed one optimiser step.
//! Replica 0 is the model itself, so BatchNorm running statistics follow the first shard,
//! as PyTorch's DDP does with its default buffer broadcast from rank 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{
    AdamWConfig, GradientsParams, ModuleOptimizer, MultiGradientsParams, SgdConfig,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::prelude::*;

use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::config::{OptimizerConfig, RunConfig, TrainConfig};
use crate::error::{Result, TrainError};
use crate::log::{EpochRecord, MetricsLog, StepRecord};
use crate::params::{assign_stable_ids, clip_to_norm, grad_norm, grad_sum_sq, merge_replica_grads};
use crate::schedule::learning_rate;
use medret_models::host::Reads;

pub use crate::config::Metrics;

/// What a method plugs into the engine: its model, its batches, its loss and its
/// validation.
pub trait Task: Sync {
    type Model: Module + Sync + 'static;
    /// One mini-batch in host memory; the task moves it to a device in [`Task::loss`].
    type Batch: Send + Sync;

    /// Short name stored in checkpoints (`classify`, ...).
    fn kind(&self) -> &'static str;
    /// The task's own settings (architecture, input size, loss...), stored in checkpoints.
    fn settings(&self) -> serde_json::Value;
    /// Fingerprint of the training and validation data (see [`crate::fingerprint`]).
    fn fingerprint(&self) -> String;
    /// A freshly initialised model on `device` (the device is already seeded).
    fn init_model(&self, device: &Device) -> Self::Model;
    /// Number of mini-batches per epoch.
    fn steps_per_epoch(&self, batch_size: usize) -> usize;
    /// The epoch's mini-batches, shuffled as a function of the seed and the epoch only, so
    /// a resumed run sees the same batches.
    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch>> + Send + '_>;
    /// Number of samples in a batch.
    fn batch_len(&self, batch: &Self::Batch) -> usize;
    /// Splits a batch into at most `parts` non-empty shards for data-parallel training.
    fn split(&self, batch: Self::Batch, parts: usize) -> Vec<Self::Batch>;
    /// Mean loss over the batch, a scalar on `device` (training mode, autodiff).
    fn loss(&self, model: &Self::Model, batch: &Self::Batch, device: &Device) -> Tensor<1>;
    /// Validation metrics of `model` (already in eval mode) on `device`.
    fn validate(&self, model: &Self::Model, device: &Device) -> Result<Metrics>;
    /// Writes the model's weights (safetensors).
    fn save_weights(&self, model: &Self::Model, path: &Path) -> Result<()>;
    /// Reads weights written by [`Task::save_weights`] into `model`.
    fn load_weights(&self, model: Self::Model, path: &Path) -> Result<Self::Model>;
    /// Called after each optimiser step with the updated model: state that follows the
    /// weights without gradients (C2L's momentum encoder and key queue) changes here.
    fn after_step(&self, model: Self::Model) -> Self::Model {
        model
    }
}

/// The contiguous shards `(start, end)` a batch of `n` samples splits into for at most
/// `parts` devices (every shard non-empty).
pub fn shard_ranges(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let per = n.div_ceil(parts.max(1)).max(1);
    (0..n).step_by(per).map(|s| (s, (s + per).min(n))).collect()
}

/// Progress notifications, for progress bars and logs at the edge.
#[derive(Debug)]
pub enum Event<'a> {
    EpochStart { epoch: usize, steps: usize },
    Step(&'a StepRecord),
    Epoch(&'a EpochRecord),
    Stopped { reason: &'a str },
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Epochs completed (including those of an earlier, resumed run).
    pub epochs: usize,
    pub steps: usize,
    pub best_epoch: Option<usize>,
    pub best_value: Option<f64>,
    pub stopped_early: bool,
    /// Validation metrics of the last epoch.
    pub last_metrics: Metrics,
    /// `best.safetensors` in the output folder: the weights of the best epoch.
    pub best_weights: PathBuf,
}

/// Where and how to run.
pub struct RunOptions {
    /// Output folder: `config.json`, `checkpoints/epoch-NNNN/`, `best.safetensors`,
    /// `log/steps.csv`, `log/epochs.csv`, `log/epochs.jsonl`.
    pub out: PathBuf,
    /// One device is plain training; more split each batch across them. Plain (not
    /// autodiff) devices: the engine adds autodiff.
    pub devices: Vec<Device>,
    /// Continue from the newest checkpoint in `out` (refused if the configuration or the
    /// data differ).
    pub resume: bool,
    /// Keep only the newest this many epoch checkpoints (`None`: all).
    pub keep_checkpoints: Option<usize>,
    /// Return after this many epochs of this invocation, checkpointed, to be resumed later
    /// (a time-limited job); the schedule still spans `epochs`.
    pub stop_after_epochs: Option<usize>,
}

fn build_optimizer(cfg: &OptimizerConfig) -> ModuleOptimizer {
    match *cfg {
        OptimizerConfig::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => AdamWConfig::new()
            .with_beta_1(beta1)
            .with_beta_2(beta2)
            .with_epsilon(eps)
            .with_weight_decay(weight_decay)
            .init(),
        OptimizerConfig::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let mut c = SgdConfig::new();
            if momentum > 0.0 {
                c = c.with_momentum(Some(MomentumConfig {
                    momentum,
                    dampening: 0.0,
                    nesterov,
                }));
            }
            if weight_decay > 0.0 {
                c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
            }
            c.init()
        }
    }
}

/// The autodiff device a run trains on. A GPU gets burn's balanced gradient checkpointing:
/// medret's memory-efficient dense block is a CPU kernel, and burn's concatenating block
/// otherwise keeps every layer's concatenated input with its normalised and activated
/// copies, memory quadratic in the block's depth; checkpointed, those are recomputed in
/// the backward and only the convolutions' outputs are kept (docs/gpu.md has the peak
/// memory both ways). The CPU keeps its kernels, which a checkpointed graph would bypass.
pub fn training_device(device: &Device) -> Device {
    if *device == Device::flex() {
        device.clone().autodiff()
    } else {
        device.clone().autodiff().gradient_checkpointing()
    }
}

/// [`training_device`] for each of a run's devices, with one strategy for all of them: a
/// fork keeps each tensor's strategy and burn refuses an operation that mixes two, so a
/// run over the CPU and a GPU checkpoints on both.
pub fn training_devices(devices: &[Device]) -> Vec<Device> {
    let any_gpu = devices.iter().any(|d| *d != Device::flex());
    devices
        .iter()
        .map(|d| {
            if any_gpu {
                d.clone().autodiff().gradient_checkpointing()
            } else {
                training_device(d)
            }
        })
        .collect()
}

/// Trains `task` with `cfg`, writing everything under `opts.out`.
pub fn train<T: Task>(
    task: &T,
    cfg: &TrainConfig,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome> {
    cfg.validate()?;
    if opts.devices.is_empty() {
        return Err(TrainError::Config("no device given".into()));
    }
    let devices = training_devices(&opts.devices);
    let main = devices[0].clone();
    let plain = opts.devices[0].clone();
    std::fs::create_dir_all(&opts.out).map_err(crate::error::io_err(&opts.out))?;

    let run = RunConfig {
        train: cfg.clone(),
        task_kind: task.kind().to_string(),
        task: task.settings(),
        dataset_fingerprint: task.fingerprint(),
        medret_version: env!("CARGO_PKG_VERSION").to_string(),
    };

    // burn-flex seeds one process-wide generator: hold a lock from seeding to the end of
    // initialisation so a concurrent run (a test, a server) cannot draw from it in between.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mut model = {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        main.seed(cfg.seed);
        crate::params::initialise_now(task.init_model(&main))
    };
    let mut optim = build_optimizer(&cfg.optimizer);
    let mut state = TrainState::default();

    let ckpt_root = opts.out.join("checkpoints");
    if opts.resume {
        let latest = checkpoint::latest(&ckpt_root)?.ok_or_else(|| TrainError::Resume {
            path: ckpt_root.clone(),
            message: "no complete checkpoint to resume from".into(),
        })?;
        let ck = Checkpoint::open(&latest)?;
        ck.check_compatible(&run)?;
        model = task.load_weights(model, &ck.weights_path())?;
        model = assign_stable_ids(model);
        optim = optim
            .load(ck.optimizer_path())
            .map_err(|e| TrainError::Checkpoint {
                path: ck.optimizer_path(),
                message: format!("optimiser state: {e}"),
            })?;
        state = ck.state;
        tracing::info!(epoch = state.epoch, step = state.step, "resuming");
    } else {
        if checkpoint::latest(&ckpt_root)?.is_some() {
            return Err(TrainError::Config(format!(
                "{} already holds checkpoints: resume, or choose an empty output folder",
                opts.out.display()
            )));
        }
        model = assign_stable_ids(model);
    }
    checkpoint::write_json(&opts.out.join("config.json"), &run)?;

    let mut log = MetricsLog::open(&opts.out.join("log"), state.epoch)?;
    let steps_per_epoch = task.steps_per_epoch(cfg.batch_size);
    if steps_per_epoch == 0 {
        return Err(TrainError::Data("no training samples".into()));
    }
    let mut last_metrics = state.last_metrics.clone();
    let mut stopped_early = false;

    let first_epoch = state.epoch;
    while state.epoch < cfg.epochs {
        if opts
            .stop_after_epochs
            .is_some_and(|n| state.epoch - first_epoch >= n)
        {
            break;
        }
        let epoch = state.epoch;
        on_event(Event::EpochStart {
            epoch,
            steps: steps_per_epoch,
        });
        let started = Instant::now();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        // The next batch is decoded and augmented in another thread while this one
        // trains (at most one waiting), so image loading overlaps the step.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T::Batch>>(1);
        // The model moves into the scope and back out, as the optimiser step consumes it.
        let (trained, epoch_result) = std::thread::scope(|scope| {
            let mut model = model;
            scope.spawn(move || {
                for b in task.batches(epoch, cfg.batch_size) {
                    if tx.send(b).is_err() {
                        break; // the step loop stopped early
                    }
                }
            });
            for batch in rx {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return (model, Err(e)),
                };
                let n = task.batch_len(&batch);
                let lr = learning_rate(cfg, steps_per_epoch, state.step);
                let t0 = Instant::now();
                let want_norm = cfg.grad_clip_norm.is_some() || state.step % cfg.log_every == 0;
                // One read back to the host a step: the loss with the gradient norm
                // (`medret_models::host`). The backward is queued before it, so a GPU is
                // not left idle while the host waits for the forward's loss.
                let (loss, norm, mut grads) = if devices.len() == 1 {
                    let loss = task.loss(&model, &batch, &main);
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    let sum_sq = want_norm
                        .then(|| grad_sum_sq(&model, &grads, &plain))
                        .flatten();
                    let mut reads = Reads::new().with(loss);
                    if let Some(t) = sum_sq {
                        reads = reads.with(t);
                    }
                    let v = reads.f32();
                    let value = v[0].first().map_or(f64::NAN, |&x| x as f64);
                    let norm = match (want_norm, v.get(1)) {
                        (true, Some(sq)) => sq[0].sqrt(),
                        (true, None) => 0.0,
                        (false, _) => f32::NAN,
                    };
                    (value, norm, grads)
                } else {
                    let (value, grads) = data_parallel_grads(task, &model, batch, &devices);
                    let norm = if want_norm {
                        grad_norm(&model, &grads, &plain)
                    } else {
                        f32::NAN
                    };
                    (value, norm, grads)
                };
                if !loss.is_finite() {
                    let e = TrainError::Data(format!(
                        "the loss became {loss} at epoch {epoch}, step {}; lower the learning rate or enable clipping (checkpoints up to the previous epoch are intact)",
                        state.step
                    ));
                    return (model, Err(e));
                }
                if let Some(max) = cfg.grad_clip_norm {
                    clip_to_norm(&model, &mut grads, norm, max);
                }
                model = task.after_step(optim.step(lr, model, grads));
                loss_sum += loss * n as f64;
                seen += n;
                let rec = StepRecord {
                    epoch,
                    step: state.step,
                    lr,
                    loss,
                    grad_norm: norm as f64,
                    samples: n,
                    ms: t0.elapsed().as_secs_f64() * 1e3,
                };
                if state.step % cfg.log_every == 0
                    && let Err(e) = log.step(&rec)
                {
                    return (model, Err(e));
                }
                on_event(Event::Step(&rec));
                state.step += 1;
            }
            (model, Ok(()))
        });
        model = trained;
        epoch_result?;

        let metrics = task.validate(&model.valid(), &plain)?;
        state.epoch += 1;
        let monitored = metrics.get(&cfg.early_stopping.metric).copied();
        let improved = match (monitored, state.best_value) {
            (Some(v), None) => v.is_finite(),
            (Some(v), Some(best)) => {
                let d = cfg.early_stopping.min_delta;
                if cfg.early_stopping.higher_is_better {
                    v > best + d
                } else {
                    v < best - d
                }
            }
            (None, _) => false,
        };
        // A task with no validation at all (pretraining) keeps its last epoch silently.
        if monitored.is_none() && !metrics.is_empty() {
            tracing::warn!(
                metric = %cfg.early_stopping.metric,
                "the monitored metric is missing from this epoch's validation"
            );
        }
        if improved {
            state.best_value = monitored;
            state.best_epoch = Some(epoch);
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        state.last_metrics = metrics.clone();
        let rec = EpochRecord {
            epoch,
            steps: state.step,
            train_loss: if seen > 0 {
                loss_sum / seen as f64
            } else {
                f64::NAN
            },
            lr: learning_rate(cfg, steps_per_epoch, state.step.saturating_sub(1)),
            seconds: started.elapsed().as_secs_f64(),
            metrics: metrics.clone(),
            best: improved,
        };
        log.epoch(&rec)?;

        // The best weights first: if the checkpoint write is interrupted, the previous
        // checkpoint and a best file consistent with its state remain.
        if improved {
            let tmp = opts.out.join("best.safetensors.tmp");
            task.save_weights(&model, &tmp)?;
            std::fs::rename(&tmp, opts.out.join("best.safetensors"))
                .map_err(crate::error::io_err(opts.out.join("best.safetensors")))?;
        }
        checkpoint::save(&ckpt_root, &run, &state, &optim, |p| {
            task.save_weights(&model, p)
        })?;
        if let Some(keep) = opts.keep_checkpoints {
            checkpoint::prune(&ckpt_root, keep.max(1))?;
        }
        on_event(Event::Epoch(&rec));
        last_metrics = metrics;

        if let Some(patience) = cfg.early_stopping.patience
            && state.epochs_since_best >= patience
            && state.epoch < cfg.epochs
        {
            let reason = format!(
                "early stop: {} has not improved for {patience} epochs (best {:.4} at epoch {})",
                cfg.early_stopping.metric,
                state.best_value.unwrap_or(f64::NAN),
                state.best_epoch.map(|e| e + 1).unwrap_or(0)
            );
            on_event(Event::Stopped { reason: &reason });
            stopped_early = true;
            break;
        }
    }

    Ok(Outcome {
        epochs: state.epoch,
        steps: state.step,
        best_epoch: state.best_epoch,
        best_value: state.best_value,
        stopped_early,
        last_metrics,
        best_weights: opts.out.join("best.safetensors"),
    })
}

/// One data-parallel gradient computation: shard `i` on `devices[i]` (autodiff devices;
/// the model is on `devices[0]`), each shard's mean loss weighted by its share of the batch
/// so the summed gradient is the full batch's. Returns the loss and the merged gradients.
/// Public for the GPU parity tests, which run it on two device handles.
pub fn data_parallel_grads<T: Task>(
    task: &T,
    model: &T::Model,
    batch: T::Batch,
    devices: &[Device],
) -> (f64, GradientsParams) {
    let total = task.batch_len(&batch) as f64;
    let shards = task.split(batch, devices.len());
    let results: Vec<(f64, GradientsParams, Device)> = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .zip(devices)
            .enumerate()
            .map(|(i, (shard, device))| {
                s.spawn(move || {
                    let replica = if i == 0 {
                        model.clone()
                    } else {
                        model.clone().fork(device)
                    };
                    let w = task.batch_len(shard) as f64 / total;
                    let loss = task.loss(&replica, shard, device).mul_scalar(w);
                    let grads = GradientsParams::from_grads(loss.backward(), &replica);
                    let value = medret_models::host::scalar(loss);
                    (value, grads, device.clone())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a data-parallel replica panicked"))
            .collect()
    });
    let loss = results.iter().map(|r| r.0).sum();
    let multi = MultiGradientsParams {
        grads: results.into_iter().map(|(_, g, d)| (g, d)).collect(),
    };
    (loss, merge_replica_grads(model, multi))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn one_weight(w0: f32) -> (Linear, Device) {
        let dev = Device::flex().autodiff();
        let mut m = LinearConfig::new(1, 1).with_bias(false).init(&dev);
        m.weight = m.weight.map(|_| {
            Tensor::<2>::from_data(TensorData::new(vec![w0], [1, 1]), &dev).require_grad()
        });
        (m, dev)
    }

    fn weight(m: &Linear) -> f32 {
        m.weight.val().into_data().try_to_vec::<f32>().unwrap()[0]
    }

    fn grads(m: &Linear, g: f32, dev: &Device) -> GradientsParams {
        let mut gp = GradientsParams::new();
        gp.register(
            m.weight.id,
            Tensor::<2>::from_data(TensorData::new(vec![g], [1, 1]), &dev.clone().inner()),
        );
        gp
    }

    #[test]
    fn shards_cover_the_batch_once() {
        assert_eq!(shard_ranges(10, 3), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(shard_ranges(2, 4), vec![(0, 1), (1, 2)]);
        assert_eq!(shard_ranges(5, 0), vec![(0, 5)]);
        assert!(shard_ranges(0, 2).is_empty());
    }

    #[test]
    fn sgd_momentum_has_pytorch_semantics() {
        // PyTorch: buf1 = g, buf2 = 0.9 g + g (no dampening) -> w2 = w0 - lr g - lr 1.9 g.
        // burn's default dampening of 0.1 would give w0 - lr g - lr 1.8 g.
        let (mut m, dev) = one_weight(1.0);
        let mut opt = build_optimizer(&OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        });
        for _ in 0..2 {
            let g = grads(&m, 0.5, &dev);
            m = opt.step(0.1, m, g);
        }
        let want = 1.0 - 0.1 * 0.5 - 0.1 * 1.9 * 0.5;
        assert!((weight(&m) - want).abs() < 1e-6, "{} vs {want}", weight(&m));
    }

    #[test]
    fn adamw_first_step_is_sign_with_decoupled_decay() {
        // Step 1 with bias correction: m_hat = g, v_hat = g^2, so the update is
        // lr g / (|g| + eps) = lr sign(g); decoupled decay adds lr wd w0.
        let (m, dev) = one_weight(2.0);
        let mut opt = build_optimizer(&OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        });
        let g = grads(&m, -3.0, &dev);
        let m = opt.step(0.01, m, g);
        let want = 2.0 - 0.01 * 0.1 * 2.0 + 0.01;
        assert!((weight(&m) - want).abs() < 1e-6, "{} vs {want}", weight(&m));
    }
}
