//! The mask crop of AG-CNN (Guan et al., 2018) that turns the global network's saliency
//! map into the local network's input: threshold the map (a fixed level, 0.7 by default,
//! or Otsu's), keep the largest 8-connected component, take its bounding box, add a margin,
//! enforce a minimum size, crop the image and resize it to the network's input.
//!
//! An empty map (nothing above the threshold, or a constant map) falls back to the whole
//! image; the caller counts those fallbacks.

use serde::{Deserialize, Serialize};

/// How the saliency map is binarised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Keep pixels `>= level` (maps are min-max normalised to `[0, 1]`).
    Fixed(f32),
    /// Otsu's threshold of the map's 256-bin histogram.
    Otsu,
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("otsu") {
            return Ok(Threshold::Otsu);
        }
        match s.parse::<f32>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(Threshold::Fixed(v)),
            _ => Err(format!(
                "crop threshold `{s}`: expected a number in [0, 1] or `otsu`"
            )),
        }
    }
}

/// Crop settings. Margin and minimum size are fractions of the image side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropConfig {
    pub threshold: Threshold,
    /// Added on every side of the component's box.
    pub margin: f32,
    /// The box is grown around its centre to at least this fraction of each side.
    pub min_size: f32,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig {
            threshold: Threshold::Fixed(0.7),
            margin: 0.05,
            min_size: 0.25,
        }
    }
}

/// A box in pixel coordinates: columns `x..x + w`, rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

impl CropBox {
    pub fn whole(h: usize, w: usize) -> Self {
        CropBox { x: 0, y: 0, w, h }
    }

    pub fn contains(&self, row: usize, col: usize) -> bool {
        (self.y..self.y + self.h).contains(&row) && (self.x..self.x + self.w).contains(&col)
    }

    /// Fraction of the `h x w` image the box covers.
    pub fn area_fraction(&self, h: usize, w: usize) -> f64 {
        (self.w * self.h) as f64 / (w * h).max(1) as f64
    }
}

/// Otsu's threshold of values in `[0, 1]` (256 bins): the level that maximises the
/// between-class variance. Returns the lower edge of the first bin of the upper class.
pub fn otsu_threshold(map: &[f32]) -> f32 {
    const BINS: usize = 256;
    let mut hist = [0usize; BINS];
    for &v in map {
        let b = ((v.clamp(0.0, 1.0) * (BINS - 1) as f32).round()) as usize;
        hist[b] += 1;
    }
    let total = map.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0) = (0.0f64, 0.0f64);
    let (mut best, mut best_t) = (-1.0f64, 0usize);
    for (t, &c) in hist.iter().enumerate().take(BINS - 1) {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    (best_t + 1) as f32 / (BINS - 1) as f32
}

