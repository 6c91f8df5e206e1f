//! The engine on a task small enough to reason about: linear regression, `y = x . w* + 0.5`
//! plus noise, with a burn `Linear` model and mean squared error.
// Tests read tensors directly; the rule (clippy.toml) is for training code.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use medret_train::{
    EarlyStopping, Event, Metrics, OptimizerConfig, Result, RunOptions, ScheduleConfig, Task,
    TrainConfig, TrainError, train,
};

const D: usize = 4;

struct Toy {
    x: Vec<[f32; D]>,
    y: Vec<f32>,
    val: usize,
    seed: u64,
    /// Changes the fingerprint, as other data would.
    tag: &'static str,
}

#[derive(Clone)]
struct ToyBatch {
    x: Vec<f32>,
    y: Vec<f32>,
}

fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl Toy {
    fn new(n: usize, seed: u64) -> Self {
        let mut s = 99u64;
        let w = [1.5f32, -2.0, 0.7, 0.0];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let v = [lcg(&mut s), lcg(&mut s), lcg(&mut s), lcg(&mut s)];
            y.push(v.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + 0.5 + 0.05 * lcg(&mut s));
            x.push(v);
        }
        Toy {
            x,
            y,
            val: n / 4,
            seed,
            tag: "toy",
        }
    }

    fn train_len(&self) -> usize {
        self.x.len() - self.val
    }

    fn mse(&self, model: &Linear, idx: &[usize], device: &Device) -> Tensor<1> {
        let x: Vec<f32> = idx.iter().flat_map(|&i| self.x[i]).collect();
        let y: Vec<f32> = idx.iter().map(|&i| self.y[i]).collect();
        let b = ToyBatch { x, y };
        self.loss(model, &b, device)
    }
}

impl Task for Toy {
    type Model = Linear;
    type Batch = ToyBatch;

    fn kind(&self) -> &'static str {
        "toy"
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "d": D })
    }
    fn fingerprint(&self) -> String {
        format!("{}-{}", self.tag, self.x.len())
    }
    fn init_model(&self, device: &Device) -> Linear {
        LinearConfig::new(D, 1).init(device)
    }
    fn steps_per_epoch(&self, batch_size: usize) -> usize {
        self.train_len().div_ceil(batch_size)
    }
    fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
    ) -> Box<dyn Iterator<Item = Result<ToyBatch>> + Send + '_> {
        // A seeded permutation per epoch (Fisher-Yates with the LCG).
        let mut order: Vec<usize> = (0..self.train_len()).collect();
        let mut s = self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in (1..order.len()).rev() {
            let j = ((lcg(&mut s) + 1.0) / 2.0 * (i + 1) as f32) as usize % (i + 1);
            order.swap(i, j);
        }
        let chunks: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
        Box::new(chunks.into_iter().map(move |idx| {
            Ok(ToyBatch {
                x: idx.iter().flat_map(|&i| self.x[i]).collect(),
                y: idx.iter().map(|&i| self.y[i]).collect(),
            })
        }))
    }
    fn batch_len(&self, b: &ToyBatch) -> usize {
        b.y.len()
    }
    fn split(&self, b: ToyBatch, parts: usize) -> Vec<ToyBatch> {
        let per = b.y.len().div_ceil(parts);
        (0..b.y.len())
            .step_by(per)
            .map(|s| {
                let e = (s + per).min(b.y.len());
                ToyBatch {
                    x: b.x[s * D..e * D].to_vec(),
                    y: b.y[s..e].to_vec(),
                }
            })
            .collect()
    }
    fn loss(&self, model: &Linear, b: &ToyBatch, device: &Device) -> Tensor<1> {
        let n = b.y.len();
        let x = Tensor::<2>::from_data(TensorData::new(b.x.clone(), [n, D]), device);
        let y = Tensor::<2>::from_data(TensorData::new(b.y.clone(), [n, 1]), device);
        let d = model.forward(x) - y;
        (d.clone() * d).mean()
    }
    fn validate(&self, model: &Linear, device: &Device) -> Result<Metrics> {
        let idx: Vec<usize> = (self.train_len()..self.x.len()).collect();
        let l = self
            .mse(model, &idx, device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        Ok(Metrics::from([("loss".to_string(), l as f64)]))
    }
    fn save_weights(&self, model: &Linear, path: &Path) -> Result<()> {
        let mut store = burn::store::SafetensorsStore::from_file(path).overwrite(true);
        use burn::store::ModuleSnapshot;
        model
            .save_into(&mut store)
            .map_err(|e| TrainError::Data(e.to_string()))
    }
    fn load_weights(&self, mut model: Linear, path: &Path) -> Result<Linear> {
        let mut store = burn::store::SafetensorsStore::from_file(path);
        use burn::store::ModuleSnapshot;
        model
            .load_from(&mut store)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        Ok(model)
    }
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        lr: 0.05,
        optimizer: OptimizerConfig::sgd(),
        schedule: ScheduleConfig::Cosine { min_lr: 0.0 },
        warmup_epochs: 1.0,
        grad_clip_norm: Some(10.0),
        seed: 3,
        ..Default::default()
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        devices: vec![Device::flex()],
        resume: false,
        keep_checkpoints: None,
        stop_after_epochs: None,
    }
}

