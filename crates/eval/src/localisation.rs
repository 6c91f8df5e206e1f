//! How well an explanation localises a lesion, against a random explanation of the same
//! size: for a crop box, whether it contains the lesion's centroid and what fraction of the
//! lesion's pixels it holds; for a random box of the same size placed uniformly in the
//! image, the exact expectations of both.

/// A box in pixels: columns `x..x + w`, rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBox {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Scores of one box against one lesion mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxScore {
    pub centroid_in_box: bool,
    pub lesion_fraction_in_box: f64,
    /// Probability that a uniformly placed box of the same size contains the centroid.
    pub random_centroid: f64,
    /// Expected lesion fraction inside a uniformly placed box of the same size.
    pub random_lesion_fraction: f64,
}

/// `None` when the mask is empty.
pub fn box_score(mask: &[bool], h: usize, w: usize, b: PixelBox) -> Option<BoxScore> {
    assert_eq!(mask.len(), h * w, "mask size");
    let pixels: Vec<(usize, usize)> = (0..h * w)
        .filter(|&i| mask[i])
        .map(|i| (i / w, i % w))
        .collect();
    if pixels.is_empty() || b.w == 0 || b.h == 0 || b.w > w || b.h > h {
        return None;
    }
    let n = pixels.len() as f64;
    let (cr, cc) = pixels.iter().fold((0.0, 0.0), |(a, c), &(r, col)| {
        (a + r as f64, c + col as f64)
    });
    let (cr, cc) = ((cr / n).round() as usize, (cc / n).round() as usize);
    let inside =
        |r: usize, c: usize| (b.y..b.y + b.h).contains(&r) && (b.x..b.x + b.w).contains(&c);
    // Placements of the box along an axis of length `len` that cover coordinate `p`.
    let covering = |p: usize, side: usize, len: usize| -> f64 {
        let lo = p.saturating_sub(side - 1);
        let hi = p.min(len - side);
        if hi >= lo { (hi - lo + 1) as f64 } else { 0.0 }
    };
    let total = ((h - b.h + 1) * (w - b.w + 1)) as f64;
    let p_cover = |r: usize, c: usize| covering(r, b.h, h) * covering(c, b.w, w) / total;
    Some(BoxScore {
        centroid_in_box: inside(cr, cc),
        lesion_fraction_in_box: pixels.iter().filter(|&&(r, c)| inside(r, c)).count() as f64 / n,
        random_centroid: p_cover(cr, cc),
        random_lesion_fraction: pixels.iter().map(|&(r, c)| p_cover(r, c)).sum::<f64>() / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_on_a_4x4_image() {
        // Lesion: the 2x2 block at rows 0-1, columns 0-1; centroid (0.5, 0.5) rounds to (1, 1).
        let mut m = vec![false; 16];
        for i in [0, 1, 4, 5] {
            m[i] = true;
        }
        let b = PixelBox {
            x: 0,
            y: 0,
            w: 2,
            h: 2,
        };
        let s = box_score(&m, 4, 4, b).unwrap();
        assert!(s.centroid_in_box);
        assert_eq!(s.lesion_fraction_in_box, 1.0);
        // A 2x2 box has 3 x 3 = 9 placements. Pixel (1, 1) is covered by rows 0-1 and
        // columns 0-1 starts: 4 of 9. Pixel (0, 0): 1 of 9; (0, 1) and (1, 0): 2 of 9.
        assert!((s.random_centroid - 4.0 / 9.0).abs() < 1e-12);
        assert!((s.random_lesion_fraction - (1.0 + 2.0 + 2.0 + 4.0) / 9.0 / 4.0).abs() < 1e-12);
        // A box elsewhere misses it.
        let s = box_score(
            &m,
            4,
            4,
            PixelBox {
                x: 2,
                y: 2,
                w: 2,
                h: 2,
            },
        )
        .unwrap();
        assert!(!s.centroid_in_box);
        assert_eq!(s.lesion_fraction_in_box, 0.0);
        // The whole image always contains everything.
        let s = box_score(
            &m,
            4,
            4,
            PixelBox {
                x: 0,
                y: 0,
                w: 4,
                h: 4,
            },
        )
        .unwrap();
        assert_eq!((s.random_centroid, s.random_lesion_fraction), (1.0, 1.0));
        assert!(box_score(&[false; 16], 4, 4, b).is_none());
    }
}
