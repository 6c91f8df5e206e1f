//! Ranking a database for one query, with the documented tie rule: ascending distance,
//! ties broken by ascending database index, so results are reproducible.
//!
//! Hash codes of a few dozen bits tie a lot (whole classes can share a code), and an
//! order by index within a tie is arbitrary. [`rank_hamming_refined`] is the two-stage
//! rule: Hamming distance first, then, within equal distances, the squared Euclidean
//! distance between the relaxed codes (the hash layer's continuous outputs), then index.

use crate::codes::hamming;

/// One ranked database item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub index: usize,
    /// Hamming distance, or `1 - cosine` for float descriptors: smaller is closer.
    pub distance: f64,
}

/// Ranks every database code by Hamming distance to `query`.
///
/// Distances are small integers (`0..=bits`), so this is a counting sort: O(N + bits)
/// rather than O(N log N), and stable, which gives the index tie rule for free.
pub fn rank_hamming(query: &[u64], database: &[Vec<u64>], skip: Option<usize>) -> Vec<Ranked> {
    let bits = query.len() * 64;
    let dists: Vec<u32> = database.iter().map(|d| hamming(query, d)).collect();
    let mut counts = vec![0usize; bits + 2];
    for (i, &d) in dists.iter().enumerate() {
        if Some(i) != skip {
            counts[d as usize + 1] += 1;
        }
    }
    for b in 1..counts.len() {
        counts[b] += counts[b - 1];
    }
    let n = dists.len() - usize::from(skip.is_some_and(|s| s < dists.len()));
    let mut out = vec![
        Ranked {
            index: 0,
            distance: 0.0
        };
        n
    ];
    for (i, &d) in dists.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let slot = &mut counts[d as usize];
        out[*slot] = Ranked {
            index: i,
            distance: d as f64,
        };
        *slot += 1;
    }
    out
}

/// Squared Euclidean distance between two relaxed codes.
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Two-stage ranking: ascending Hamming distance between packed codes, ties broken by
/// ascending [`squared_l2`] between the relaxed codes `query_raw` and `database_raw[i]`,
/// then by index. `distance` stays the Hamming distance, so radius figures are those of
/// the codes alone.
pub fn rank_hamming_refined(
    query: &[u64],
    database: &[Vec<u64>],
    query_raw: &[f32],
    database_raw: &[Vec<f32>],
    skip: Option<usize>,
) -> Vec<Ranked> {
    debug_assert_eq!(database.len(), database_raw.len());
    let mut keyed: Vec<(u32, f32, usize)> = database
        .iter()
        .zip(database_raw)
        .enumerate()
        .filter(|&(i, _)| Some(i) != skip)
        .map(|(i, (c, r))| (hamming(query, c), squared_l2(query_raw, r), i))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    keyed
        .into_iter()
        .map(|(d, _, i)| Ranked {
            index: i,
            distance: d as f64,
        })
        .collect()
}

/// Ranks by similarity (higher first, e.g. cosine); ties by index. `distance` = `1 - s`.
pub fn rank_similarity(similarities: &[f32], skip: Option<usize>) -> Vec<Ranked> {
    let mut idx: Vec<usize> = (0..similarities.len())
        .filter(|&i| Some(i) != skip)
        .collect();
    idx.sort_by(|&a, &b| similarities[b].total_cmp(&similarities[a]).then(a.cmp(&b)));
    idx.into_iter()
        .map(|i| Ranked {
            index: i,
            distance: 1.0 - similarities[i] as f64,
        })
        .collect()
}

