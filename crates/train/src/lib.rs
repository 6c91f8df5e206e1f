//! # medret-train
//!
//! The training engine every method of medret shares ([`engine`]): a [`Task`] supplies the
//! model, batches, loss and validation; the engine runs the optimiser ([`config`]: AdamW or
//! SGD with momentum), the learning-rate schedule with warm-up ([`schedule`]), global-norm
//! gradient clipping and data-parallel gradient merging ([`params`]), validation in eval
//! mode, checkpoints with resume ([`checkpoint`]), early stopping and CSV/JSON logs
//! ([`log`]).
//!
//! Tasks ([`task`]): image classification ([`classify`]: multi-label findings on chest
//! X-rays, DR grades on fundus photographs), C2L self-supervised pretraining ([`c2l`]),
//! the chest method's fusion hashing ([`hash`]) and the fundus method's metric learning
//! ([`metric`]); their losses are in [`loss`].

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod export;
pub mod fingerprint;
pub mod log;
pub mod loss;
pub mod params;
pub mod sampler;
pub mod schedule;
pub mod task;

// The tasks keep their short paths (`medret_train::hash`, ...).
pub use task::{c2l, classify, hash, metric};

pub use config::{EarlyStopping, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig};
pub use engine::{Event, Metrics, Outcome, RunOptions, Task, train};
pub use error::{Result, TrainError};
