//! The one transform pipeline every reader feeds: decode, grey/RGB, fundus disc crop,
//! resize, augment, normalise. Deterministic under a seed: each (epoch, index) pair gets its
//! own RNG stream, so parallel loading gives the same images as serial loading.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::decode::load_image;
use crate::error::Result;
use crate::image_buf::ImageF32;
use crate::phantom::draw::mix_seed;
use crate::record::Record;

/// Output channel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// As decoded.
    #[default]
    Keep,
    Grey,
    Rgb,
}

/// Per-channel normalisation `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// torchvision's ImageNet statistics.
    pub fn imagenet() -> Self {
        Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }
}

/// Augmentations (all off by default). Probabilities in `[0, 1]`, angles in degrees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Augment {
    /// Random resized crop: area scale range, e.g. `(0.2, 1.0)` as in C2L; aspect ratio in
    /// `[3/4, 4/3]` as in torchvision.
    pub random_resized_crop: Option<(f32, f32)>,
    pub hflip: f32,
    pub vflip: f32,
    /// Uniform rotation in `[-deg, deg]`, bilinear, zero fill.
    pub rotation_deg: f32,
    /// Brightness factor in `[1-b, 1+b]`.
    pub brightness: f32,
    /// Contrast factor in `[1-c, 1+c]` around the image mean.
    pub contrast: f32,
    /// Saturation factor in `[1-s, 1+s]` (RGB only).
    pub saturation: f32,
    /// Cutout: probability and side as a fraction of the shorter side.
    pub cutout: Option<(f32, f32)>,
}

/// The whole pipeline's settings, saved beside every checkpoint later on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformConfig {
    /// Output side (square). An image already at this size is not resized.
    pub size: usize,
    pub channels: Channels,
    /// Crop fundus photographs to the retina disc before resizing.
    pub fundus_crop: bool,
    pub augment: Augment,
    pub normalize: Option<Normalize>,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            size: 224,
            channels: Channels::Keep,
            fundus_crop: false,
            augment: Augment::default(),
            normalize: None,
        }
    }
}