/// The pixels (row-major indices) of the largest 8-connected component of `mask`; ties go
/// to the component met first in row-major order. Empty when the mask is.
pub fn largest_component(mask: &[bool], h: usize, w: usize) -> Vec<usize> {
    let mut label = vec![false; mask.len()];
    let mut best: Vec<usize> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] {
            continue;
        }
        let mut comp = Vec::new();
        label[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (r, c) = ((i / w) as isize, (i % w) as isize);
            for dr in -1..=1 {
                for dc in -1..=1 {
                    let (rr, cc) = (r + dr, c + dc);
                    if rr < 0 || cc < 0 || rr >= h as isize || cc >= w as isize {
                        continue;
                    }
                    let j = rr as usize * w + cc as usize;
                    if mask[j] && !label[j] {
                        label[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if comp.len() > best.len() {
            best = comp;
        }
    }
    best
}

/// The crop box of a `h x w` map with values in `[0, 1]`, and whether it fell back to the
/// whole image (an empty map).
pub fn crop_box(map: &[f32], h: usize, w: usize, cfg: &CropConfig) -> (CropBox, bool) {
    assert_eq!(map.len(), h * w, "map size");
    // NaNs are skipped by `f32::max`; an all-NaN or non-positive map is empty.
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max <= 0.0 {
        return (CropBox::whole(h, w), true);
    }
    let level = match cfg.threshold {
        Threshold::Fixed(t) => t,
        Threshold::Otsu => otsu_threshold(map),
    };
    let mask: Vec<bool> = map.iter().map(|&v| v >= level && v > 0.0).collect();
    let comp = largest_component(&mask, h, w);
    if comp.is_empty() {
        return (CropBox::whole(h, w), true);
    }
    let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
    for &i in &comp {
        let (r, c) = (i / w, i % w);
        r0 = r0.min(r);
        r1 = r1.max(r);
        c0 = c0.min(c);
        c1 = c1.max(c);
    }
    let (y0, y1) = grow((r0, r1 + 1), h, cfg.margin, cfg.min_size);
    let (x0, x1) = grow((c0, c1 + 1), w, cfg.margin, cfg.min_size);
    (
        CropBox {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        },
        false,
    )
}

/// Grows the half-open span `lo..hi` of an axis of length `n` by `margin * n` on each side,
/// then around its centre to at least `min_size * n`, shifted to stay inside `0..n`.
fn grow((lo, hi): (usize, usize), n: usize, margin: f32, min_size: f32) -> (usize, usize) {
    let m = (margin * n as f32).round() as usize;
    let (mut lo, mut hi) = (lo.saturating_sub(m), (hi + m).min(n));
    let min = ((min_size * n as f32).round() as usize).clamp(1, n);
    if hi - lo < min {
        let centre2 = lo + hi; // twice the centre, to stay in integers
        let mut new_lo = (centre2.saturating_sub(min)) / 2;
        if new_lo + min > n {
            new_lo = n - min;
        }
        lo = new_lo;
        hi = new_lo + min;
    }
    (lo, hi)
}

/// Crops `bx` out of a CHW image (`c x h x w`, row-major) and resizes it bilinearly (half-
/// pixel centres) to `oh x ow`.
pub fn crop_resize(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    bx: &CropBox,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    assert_eq!(img.len(), c * h * w, "image size");
    assert!(
        bx.w > 0 && bx.h > 0 && bx.x + bx.w <= w && bx.y + bx.h <= h,
        "box inside the image"
    );
    let mut out = vec![0.0f32; c * oh * ow];
    let (sy, sx) = (bx.h as f32 / oh as f32, bx.w as f32 / ow as f32);
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (bx.h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(bx.h - 1);
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (bx.w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(bx.w - 1);
            for ch in 0..c {
                let at = |r: usize, col: usize| img[(ch * h + bx.y + r) * w + bx.x + col];
                let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
                let bot = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
                out[(ch * oh + y) * ow + x] = top * (1.0 - ty) + bot * ty;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with(h: usize, w: usize, cells: &[(usize, usize, f32)]) -> Vec<f32> {
        let mut m = vec![0.0; h * w];
        for &(r, c, v) in cells {
            m[r * w + c] = v;
        }
        m
    }

    const NO_GROW: CropConfig = CropConfig {
        threshold: Threshold::Fixed(0.7),
        margin: 0.0,
        min_size: 0.0,
    };

    #[test]
    fn threshold_and_largest_component() {
        // Two blobs above 0.7: a 2x2 one at (1..3, 1..3) and a 3-pixel diagonal (8-connected)
        // at (6,6),(7,7),(8,8) plus (8,9): 4 pixels, so the diagonal one wins over the square
        // only if 8-connectivity joins it. Square = 4 too: ties go to the first in row-major
        // order, so add a fifth diagonal pixel.
        let m = map_with(
            10,
            10,
            &[
                (1, 1, 0.9),
                (1, 2, 0.8),
                (2, 1, 1.0),
                (2, 2, 0.75),
                (5, 5, 0.71),
                (6, 6, 0.9),
                (7, 7, 0.9),
                (8, 8, 0.9),
                (8, 9, 0.8),
                (0, 9, 0.69), // below the threshold
            ],
        );
        let (b, fell_back) = crop_box(&m, 10, 10, &NO_GROW);
        assert!(!fell_back);
        assert_eq!(
            b,
            CropBox {
                x: 5,
                y: 5,
                w: 5,
                h: 4
            }
        );
        // With 4-connectivity the diagonal would split; 8-connected it is one component.
        let mask: Vec<bool> = m.iter().map(|&v| v >= 0.7).collect();
        assert_eq!(largest_component(&mask, 10, 10).len(), 5);
    }

    #[test]
    fn margin_and_minimum_size() {
        let m = map_with(20, 20, &[(10, 10, 1.0)]);
        let cfg = CropConfig {
            threshold: Threshold::Fixed(0.5),
            margin: 0.1,
            min_size: 0.0,
        };
        // One pixel, 2-pixel margin each side: rows and columns 8..13.
        assert_eq!(
            crop_box(&m, 20, 20, &cfg).0,
            CropBox {
                x: 8,
                y: 8,
                w: 5,
                h: 5
            }
        );
        let cfg = CropConfig {
            min_size: 0.5,
            ..cfg
        };
        // Grown around the centre (twice-centre 21 -> lo (21 - 10) / 2 = 5) to 10 pixels.
        assert_eq!(
            crop_box(&m, 20, 20, &cfg).0,
            CropBox {
                x: 5,
                y: 5,
                w: 10,
                h: 10
            }
        );
        // Near the border the grown box is shifted inside the image.
        let m = map_with(20, 20, &[(0, 19, 1.0)]);
        assert_eq!(
            crop_box(&m, 20, 20, &cfg).0,
            CropBox {
                x: 10,
                y: 0,
                w: 10,
                h: 10
            }
        );
    }

    #[test]
    fn empty_maps_fall_back_to_the_whole_image() {
        let zero = vec![0.0; 16];
        assert_eq!(
            crop_box(&zero, 4, 4, &NO_GROW),
            (CropBox::whole(4, 4), true)
        );
        let low = vec![0.3; 16];
        assert_eq!(crop_box(&low, 4, 4, &NO_GROW), (CropBox::whole(4, 4), true));
        let nan = vec![f32::NAN; 16];
        assert!(crop_box(&nan, 4, 4, &NO_GROW).1);
    }

    #[test]
    fn otsu_splits_two_modes() {
        // 70% of pixels near 0.1, 30% near 0.8: the threshold lies between the modes.
        let mut m = vec![0.1f32; 70];
        m.extend(vec![0.8f32; 30]);
        let t = otsu_threshold(&m);
        assert!(t > 0.1 && t <= 0.8, "{t}");
        let cfg = CropConfig {
            threshold: Threshold::Otsu,
            ..NO_GROW
        };
        // As a 10x10 map the upper class is the last three rows.
        assert_eq!(
            crop_box(&m, 10, 10, &cfg).0,
            CropBox {
                x: 0,
                y: 7,
                w: 10,
                h: 3
            }
        );
        assert_eq!("otsu".parse::<Threshold>().unwrap(), Threshold::Otsu);
        assert_eq!("0.6".parse::<Threshold>().unwrap(), Threshold::Fixed(0.6));
        assert!("1.5".parse::<Threshold>().is_err());
    }

    #[test]
    fn crop_resize_picks_the_box() {
        // 1 channel 4x4 ramp; crop the 2x2 box at (1, 2) and resize to 2x2: identity.
        let img: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let b = CropBox {
            x: 2,
            y: 1,
            w: 2,
            h: 2,
        };
        assert_eq!(
            crop_resize(&img, 1, 4, 4, &b, 2, 2),
            vec![6.0, 7.0, 10.0, 11.0]
        );
        // Upsampling a 1-pixel box gives a constant.
        let b = CropBox {
            x: 3,
            y: 3,
            w: 1,
            h: 1,
        };
        assert_eq!(crop_resize(&img, 1, 4, 4, &b, 3, 3), vec![15.0; 9]);
        // Whole image at the same size is the identity, channel by channel.
        let img3: Vec<f32> = (0..48).map(|v| v as f32).collect();
        assert_eq!(
            crop_resize(&img3, 3, 4, 4, &CropBox::whole(4, 4), 4, 4),
            img3
        );
    }
}
