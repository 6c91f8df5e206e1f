//! How an epoch draws its images: P x K batches for metric learning, and class-weighted
//! epochs for the hash (issue 18's "sampling for skewed labels").
//!
//! P x K batches for metric learning: each batch holds `p` classes (DR grades) with `k`
//! images each, so every anchor has positives and negatives whatever the class skew (about
//! 73% of EyePACS is grade 0). Classes are drawn uniformly, so grades are balanced over an
//! epoch; within a class, images come from a shuffled pool that is reshuffled when used up
//! (a class with fewer than `k` images repeats some). Deterministic per (seed, epoch).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// `n / (p k)` batches (at least one) of indices into `labels`.
pub fn pk_batches(labels: &[u8], p: usize, k: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut classes: Vec<u8> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() || k == 0 {
        return Vec::new();
    }
    let p = p.clamp(1, classes.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pools: Vec<(Vec<usize>, usize)> = classes
        .iter()
        .map(|&c| {
            let mut v: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            v.shuffle(&mut rng);
            (v, 0)
        })
        .collect();
    let batches = (labels.len() / (p * k)).max(1);
    let mut out = Vec::with_capacity(batches);
    let mut order: Vec<usize> = (0..classes.len()).collect();
    for _ in 0..batches {
        order.shuffle(&mut rng);
        let mut batch = Vec::with_capacity(p * k);
        for &c in &order[..p] {
            let (pool, next) = &mut pools[c];
            for _ in 0..k {
                if *next == pool.len() {
                    pool.shuffle(&mut rng);
                    *next = 0;
                }
                batch.push(pool[*next]);
                *next += 1;
            }
        }
        out.push(batch);
    }
    out
}

/// How `train hash` draws an epoch's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Every training image once, shuffled.
    #[default]
    Uniform,
    /// As many draws, with replacement, each class equally likely: an image's weight is
    /// one over its class's count.
    Balanced,
    /// Between the two: one over the square root of the count (Mahajan et al. 2018, the
    /// square-root sampling of their weakly supervised pretraining).
    Sqrt,
}

impl Sampling {
    /// The exponent of the class count in an image's weight.
    pub fn power(self) -> f64 {
        match self {
            Sampling::Uniform => 0.0,
            Sampling::Balanced => 1.0,
            Sampling::Sqrt => 0.5,
        }
    }
}

/// One epoch's order: a shuffled permutation for `Uniform`, else `keys.len()` draws with
/// replacement where image `i` has weight `count(keys[i])^-power`. `keys` is each image's
/// class (for several labels, the caller passes its rarest). Deterministic per (seed,
/// epoch).
pub fn epoch_order(keys: &[usize], sampling: Sampling, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03));
    if sampling == Sampling::Uniform || keys.is_empty() {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.shuffle(&mut rng);
        return order;
    }
    let mut count = std::collections::HashMap::new();
    for &k in keys {
        *count.entry(k).or_insert(0usize) += 1;
    }
    let p = sampling.power();
    let weights: Vec<f64> = keys.iter().map(|k| (count[k] as f64).powf(-p)).collect();
    // Weights are positive and finite (counts are at least 1), so this cannot fail.
    let pick =
        rand::distr::weighted::WeightedIndex::new(&weights).expect("positive finite weights");
    use rand::distr::Distribution;
    (0..keys.len()).map(|_| pick.sample(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_p_classes_of_k_and_balance_a_skewed_set() {
        // 73% grade 0, as EyePACS; one grade-4 image.
        let mut labels = vec![0u8; 730];
        labels.extend(vec![1u8; 100]);
        labels.extend(vec![2u8; 150]);
        labels.extend(vec![3u8; 19]);
        labels.push(4);
        let b = pk_batches(&labels, 5, 4, 7, 0);
        assert_eq!(b.len(), 1000 / 20);
        let mut per_grade = [0usize; 5];
        for batch in &b {
            assert_eq!(batch.len(), 20);
            let mut grades: Vec<u8> = batch.iter().map(|&i| labels[i]).collect();
            for g in &grades {
                per_grade[*g as usize] += 1;
            }
            grades.dedup();
            assert_eq!(grades.len(), 5, "five grades of four, in blocks");
        }
        assert!(per_grade.iter().all(|&c| c == 200), "{per_grade:?}");
        // Deterministic per (seed, epoch), different across epochs.
        assert_eq!(b, pk_batches(&labels, 5, 4, 7, 0));
        assert_ne!(b, pk_batches(&labels, 5, 4, 7, 1));
        // Within a class, no image repeats before the pool is used up.
        let zeros: Vec<usize> = b
            .iter()
            .flatten()
            .copied()
            .filter(|&i| labels[i] == 0)
            .collect();
        let mut dedup = zeros.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), zeros.len());
    }

    #[test]
    fn fewer_classes_than_p() {
        let b = pk_batches(&[3, 3, 3, 1, 1], 4, 2, 1, 0);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 4, "p is capped at the two classes present");
        assert!(pk_batches(&[], 2, 2, 1, 0).is_empty());
    }

    #[test]
    fn weighted_epochs_follow_the_class_counts() {
        // 900 of class 0, 100 of class 1: balanced draws each class about half the time,
        // square-root sampling in the ratio sqrt(900) : sqrt(100) = 3 : 1.
        let mut keys = vec![0usize; 900];
        keys.extend(vec![1usize; 100]);
        let share = |s: Sampling| {
            let (mut ones, mut n) = (0usize, 0usize);
            for epoch in 0..20 {
                let o = epoch_order(&keys, s, 5, epoch);
                assert_eq!(o.len(), keys.len());
                ones += o.iter().filter(|&&i| keys[i] == 1).count();
                n += o.len();
            }
            ones as f64 / n as f64
        };
        let b = share(Sampling::Balanced);
        assert!((b - 0.5).abs() < 0.02, "balanced: {b}");
        let r = share(Sampling::Sqrt);
        assert!((r - 0.25).abs() < 0.02, "sqrt: {r}");
        // Uniform is a permutation: every image exactly once.
        let mut u = epoch_order(&keys, Sampling::Uniform, 5, 3);
        u.sort_unstable();
        assert_eq!(u, (0..keys.len()).collect::<Vec<_>>());
        assert_eq!(
            epoch_order(&keys, Sampling::Balanced, 5, 3),
            epoch_order(&keys, Sampling::Balanced, 5, 3)
        );
        assert_ne!(
            epoch_order(&keys, Sampling::Balanced, 5, 3),
            epoch_order(&keys, Sampling::Balanced, 5, 4)
        );
    }
}
