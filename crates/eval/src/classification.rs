//! Classification metrics for the training engine's validation: ROC AUC (one label, macro
//! over labels, one-vs-rest over grades) and Cohen's quadratic weighted kappa, the usual
//! agreement score for ordinal DR grades (the Kaggle EyePACS metric).

/// Area under the ROC curve of `scores` against binary `positive`, as the Mann-Whitney
/// statistic with tied scores counted one half (average ranks). `None` when one class is
/// absent (the AUC is undefined there, not 0.5).
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks, ties sharing their average rank (1-based).
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        let pos_in_tie = order[i..=j].iter().filter(|&&k| positive[k]).count();
        rank_sum += avg_rank * pos_in_tie as f64;
        i = j + 1;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Per-label AUC of an `N x L` row-major score matrix against an `N x L` 0/1 target
/// matrix, and their mean over the labels where it is defined (`None` if none is).
pub fn macro_auc(
    scores: &[f32],
    targets: &[f32],
    labels: usize,
) -> (Vec<Option<f64>>, Option<f64>) {
    assert_eq!(scores.len(), targets.len());
    assert!(labels > 0 && scores.len().is_multiple_of(labels));
    let per: Vec<Option<f64>> = (0..labels)
        .map(|l| {
            let s: Vec<f32> = scores.iter().skip(l).step_by(labels).copied().collect();
            let p: Vec<bool> = targets
                .iter()
                .skip(l)
                .step_by(labels)
                .map(|&t| t > 0.5)
                .collect();
            roc_auc(&s, &p)
        })
        .collect();
    let defined: Vec<f64> = per.iter().flatten().copied().collect();
    let mean = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    (per, mean)
}

/// Cohen's kappa with quadratic weights between two gradings over `classes` ordinal
/// classes: 1 is perfect agreement, 0 chance level. `None` when the expected disagreement
/// is zero (both raters constant on the same class).
pub fn quadratic_weighted_kappa(truth: &[usize], pred: &[usize], classes: usize) -> Option<f64> {
    assert_eq!(truth.len(), pred.len());
    if truth.is_empty() || classes < 2 {
        return None;
    }
    let n = truth.len() as f64;
    let mut observed = vec![0.0f64; classes * classes];
    let mut hist_t = vec![0.0f64; classes];
    let mut hist_p = vec![0.0f64; classes];
    for (&t, &p) in truth.iter().zip(pred) {
        assert!(t < classes && p < classes, "grade outside 0..{classes}");
        observed[t * classes + p] += 1.0;
        hist_t[t] += 1.0;
        hist_p[p] += 1.0;
    }
    let denom = ((classes - 1) * (classes - 1)) as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..classes {
        for j in 0..classes {
            let w = ((i as f64 - j as f64).powi(2)) / denom;
            num += w * observed[i * classes + j];
            den += w * hist_t[i] * hist_p[j] / n;
        }
    }
    (den > 0.0).then(|| 1.0 - num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_hand_computed() {
        // Positives at 0.8 and 0.4, negatives at 0.6, 0.2: pairs (0.8>0.6), (0.8>0.2),
        // (0.4<0.6), (0.4>0.2) -> 3 of 4.
        let auc = roc_auc(&[0.8, 0.6, 0.4, 0.2], &[true, false, true, false]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        // Perfect and reversed rankings.
        assert_eq!(roc_auc(&[0.9, 0.1], &[true, false]), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.9], &[true, false]), Some(0.0));
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // One positive tied with one negative at 0.5, and above another negative at 0.1:
        // (tie: 0.5) + (win: 1) over 2 pairs = 0.75.
        let auc = roc_auc(&[0.5, 0.5, 0.1], &[true, false, false]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        // All scores equal: chance.
        assert_eq!(roc_auc(&[0.3; 4], &[true, false, true, false]), Some(0.5));
    }

    #[test]
    fn auc_undefined_with_one_class() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn auc_matches_pair_counting_on_random_data() {
        // Independent reference: the O(n^2) definition.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let n = 200;
        let scores: Vec<f32> = (0..n).map(|_| (next() % 17) as f32 / 16.0).collect();
        let pos: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                if pos[i] && !pos[j] {
                    pairs += 1.0;
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        let auc = roc_auc(&scores, &pos).unwrap();
        assert!(
            (auc - wins / pairs).abs() < 1e-12,
            "{auc} vs {}",
            wins / pairs
        );
    }

    #[test]
    fn macro_auc_skips_undefined_labels() {
        // Label 0: perfect; label 1: all negative (undefined); label 2: reversed.
        let scores = [0.9, 0.1, 0.1, 0.1, 0.2, 0.9];
        let targets = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let (per, mean) = macro_auc(&scores, &targets, 3);
        assert_eq!(per, vec![Some(1.0), None, Some(1.0)]);
        assert_eq!(mean, Some(1.0));
        let (_, mean) = macro_auc(&[0.1, 0.9, 0.9, 0.1], &[1.0, 0.0, 0.0, 0.0], 2);
        // Label 0: the positive scores lower -> 0; label 1 undefined.
        assert_eq!(mean, Some(0.0));
    }

    #[test]
    fn kappa_hand_computed() {
        assert_eq!(
            quadratic_weighted_kappa(&[0, 1, 2], &[0, 1, 2], 3),
            Some(1.0)
        );
        // truth [0,0,1,1], pred [0,1,1,1], 2 classes (w = 0 on the diagonal, 1 off it):
        // observed disagreement 1; expected = sum_{i!=j} h_t[i] h_p[j] / n
        // = (2*3 + 2*1) / 4 = 2; kappa = 1 - 1/2.
        let k = quadratic_weighted_kappa(&[0, 0, 1, 1], &[0, 1, 1, 1], 2).unwrap();
        assert!((k - 0.5).abs() < 1e-12);
        // Constant on both sides: undefined.
        assert_eq!(quadratic_weighted_kappa(&[1, 1], &[1, 1], 3), None);
    }

    #[test]
    fn kappa_weights_far_errors_more() {
        let truth = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4];
        let near = [1, 1, 2, 3, 4, 0, 1, 2, 3, 4];
        let far = [4, 1, 2, 3, 4, 0, 1, 2, 3, 4];
        let kn = quadratic_weighted_kappa(&truth, &near, 5).unwrap();
        let kf = quadratic_weighted_kappa(&truth, &far, 5).unwrap();
        assert!(kn > kf, "{kn} should exceed {kf}");
    }
}