fn weights(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            st.tensor(n)
                .unwrap()
                .data()
                .chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn last_weights(out: &Path) -> Vec<f32> {
    let ck = medret_train::checkpoint::latest(&out.join("checkpoints"))
        .unwrap()
        .unwrap();
    weights(&ck.join("model.safetensors"))
}

fn step_losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("log/steps.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn training_fits_the_toy_problem_and_writes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let task = Toy::new(96, 1);
    let mut epochs_seen = 0;
    let outcome = train(&task, &cfg(12), &opts(dir.path()), &mut |e| {
        if let Event::Epoch(_) = e {
            epochs_seen += 1
        }
    })
    .unwrap();
    assert_eq!(outcome.epochs, 12);
    assert_eq!(epochs_seen, 12);
    assert_eq!(outcome.steps, 12 * 9);
    // The noise floor is 0.05^2/3 ~ 0.0008; from an initial MSE of order 1.
    let val = outcome.last_metrics["loss"];
    assert!(val < 0.01, "validation MSE {val}");
    // Learned weights close to w* = (1.5, -2, 0.7, 0) and b = 0.5 (bias first: sorted names).
    let w = weights(&outcome.best_weights);
    let want = [0.5f32, 1.5, -2.0, 0.7, 0.0];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 0.1, "{w:?}");
    }
    for f in [
        "config.json",
        "best.safetensors",
        "log/steps.csv",
        "log/epochs.csv",
        "log/epochs.jsonl",
        "checkpoints/epoch-0012/model.safetensors",
        "checkpoints/epoch-0012/optimizer.bpk",
        "checkpoints/epoch-0012/state.json",
        "checkpoints/epoch-0012/config.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["train"]["seed"], 3);
    assert_eq!(cfg_json["train"]["optimizer"]["kind"], "sgd");
    assert_eq!(cfg_json["dataset_fingerprint"], "toy-96");
    assert_eq!(step_losses(dir.path()).len(), 12 * 9);
    let epochs_csv = std::fs::read_to_string(dir.path().join("log/epochs.csv")).unwrap();
    assert!(epochs_csv.starts_with("epoch,steps,train_loss,lr,seconds,best,val_loss"));
    assert_eq!(epochs_csv.lines().count(), 13);
    // The learning rate in the log follows warm-up then cosine: step 0 is lr/9.
    let first = step_losses(dir.path())[0].clone();
    let lr0: f64 = first.split(',').nth(2).unwrap().parse().unwrap();
    assert!((lr0 - 0.05 / 9.0).abs() < 1e-7, "{first}");
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let task = Toy::new(64, 1);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(&task, &cfg(3), &opts(a.path()), &mut |_| {}).unwrap();
    train(&task, &cfg(3), &opts(b.path()), &mut |_| {}).unwrap();
    assert_eq!(step_losses(a.path()), step_losses(b.path()));
    assert_eq!(last_weights(a.path()), last_weights(b.path()));
    // And another seed is another run.
    let c = tempfile::tempdir().unwrap();
    let mut other = cfg(3);
    other.seed = 4;
    train(&task, &other, &opts(c.path()), &mut |_| {}).unwrap();
    assert_ne!(last_weights(a.path()), last_weights(c.path()));
}

