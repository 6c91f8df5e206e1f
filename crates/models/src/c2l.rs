//! C2L, Comparing to Learn (Zhou et al., MICCAI 2020): the encoders of self-supervised
//! pretraining, MoCo-style.
//!
//! - The **query encoder** is a DenseNet whose classifier is replaced by one
//!   `Linear(features -> 128)` projection (no MLP), as in the authors' code.
//! - The **key encoder** has the same architecture and follows the query encoder by an
//!   exponential moving average of the *parameters* ([`ema_update`]); BatchNorm running
//!   statistics are not copied. Its parameters never take gradients.
//! - A FIFO **queue** of negative keys (L2-normalised rows) with its write pointer, both
//!   stored in the model so that checkpoints carry them and a resumed run is exact.
//!
//! The loss and the mixup terms live in `medret-train` (`c2l.rs`, `loss/info_nce.rs`).

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::densenet::{DenseNet, DenseNetConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct C2lConfig {
    pub arch: Arch,
    /// The backbone (feature extractor; `num_classes` is ignored).
    pub backbone: DenseNetConfig,
    /// Projection width (128 in C2L).
    pub proj_dim: usize,
    /// Negative keys in the queue (16,384 in C2L).
    pub queue: usize,
}

impl C2lConfig {
    pub fn encoder_config(&self) -> DenseNetConfig {
        DenseNetConfig {
            num_classes: Some(self.proj_dim),
            ..self.backbone.clone()
        }
    }

    /// Both encoders (the key a copy of the query) and a queue of random unit rows.
    pub fn init(&self, device: &Device) -> C2lNet {
        let cfg = self.encoder_config();
        let query = cfg.init(device);
        let key = ema_update(cfg.init(device), &query, 0.0).no_grad();
        let q = Tensor::<2>::random(
            [self.queue, self.proj_dim],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        C2lNet {
            query,
            key,
            queue: Param::from_tensor(l2_normalise(q)).set_require_grad(false),
            queue_ptr: Param::from_tensor(Tensor::<1>::zeros([1], device)).set_require_grad(false),
        }
    }
}

#[derive(Module, Debug)]
pub struct C2lNet {
    pub query: DenseNet,
    pub key: DenseNet,
    /// `[queue, proj_dim]`, unit rows.
    pub queue: Param<Tensor<2>>,
    /// The next row to overwrite, as a one-element float tensor (so it is saved with the
    /// weights).
    pub queue_ptr: Param<Tensor<1>>,
}

pub use crate::ops::l2_normalise;

impl C2lNet {
    /// Normalised query embeddings `[N, proj]` (with gradients).
    pub fn query_embedding(&self, x: Tensor<4>) -> Tensor<2> {
        l2_normalise(self.query.forward(x))
    }

    /// Key features before normalisation, without gradients. BatchNorm in the key encoder
    /// sees the batch in `groups` shuffled parts (`order` is a permutation of the batch),
    /// the one-device stand-in for ShuffleBN: the keys' batch statistics come from other
    /// images than the queries', so the contrast cannot be won through them.
    pub fn key_features(&self, x: Tensor<4>, order: &[usize], groups: usize) -> Tensor<2> {
        let x = x.detach();
        let n = x.dims()[0];
        let device = x.device();
        let groups = groups.clamp(1, n.max(1));
        if groups == 1 {
            return self.key.forward(x).detach();
        }
        let idx = |v: &[usize]| {
            Tensor::<1, Int>::from_data(
                TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [v.len()]),
                &device,
            )
        };
        let shuffled = x.select(0, idx(order));
        let per = n.div_ceil(groups);
        let parts: Vec<Tensor<2>> = (0..n)
            .step_by(per)
            .map(|s| {
                let e = (s + per).min(n);
                self.key.forward(shuffled.clone().slice(s..e)).detach()
            })
            .collect();
        let k = Tensor::cat(parts, 0);
        let mut inverse = vec![0usize; n];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos;
        }
        k.select(0, idx(&inverse))
    }

    /// The queue (no gradients).
    pub fn negatives(&self) -> Tensor<2> {
        self.queue.val().detach()
    }

    /// Writes `keys` (`[B, proj]`, unit rows) into the queue at the pointer, wrapping.
    pub fn enqueue(mut self, keys: Tensor<2>) -> Self {
        let [k, d] = self.queue.val().dims();
        let device = self.queue.val().device();
        let mut q = self
            .queue
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 queue");
        let ptr = self
            .queue_ptr
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32")[0] as usize;
        let keys = keys
            .detach()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 keys");
        let ptr = enqueue_rows(&mut q, k, d, ptr, &keys);
        let qt = Tensor::<2>::from_data(TensorData::new(q, [k, d]), &device);
        self.queue = self.queue.map(|_| qt);
        self.queue_ptr = self
            .queue_ptr
            .map(|_| Tensor::<1>::from_data(TensorData::new(vec![ptr as f32], [1]), &device));
        self
    }

    /// The query encoder's feature extractor as a plain DenseNet (what `--init` loads).
    pub fn backbone(&self) -> DenseNet {
        DenseNet {
            features: self.query.features.clone(),
            classifier: None,
            pool: self.query.pool.clone(),
        }
    }
}