/// The probability ranking principle (Robertson 1977) for label-sharing relevance: a
/// ranking (Hamming, or any other) re-ordered by the probability that the query shares a
/// label with each case, `1 - prod over the case's labels c of (1 - p(c))`, with `p` the
/// query's class probabilities from the model's classifier and the case's labels from the
/// archive. The sort is stable, so cases with the same labels keep the order they had:
/// the diagnoses the query most probably has first, the most similar images first
/// within them. `distance` is kept. Labels beyond `p`'s length count as probability 0.
pub fn rerank_by_relevance_probability(
    ranking: &[Ranked],
    query_probabilities: &[f32],
    database_labels: &[Vec<u32>],
) -> Vec<Ranked> {
    let prob = |i: usize| -> f64 {
        let miss: f64 = database_labels[i]
            .iter()
            .map(|&c| 1.0 - query_probabilities.get(c as usize).copied().unwrap_or(0.0) as f64)
            .product();
        1.0 - miss
    };
    let mut keyed: Vec<(f64, Ranked)> = ranking.iter().map(|r| (prob(r.index), *r)).collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::pack_bits;

    fn code(bits: &[u8]) -> Vec<u64> {
        pack_bits(&bits.iter().map(|&b| b == 1).collect::<Vec<_>>())
    }

    #[test]
    fn refined_ranking_orders_ties_by_the_relaxed_codes() {
        // Database 0, 1 and 3 share the query's code; 2 is one bit away. By index the tie
        // would read 0, 1, 3; by relaxed distance to the query (0.9, -0.8) it is 3
        // (0.0002), 1 (0.25), 0 (1.22).
        let q = code(&[1, 0]);
        let db = vec![code(&[1, 0]), code(&[1, 0]), code(&[1, 1]), code(&[1, 0])];
        let raw = vec![
            vec![0.1, -0.1],
            vec![0.4, -0.8],
            vec![0.9, 0.1],
            vec![0.91, -0.79],
        ];
        let r = rank_hamming_refined(&q, &db, &[0.9, -0.8], &raw, None);
        let order: Vec<usize> = r.iter().map(|x| x.index).collect();
        assert_eq!(order, vec![3, 1, 0, 2]);
        assert_eq!(r[3].distance, 1.0, "distances stay Hamming distances");
        assert_eq!(
            rank_hamming(&q, &db, None)
                .iter()
                .map(|x| x.index)
                .collect::<Vec<_>>(),
            vec![0, 1, 3, 2]
        );
        // Skipping and equal relaxed codes fall back to the index.
        let same = vec![vec![0.5, -0.5]; 4];
        let r = rank_hamming_refined(&q, &db, &[0.9, -0.8], &same, Some(1));
        assert_eq!(r.iter().map(|x| x.index).collect::<Vec<_>>(), vec![0, 3, 2]);
    }

    #[test]
    fn refined_ranking_never_reorders_across_hamming_distances() {
        // Whatever the relaxed codes, a case at a smaller Hamming distance comes first.
        let q = code(&[0, 0, 0]);
        let db: Vec<Vec<u64>> = (0..8u8)
            .map(|i| code(&[i & 1, (i >> 1) & 1, (i >> 2) & 1]))
            .collect();
        let raw: Vec<Vec<f32>> = (0..8).map(|i| vec![i as f32 * -3.0; 3]).collect();
        let r = rank_hamming_refined(&q, &db, &[0.0; 3], &raw, None);
        assert!(r.windows(2).all(|w| w[0].distance <= w[1].distance));
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn relevance_probability_puts_likely_labels_first_and_keeps_order_within() {
        // Query: p = (0.7, 0.2, 0.5). Cases' labels and their hand-computed probability
        // of sharing one: {0} 0.7, {1} 0.2, {1, 2} 1 - 0.8 * 0.5 = 0.6, {} 0, {0} 0.7.
        let labels = vec![vec![1], vec![0], vec![1, 2], vec![], vec![0]];
        let by_hamming: Vec<Ranked> = [4, 3, 2, 1, 0]
            .iter()
            .enumerate()
            .map(|(d, &i)| Ranked {
                index: i,
                distance: d as f64,
            })
            .collect();
        let r = rerank_by_relevance_probability(&by_hamming, &[0.7, 0.2, 0.5], &labels);
        let order: Vec<usize> = r.iter().map(|x| x.index).collect();
        // 4 and 1 tie at 0.7 and keep their Hamming order (4 was nearer), then 2 (0.6),
        // then 0 (0.2), then 3 (no label).
        assert_eq!(order, vec![4, 1, 2, 0, 3]);
        assert_eq!(r[0].distance, 0.0, "distances are the original ones");
        assert_eq!(r[1].distance, 3.0);
    }
}
