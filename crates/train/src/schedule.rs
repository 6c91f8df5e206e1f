//! Learning-rate schedules with linear warm-up, as a pure function of the global step.
//!
//! Written here rather than taken from `burn::lr_scheduler` because a function of the step
//! resumes from a checkpoint by construction (no scheduler state to save) and its values
//! can be checked by hand.

use crate::config::{ScheduleConfig, TrainConfig};

/// The learning rate for the update made at global step `step` (0-based), with
/// `steps_per_epoch` updates per epoch.
///
/// - Warm-up: `lr * (step + 1) / W` for the first `W = round(warmup_epochs * steps_per_epoch)`
///   steps, so the first update is already non-zero and step `W - 1` uses the full rate.
/// - Then, with `t = step - W` and `T = total_steps - W`:
///   - constant: `lr`;
///   - cosine: `min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2` (PyTorch's
///     `CosineAnnealingLR` with `T_max = T`: `lr` at `t = 0`, `min_lr` one step after the
///     last);
///   - step: `lr * gamma^floor(t / (every_epochs * steps_per_epoch))`.
pub fn learning_rate(cfg: &TrainConfig, steps_per_epoch: usize, step: usize) -> f64 {
    let spe = steps_per_epoch.max(1);
    let total = cfg.epochs * spe;
    let warmup = ((cfg.warmup_epochs * spe as f64).round() as usize).min(total);
    if step < warmup {
        return cfg.lr * (step + 1) as f64 / warmup as f64;
    }
    let t = step - warmup;
    let horizon = total.saturating_sub(warmup).max(1);
    match cfg.schedule {
        ScheduleConfig::Constant => cfg.lr,
        ScheduleConfig::Cosine { min_lr } => {
            let progress = (t as f64 / horizon as f64).min(1.0);
            min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        ScheduleConfig::Step {
            every_epochs,
            gamma,
        } => {
            let drops = t / (every_epochs.max(1) * spe);
            cfg.lr * gamma.powi(drops as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: ScheduleConfig, warmup_epochs: f64) -> TrainConfig {
        TrainConfig {
            epochs: 4,
            lr: 0.1,
            schedule,
            warmup_epochs,
            ..Default::default()
        }
    }

    #[test]
    fn warmup_is_linear_from_the_first_step() {
        // 10 steps per epoch, half an epoch of warm-up = 5 steps.
        let c = cfg(ScheduleConfig::Constant, 0.5);
        let lrs: Vec<f64> = (0..7).map(|s| learning_rate(&c, 10, s)).collect();
        let want = [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn cosine_hand_computed() {
        // No warm-up, 4 epochs x 10 steps: T = 40.
        let c = cfg(ScheduleConfig::Cosine { min_lr: 0.0 }, 0.0);
        assert!((learning_rate(&c, 10, 0) - 0.1).abs() < 1e-12);
        // Halfway: (1 + cos(pi/2)) / 2 = 1/2.
        assert!((learning_rate(&c, 10, 20) - 0.05).abs() < 1e-12);
        // A quarter: (1 + cos(pi/4)) / 2 = 0.853553...
        assert!((learning_rate(&c, 10, 10) - 0.1 * 0.853_553_390_593_273_8).abs() < 1e-12);
        // min_lr is respected and the curve is monotone.
        let c = cfg(ScheduleConfig::Cosine { min_lr: 0.01 }, 1.0);
        let lrs: Vec<f64> = (10..40).map(|s| learning_rate(&c, 10, s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert!(lrs.iter().all(|&l| l > 0.01 && l <= 0.1));
        // After warm-up (10 steps) t restarts at 0 with the full rate.
        assert!((learning_rate(&c, 10, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn step_schedule_drops_every_k_epochs_after_warmup() {
        let c = cfg(
            ScheduleConfig::Step {
                every_epochs: 1,
                gamma: 0.5,
            },
            1.0,
        );
        // Epoch 0 warm-up; epoch 1 full; epoch 2 halved; epoch 3 quartered.
        assert!((learning_rate(&c, 10, 9) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 15) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 25) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 39) - 0.025).abs() < 1e-12);
    }
}
