//! Ranking a database for one query, with the documented tie rule: ascending distance,
//! ties broken by ascending database index, so results are reproducible.

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