#[test]
fn resume_continues_exactly() {
    for optimizer in [OptimizerConfig::sgd(), OptimizerConfig::adamw()] {
        let task = Toy::new(64, 1);
        let mut c = cfg(4);
        c.optimizer = optimizer.clone();
        let straight = tempfile::tempdir().unwrap();
        train(&task, &c, &opts(straight.path()), &mut |_| {}).unwrap();

        let resumed = tempfile::tempdir().unwrap();
        // Interrupted after two epochs, as a time-limited job would be.
        let mut o = opts(resumed.path());
        o.stop_after_epochs = Some(2);
        let out = train(&task, &c, &o, &mut |_| {}).unwrap();
        assert_eq!(out.epochs, 2);
        // A crash mid-checkpoint leaves a partial folder; it must be ignored.
        std::fs::create_dir_all(resumed.path().join("checkpoints/epoch-0003.partial")).unwrap();
        let mut o = opts(resumed.path());
        o.resume = true;
        let out = train(&task, &c, &o, &mut |_| {}).unwrap();
        assert_eq!(out.epochs, 4);
        assert_eq!(
            last_weights(straight.path()),
            last_weights(resumed.path()),
            "{optimizer:?}: the optimiser state or the data order was not restored"
        );
        assert_eq!(step_losses(straight.path()), step_losses(resumed.path()));
    }
}

#[test]
fn resume_refuses_other_data_or_settings() {
    let task = Toy::new(64, 1);
    let dir = tempfile::tempdir().unwrap();
    train(&task, &cfg(1), &opts(dir.path()), &mut |_| {}).unwrap();
    let mut o = opts(dir.path());
    o.resume = true;

    let mut other = Toy::new(64, 1);
    other.tag = "other";
    let err = train(&other, &cfg(2), &o, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("data differ"), "{err}");

    let mut c = cfg(2);
    c.lr = 0.1;
    let err = train(&task, &c, &o, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("training settings differ"),
        "{err}"
    );

    // Starting afresh over existing checkpoints is refused, not silently overwritten.
    let err = train(&task, &cfg(2), &opts(dir.path()), &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("already holds checkpoints"),
        "{err}"
    );

    // A corrupt state file is named.
    std::fs::write(dir.path().join("checkpoints/epoch-0001/state.json"), "{").unwrap();
    let err = train(&task, &cfg(2), &o, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("state.json"), "{err}");
}

#[test]
fn early_stopping_stops_after_patience() {
    let task = Toy::new(64, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(20);
    // A metric that can only get worse once fitted: the LR is tiny after warm-up... so
    // instead ask for an impossible improvement.
    c.early_stopping = EarlyStopping {
        metric: "loss".into(),
        higher_is_better: false,
        patience: Some(2),
        min_delta: 1e9,
    };
    let mut stopped = None;
    let out = train(&task, &c, &opts(dir.path()), &mut |e| {
        if let Event::Stopped { reason } = e {
            stopped = Some(reason.to_string())
        }
    })
    .unwrap();
    // Epoch 1 is the first best; epochs 2 and 3 do not improve by 1e9: stop after 3.
    assert!(out.stopped_early);
    assert_eq!(out.epochs, 3);
    assert_eq!(out.best_epoch, Some(0));
    assert!(stopped.unwrap().contains("has not improved for 2 epochs"));
}

#[test]
fn data_parallel_matches_one_device() {
    // Two replicas on two CPU devices compute shard gradients in parallel; merged, they
    // must equal the full batch's gradient, so the runs agree to rounding.
    let task = Toy::new(64, 1);
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let mut c = cfg(3);
    c.grad_clip_norm = None;
    train(&task, &c, &opts(one.path()), &mut |_| {}).unwrap();
    let mut o = opts(two.path());
    o.devices = vec![Device::flex(), Device::flex()];
    train(&task, &c, &o, &mut |_| {}).unwrap();
    let (a, b) = (last_weights(one.path()), last_weights(two.path()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn bad_settings_are_refused_before_training() {
    let task = Toy::new(64, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(2);
    c.lr = -1.0;
    let err = train(&task, &c, &opts(dir.path()), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("learning rate"), "{err}");
    let mut c = cfg(2);
    c.schedule = ScheduleConfig::Step {
        every_epochs: 0,
        gamma: 0.1,
    };
    assert!(train(&task, &c, &opts(dir.path()), &mut |_| {}).is_err());
    assert!(!dir.path().join("checkpoints").exists());
}