/// FIFO write of the rows of `keys` (`b x d`) into `queue` (`k x d`) from row `ptr`,
/// wrapping to the start; returns the next pointer. With more keys than rows, the last
/// `k` keys remain.
pub fn enqueue_rows(queue: &mut [f32], k: usize, d: usize, ptr: usize, keys: &[f32]) -> usize {
    assert_eq!(queue.len(), k * d, "queue size");
    assert_eq!(keys.len() % d, 0, "key width");
    let mut p = ptr % k;
    for row in keys.chunks(d) {
        queue[p * d..(p + 1) * d].copy_from_slice(row);
        p = (p + 1) % k;
    }
    p
}

fn is_buffer(path: &[String]) -> bool {
    matches!(
        path.last().map(String::as_str),
        Some("running_mean" | "running_var")
    )
}

struct Collect {
    path: Vec<String>,
    out: Vec<Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if !is_buffer(&self.path) {
            let t = p.val().detach();
            let n = t.shape().num_elements();
            self.out.push(t.reshape([n]));
        }
    }
}

struct Ema {
    path: Vec<String>,
    src: std::vec::IntoIter<Tensor<1>>,
    m: f64,
}

impl ModuleMapper for Ema {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if is_buffer(&self.path) {
            return p;
        }
        let q = self
            .src
            .next()
            .expect("the key encoder has the query's architecture");
        let m = self.m;
        p.map(|k| {
            let dims = k.dims();
            (k.detach().mul_scalar(m) + q.reshape(dims).mul_scalar(1.0 - m)).detach()
        })
    }
}

/// `key <- m key + (1 - m) query` for every parameter (BatchNorm running statistics are
/// left as they are). `m = 0` copies the query's parameters.
pub fn ema_update(key: DenseNet, query: &DenseNet, m: f64) -> DenseNet {
    let mut c = Collect {
        path: Vec::new(),
        out: Vec::new(),
    };
    query.visit(&mut c);
    let mut ema = Ema {
        path: Vec::new(),
        src: c.out.into_iter(),
        m,
    };
    key.map(&mut ema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_fifo_and_wraps() {
        // 4 rows of width 2; write 3 keys from row 2: rows 2, 3, then 0.
        let mut q = vec![0.0f32; 8];
        let p = enqueue_rows(&mut q, 4, 2, 2, &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(p, 1);
        assert_eq!(q, vec![3.0, 3.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        // Six keys into four rows from row 1: the last four survive, oldest overwritten.
        let p = enqueue_rows(
            &mut q,
            4,
            2,
            p,
            &[4., 4., 5., 5., 6., 6., 7., 7., 8., 8., 9., 9.],
        );
        assert_eq!(p, 3);
        assert_eq!(q, vec![7.0, 7.0, 8.0, 8.0, 9.0, 9.0, 6.0, 6.0]);
    }

    fn values(m: &DenseNet) -> Vec<(bool, Vec<f32>)> {
        struct V {
            path: Vec<String>,
            out: Vec<(bool, Vec<f32>)>,
        }
        impl ModuleVisitor for V {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let v = p.val().into_data().try_into_vec::<f32>().unwrap();
                self.out.push((is_buffer(&self.path), v));
            }
        }
        let mut v = V {
            path: Vec::new(),
            out: Vec::new(),
        };
        m.visit(&mut v);
        v.out
    }

    #[test]
    fn ema_moves_parameters_and_leaves_running_statistics() {
        let dev = Device::flex();
        let cfg = DenseNetConfig {
            block_config: vec![1, 1],
            num_classes: Some(4),
            ..DenseNetConfig::tiny()
        };
        let query = cfg.init(&dev);
        let mut key = cfg.init(&dev);
        // Give the key's running means a value the query's do not have.
        key.features.norm0.running_mean = burn::module::RunningState::new(
            Tensor::<1>::ones([cfg.num_init_features], &dev).mul_scalar(7.0),
        );
        let (before_q, before_k) = (values(&query), values(&key));
        let updated = ema_update(key, &query, 0.9);
        let after = values(&updated);
        let (mut params, mut buffers) = (0, 0);
        for ((q, k), a) in before_q.iter().zip(&before_k).zip(&after) {
            assert_eq!(q.0, a.0);
            if a.0 {
                buffers += 1;
                assert_eq!(k.1, a.1, "a running statistic changed");
            } else {
                params += 1;
                for ((qv, kv), av) in q.1.iter().zip(&k.1).zip(&a.1) {
                    let want = 0.9 * kv + 0.1 * qv;
                    assert!((av - want).abs() < 1e-6, "{av} vs {want}");
                }
            }
        }
        assert!(
            params > 10 && buffers > 4,
            "{params} params, {buffers} buffers"
        );
        assert!(after.iter().any(|(b, v)| *b && v.iter().all(|&x| x == 7.0)));
    }
}
