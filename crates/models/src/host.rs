//! Reads from the device to the host, counted.
//!
//! On a GPU every read waits for the device's queue to drain and stalls the pipeline
//! behind it, so a training step should make as few as it can: medret's steps make one
//! (the logged loss, with the gradient norm in the same read), plus one for the fusion
//! method's crop, whose connected-component search runs on the host. Training code
//! reads only through this module (`crates/train/clippy.toml` forbids the tensor's own
//! read methods there), and [`reads`] lets a test count a step's reads
//! (`crates/train/tests/host_reads.rs`). On the CPU a read is a copy, not a sync.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::prelude::*;
use burn::tensor::Transaction;

static READS: AtomicU64 = AtomicU64::new(0);

/// Reads made through this module since the process started, across all threads.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// Several tensors read back in one synchronisation (burn's [`Transaction`]).
#[must_use]
pub struct Reads {
    tx: Transaction,
    len: usize,
}

impl Default for Reads {
    fn default() -> Self {
        Self::new()
    }
}

impl Reads {
    pub fn new() -> Self {
        Reads {
            tx: Transaction::default(),
            len: 0,
        }
    }

    /// Adds `t`, which must be on the same device as the others. A read never needs the
    /// graph, and burn's transaction wants one kind of tensor: it is taken without autodiff.
    pub fn with<const D: usize>(self, t: Tensor<D>) -> Self {
        Reads {
            tx: self.tx.register(t.inner()),
            len: self.len + 1,
        }
    }

    /// Every added tensor's values in `f32`, in the order added: one read.
    pub fn f32(self) -> Vec<Vec<f32>> {
        if self.len == 0 {
            return Vec::new();
        }
        READS.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::disallowed_methods)]
        let data = self.tx.execute();
        data.into_iter()
            .map(|d| {
                d.convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("a float tensor converts to f32")
            })
            .collect()
    }
}

/// One tensor's values in `f32`: one read.
pub fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    Reads::new().with(t).f32().pop().expect("one tensor added")
}

/// A one-element tensor's value as `f64` (NaN if it is empty): one read.
pub fn scalar<const D: usize>(t: Tensor<D>) -> f64 {
    read(t).first().map_or(f64::NAN, |&v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tensors_are_one_read_in_order() {
        let dev = Device::flex();
        let a = Tensor::<1>::from_floats([1.0, 2.0], &dev);
        let b = Tensor::<2>::from_floats([[3.0], [4.0]], &dev);
        let before = reads();
        let v = Reads::new().with(a).with(b).f32();
        // Other tests in this binary may read at the same time: at least one, and this
        // call's own values.
        assert!(reads() > before);
        assert_eq!(v, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(Reads::new().f32(), Vec::<Vec<f32>>::new());
        assert_eq!(scalar(Tensor::<1>::from_floats([2.5], &dev)), 2.5);
    }
}