/// Crops to the bounding box of pixels brighter than `threshold` (max over channels), the
/// retina disc of a fundus photograph on its black background, then pads to a square.
/// Returns the image unchanged when nothing exceeds the threshold.
pub fn fundus_disc_crop(img: &ImageF32, threshold: f32) -> ImageF32 {
    let (h, w) = (img.height, img.width);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let v = (0..img.channels)
                .map(|c| img.get(c, y, x))
                .fold(0.0f32, f32::max);
            if v > threshold {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if x0 > x1 {
        return img.clone();
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let side = cw.max(ch);
    let mut out = ImageF32::new(img.channels, side, side);
    let (ox, oy) = ((side - cw) / 2, (side - ch) / 2);
    for c in 0..img.channels {
        for y in 0..ch {
            for x in 0..cw {
                out.set(c, oy + y, ox + x, img.get(c, y0 + y, x0 + x));
            }
        }
    }
    out
}

/// Crops `(x, y, w, h)` (clipped to the image).
pub fn crop(img: &ImageF32, x: usize, y: usize, w: usize, h: usize) -> ImageF32 {
    let x = x.min(img.width.saturating_sub(1));
    let y = y.min(img.height.saturating_sub(1));
    let w = w.min(img.width - x).max(1);
    let h = h.min(img.height - y).max(1);
    let mut out = ImageF32::new(img.channels, h, w);
    for c in 0..img.channels {
        for yy in 0..h {
            let src = &img.plane(c)[(y + yy) * img.width + x..(y + yy) * img.width + x + w];
            out.plane_mut(c)[yy * w..(yy + 1) * w].copy_from_slice(src);
        }
    }
    out
}

/// Resizes with a triangle (bilinear, area-aware when shrinking) filter: the `image`
/// crate's `resize` with `FilterType::Triangle`, the same taps, weights and order of
/// additions, so its outputs are equal bit for bit (`tests/transforms.rs` checks it), and
/// models trained before keep their inputs.
///
/// Why not the crate's function: it converts every sample to four channels and computes
/// each output pixel's taps one `get_pixel` at a time; on a 1024 px radiograph shrunk to
/// 96 px it was 58% of encoding an archive (perf). Here the vertical pass adds whole rows
/// (vectorised), each plane is read in place, and the taps are computed once per axis.
pub fn resize(img: &ImageF32, height: usize, width: usize) -> ImageF32 {
    if img.height == height && img.width == width {
        return img.clone();
    }
    let mut out = ImageF32::new(img.channels, height, width);
    if img.height == 0 || img.width == 0 {
        return out;
    }
    let rows = triangle_taps(img.height, height);
    let cols = triangle_taps(img.width, width);
    let mut tmp = vec![0f32; img.width * height];
    for c in 0..img.channels {
        let src = img.plane(c);
        for (row, (first, ws)) in tmp.chunks_exact_mut(img.width).zip(&rows) {
            row.fill(0.0);
            for (k, &w) in ws.iter().enumerate() {
                let line = &src[(first + k) * img.width..(first + k + 1) * img.width];
                for (t, &v) in row.iter_mut().zip(line) {
                    *t += v * w;
                }
            }
        }
        for (dst, line) in out
            .plane_mut(c)
            .chunks_exact_mut(width)
            .zip(tmp.chunks_exact(img.width))
        {
            for (d, (first, ws)) in dst.iter_mut().zip(&cols) {
                let mut t = 0.0f32;
                for (&w, &v) in ws.iter().zip(&line[*first..]) {
                    t += v * w;
                }
                // The crate clamps to f32's nominal range when it writes the result.
                *d = t.clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// For each output position along an axis of `from` samples shrunk or grown to `to`: the
/// first input sample and the normalised triangle weights, computed as `image` 0.25 does.
fn triangle_taps(from: usize, to: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = from as f32 / to as f32;
    let sratio = ratio.max(1.0);
    let support = sratio;
    (0..to)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, from as i64 - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, from as i64);
            let centre = centre - 0.5;
            let mut ws: Vec<f32> = (left..right)
                .map(|i| {
                    let x = ((i as f32 - centre) / sratio).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let sum: f32 = ws.iter().fold(0.0, |a, &w| a + w);
            for w in &mut ws {
                *w /= sum;
            }
            (left as usize, ws)
        })
        .collect()
}

pub fn hflip(img: &ImageF32) -> ImageF32 {
    let mut out = img.clone();
    for c in 0..img.channels {
        for row in out.plane_mut(c).chunks_mut(img.width) {
            row.reverse();
        }
    }
    out
}

pub fn vflip(img: &ImageF32) -> ImageF32 {
    let mut out = img.clone();
    let w = img.width;
    for c in 0..img.channels {
        let src = img.plane(c);
        let dst = out.plane_mut(c);
        for y in 0..img.height {
            let sy = img.height - 1 - y;
            dst[y * w..(y + 1) * w].copy_from_slice(&src[sy * w..(sy + 1) * w]);
        }
    }
    out
}

/// Rotates by `deg` degrees (counter-clockwise on screen) about the centre, bilinear,
/// zero outside.
pub fn rotate(img: &ImageF32, deg: f32) -> ImageF32 {
    let (s, c) = deg.to_radians().sin_cos();
    let (cx, cy) = (
        (img.width as f32 - 1.0) / 2.0,
        (img.height as f32 - 1.0) / 2.0,
    );
    let mut out = ImageF32::new(img.channels, img.height, img.width);
    for y in 0..img.height {
        for x in 0..img.width {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            // Inverse mapping: where in the source does this output pixel come from.
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            if sx < 0.0 || sy < 0.0 || sx > (img.width - 1) as f32 || sy > (img.height - 1) as f32 {
                continue;
            }
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(img.width - 1), (y0 + 1).min(img.height - 1));
            let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
            for ch in 0..img.channels {
                let v = img.get(ch, y0, x0) * (1.0 - tx) * (1.0 - ty)
                    + img.get(ch, y0, x1) * tx * (1.0 - ty)
                    + img.get(ch, y1, x0) * (1.0 - tx) * ty
                    + img.get(ch, y1, x1) * tx * ty;
                out.set(ch, y, x, v);
            }
        }
    }
    out
}

/// torchvision's RandomResizedCrop box: up to 10 tries at a random area and log-uniform
/// aspect ratio, then a centre crop.
pub fn random_resized_crop_box<R: Rng>(
    rng: &mut R,
    h: usize,
    w: usize,
    scale: (f32, f32),
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f32;
    let (lr0, lr1) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let ratio = rng.random_range(lr0..=lr1).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return (x, y, cw, ch);
        }
    }
    let side = h.min(w);
    ((w - side) / 2, (h - side) / 2, side, side)
}

/// Applies brightness, contrast and saturation factors (torchvision's order), clamped.
/// A factor of exactly 1 leaves the image bit-for-bit unchanged.
pub fn colour_jitter(img: &mut ImageF32, brightness: f32, contrast: f32, saturation: f32) {
    if brightness != 1.0 {
        for v in &mut img.data {
            *v = (*v * brightness).clamp(0.0, 1.0);
        }
    }
    if contrast != 1.0 {
        let mean = img.to_grey().mean();
        for v in &mut img.data {
            *v = (mean + (*v - mean) * contrast).clamp(0.0, 1.0);
        }
    }
    if img.channels == 3 && saturation != 1.0 {
        let g = img.to_grey();
        let n = img.height * img.width;
        for c in 0..3 {
            for i in 0..n {
                let v = &mut img.data[c * n + i];
                *v = (g.data[i] + (*v - g.data[i]) * saturation).clamp(0.0, 1.0);
            }
        }
    }
}

/// Zeroes a `side x side` square centred at `(cx, cy)` (clipped at the borders).
pub fn cutout(img: &mut ImageF32, cx: usize, cy: usize, side: usize) {
    let half = side / 2;
    let (x0, y0) = (cx.saturating_sub(half), cy.saturating_sub(half));
    let (x1, y1) = (
        (cx + side - half).min(img.width),
        (cy + side - half).min(img.height),
    );
    for c in 0..img.channels {
        for y in y0..y1 {
            for x in x0..x1 {
                img.set(c, y, x, 0.0);
            }
        }
    }
}

/// The transform pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub config: TransformConfig,
    pub seed: u64,
}

impl Pipeline {
    pub fn new(config: TransformConfig, seed: u64) -> Self {
        Pipeline { config, seed }
    }

    /// Decodes and transforms one record; `epoch` and `index` select its random stream.
    pub fn load(&self, record: &Record, epoch: u64, index: u64) -> Result<ImageF32> {
        let img = load_image(&record.source)?;
        Ok(self.apply(img, epoch, index))
    }

    /// Transforms a decoded image.
    pub fn apply(&self, mut img: ImageF32, epoch: u64, index: u64) -> ImageF32 {
        let cfg = &self.config;
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, epoch, index));
        // A grey image for an RGB network is resized once and repeated after, not resized
        // three times (each plane is resized alike, so the result is the same bit for bit);
        // the fundus crop looks at colour, so it sees the repeated planes as before.
        let grey_to_rgb = cfg.channels == Channels::Rgb && img.channels == 1 && !cfg.fundus_crop;
        img = match cfg.channels {
            Channels::Keep => img,
            Channels::Grey if img.channels == 1 => img,
            Channels::Grey => img.to_grey(),
            Channels::Rgb if grey_to_rgb => img,
            Channels::Rgb => img.to_rgb(),
        };
        if cfg.fundus_crop {
            img = fundus_disc_crop(&img, 0.06);
        }
        let a = &cfg.augment;
        if let Some(scale) = a.random_resized_crop {
            let (x, y, w, h) = random_resized_crop_box(&mut rng, img.height, img.width, scale);
            img = crop(&img, x, y, w, h);
        }
        img = resize(&img, cfg.size, cfg.size);
        if grey_to_rgb {
            img = img.to_rgb();
        }
        if a.hflip > 0.0 && rng.random::<f32>() < a.hflip {
            img = hflip(&img);
        }
        if a.vflip > 0.0 && rng.random::<f32>() < a.vflip {
            img = vflip(&img);
        }
        if a.rotation_deg > 0.0 {
            let deg = rng.random_range(-a.rotation_deg..=a.rotation_deg);
            img = rotate(&img, deg);
        }
        if a.brightness > 0.0 || a.contrast > 0.0 || a.saturation > 0.0 {
            let f = |rng: &mut ChaCha8Rng, r: f32| {
                if r > 0.0 {
                    rng.random_range(1.0 - r..=1.0 + r)
                } else {
                    1.0
                }
            };
            let (b, c, s) = (
                f(&mut rng, a.brightness),
                f(&mut rng, a.contrast),
                f(&mut rng, a.saturation),
            );
            colour_jitter(&mut img, b, c, s);
        }
        if let Some((p, frac)) = a.cutout
            && rng.random::<f32>() < p
        {
            let side = ((img.height.min(img.width) as f32) * frac).round() as usize;
            let (cx, cy) = (
                rng.random_range(0..img.width),
                rng.random_range(0..img.height),
            );
            cutout(&mut img, cx, cy, side);
        }
        if let Some(n) = &cfg.normalize {
            let plane = img.height * img.width;
            for c in 0..img.channels {
                let (m, s) = (n.mean[c % n.mean.len()], n.std[c % n.std.len()]);
                for v in &mut img.data[c * plane..(c + 1) * plane] {
                    *v = (*v - m) / s;
                }
            }
        }
        img
    }
}

/// Each record as `size x size` grey pixels in `[0, 1]`, flattened, decoded in parallel:
/// the input of the raw-pixel retrieval baselines (LSH, ITQ), shared by the training
/// report and `medret eval` so both score the same thing.
pub fn grey_thumbnails(records: &[Record], size: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    use rayon::prelude::*;
    let pixels = Pipeline::new(
        TransformConfig {
            size,
            channels: Channels::Grey,
            ..Default::default()
        },
        seed,
    );
    records
        .par_iter()
        .map(|r| Ok(pixels.load(r, 0, 0)?.data))
        .collect()
}
