//! Explanations as images: the query's saliency overlay with its crop box, and each
//! result's, written as PNG files.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use medret_data::ImageF32;
use medret_models::cxr_hash::cam_crop::CropBox;
use medret_models::encoder::Encoder;

use crate::error::{Result, SearchError};
use crate::query::Hit;

/// Draws a 2-pixel rectangle outline.
pub fn draw_box(img: &mut RgbImage, b: &CropBox, colour: [u8; 3]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if b.w == 0 || b.h == 0 {
        return;
    }
    let (x1, y1) = ((b.x + b.w - 1).min(w - 1), (b.y + b.h - 1).min(h - 1));
    for t in 0..2usize {
        for x in b.x..=x1 {
            for y in [b.y + t, y1.saturating_sub(t)] {
                if y < h {
                    img.put_pixel(x as u32, y as u32, Rgb(colour));
                }
            }
        }
        for y in b.y..=y1 {
            for x in [b.x + t, x1.saturating_sub(t)] {
                if x < w {
                    img.put_pixel(x as u32, y as u32, Rgb(colour));
                }
            }
        }
    }
}

/// Overlays are drawn at least this many pixels wide: a 96-pixel model input is too small
/// to read on a screen.
const MIN_OVERLAY_SIDE: usize = 384;

/// The image as the model saw it, enlarged to at least [`MIN_OVERLAY_SIDE`], with the
/// saliency blended in and the crop box drawn: for files and reports, which are viewed
/// at their own size.
pub fn overlay_image(
    shown: &ImageF32,
    saliency: Option<&[f32]>,
    crop: Option<&CropBox>,
) -> Result<RgbImage> {
    let f = MIN_OVERLAY_SIDE.div_ceil(shown.width.max(1)).max(1);
    overlay_scaled(shown, saliency, crop, f)
}

/// [`overlay_image`] at the model's input size: for the web page, which scales images
/// in the browser. Enlarging first added no detail (the saliency map and the image are
/// at most the input's) and cost most of an explained query's time (docs/benchmarks.md).
pub fn overlay_image_native(
    shown: &ImageF32,
    saliency: Option<&[f32]>,
    crop: Option<&CropBox>,
) -> Result<RgbImage> {
    overlay_scaled(shown, saliency, crop, 1)
}

fn overlay_scaled(
    shown: &ImageF32,
    saliency: Option<&[f32]>,
    crop: Option<&CropBox>,
    f: usize,
) -> Result<RgbImage> {
    let (h, w) = (shown.height, shown.width);
    let big = medret_data::transform::resize(shown, h * f, w * f);
    let map = match saliency {
        Some(s) => medret_models::grad_cam::upsample_bilinear(s, h, w, h * f, w * f),
        None => vec![0.0; h * f * w * f],
    };
    let mut img =
        medret_data::overlay::overlay(&big, &map, if saliency.is_some() { 0.45 } else { 0.0 })?;
    if let Some(b) = crop {
        let scaled = CropBox {
            x: b.x * f,
            y: b.y * f,
            w: b.w * f,
            h: b.h * f,
        };
        draw_box(&mut img, &scaled, [255, 255, 0]);
    }
    Ok(img)
}

fn overlay_png(
    shown: &ImageF32,
    saliency: Option<&[f32]>,
    crop: Option<&CropBox>,
    path: &Path,
) -> Result<()> {
    overlay_image(shown, saliency, crop)?
        .save(path)
        .map_err(|e| file_error(path, format!("cannot write: {e}")))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> SearchError {
    SearchError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A case id as a file-name part: `00000001_000.png` gives `00000001_000`, and anything
/// but ASCII letters, digits, `-`, `_` and `.` becomes `_`.
fn file_stem(case_id: &str) -> String {
    let id = ["png", "jpg", "jpeg", "dcm"]
        .iter()
        .find_map(|e| case_id.strip_suffix(&format!(".{e}")))
        .unwrap_or(case_id);
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `query.png` (the model's saliency: class Grad-CAM with the crop box for a chest
/// hashing model, where mirror attention falls for a fundus model) and
/// `rank-NN-<case>.png` for each result whose image can be read, into `dir`. For a
/// descriptor model, also `query-gradcam.png` and `rank-NN-<case>-gradcam.png`: Grad-CAM
/// of the cosine similarity, each result's to the query, the query's to its results' mean
/// descriptor (this needs `query_image`, the decoded query). Returns the files written.
pub fn write_explanations(
    dir: &Path,
    encoder: &Encoder,
    shown: &ImageF32,
    query: &medret_models::encoder::Encoded,
    query_image: Option<&ImageF32>,
    hits: &[Hit],
    root: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, format!("cannot create: {e}")))?;
    let mut written = Vec::new();
    let q = dir.join("query.png");
    overlay_png(
        shown,
        query.saliency.as_ref().map(|s| s.data.as_slice()),
        query.crop.as_ref(),
        &q,
    )?;
    written.push(q);
    let mut result_raws = Vec::new();
    for h in hits {
        let p = Path::new(&h.path);
        let p = match root {
            Some(r) if p.is_relative() => r.join(p),
            _ => p.to_path_buf(),
        };
        let Ok(img) = medret_data::decode::decode_any(&p) else {
            tracing::warn!(rank = h.rank, "result image unreadable; no overlay written");
            continue;
        };
        let shown = encoder.display_image(img.clone());
        let e = encoder.encode_images(vec![img.clone()], true).remove(0);
        let stem = format!("rank-{:02}-{}", h.rank, file_stem(&h.case_id));
        let out = dir.join(format!("{stem}.png"));
        overlay_png(
            &shown,
            e.saliency.as_ref().map(|s| s.data.as_slice()),
            e.crop.as_ref(),
            &out,
        )?;
        written.push(out);
        if let Some(cam) = encoder.similarity_cam(vec![img], std::slice::from_ref(&query.raw)) {
            let out = dir.join(format!("{stem}-gradcam.png"));
            overlay_png(&shown, Some(&cam[0].data), None, &out)?;
            written.push(out);
        }
        result_raws.push(e.raw);
    }
    if let (Some(img), false) = (query_image, result_raws.is_empty()) {
        let d = query.raw.len();
        let mut mean = vec![0.0f32; d];
        for r in &result_raws {
            mean.iter_mut().zip(r).for_each(|(m, x)| *m += x);
        }
        if let Some(cam) = encoder.similarity_cam(vec![img.clone()], &[mean]) {
            let out = dir.join("query-gradcam.png");
            overlay_png(shown, Some(&cam[0].data), None, &out)?;
            written.push(out);
        }
    }
    Ok(written)
}

/// How often the model's crop box holds the lesion, against random boxes of the same
/// size, over images with lesion masks (any lesion code except the optic disc) or NIH
/// boxes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CropLocalisation {
    pub images: usize,
    /// Share of images whose crop box contains the lesion's centroid.
    pub centroid_hit_rate: f64,
    /// The same for a uniformly placed box of the same size (exact expectation).
    pub random_centroid_hit_rate: f64,
    /// Mean fraction of lesion pixels inside the crop box.
    pub lesion_fraction_in_box: f64,
    pub random_lesion_fraction_in_box: f64,
    /// Mean area of the crop box as a fraction of the image.
    pub box_area_fraction: f64,
    /// Images whose saliency map was empty (crop = whole image).
    pub whole_image_crops: usize,
}

/// The lesion mask of `r` at `size x size` (nearest neighbour from the original
/// `orig_h x orig_w`), or `None` when it has neither masks nor boxes.
pub fn lesion_mask(
    r: &medret_data::Record,
    orig_h: usize,
    orig_w: usize,
    size: usize,
) -> Result<Option<Vec<bool>>> {
    let mut m = vec![false; size * size];
    let mut any = false;
    for mr in &r.masks {
        if mr.lesion.as_deref() == Some("OD") {
            continue;
        }
        let img = medret_data::decode::load_mask(&mr.path)?;
        let (mw, mh) = (img.width() as usize, img.height() as usize);
        for y in 0..size {
            for x in 0..size {
                let (sy, sx) = (y * mh / size, x * mw / size);
                if img.get_pixel(sx as u32, sy as u32).0[0] > 0 {
                    m[y * size + x] = true;
                    any = true;
                }
            }
        }
    }
    for b in &r.boxes {
        let (fy, fx) = (size as f32 / orig_h as f32, size as f32 / orig_w as f32);
        let (x0, y0) = (
            (b.x * fx).floor().max(0.0) as usize,
            (b.y * fy).floor().max(0.0) as usize,
        );
        let (x1, y1) = (
            (((b.x + b.w) * fx).ceil() as usize).min(size),
            (((b.y + b.h) * fy).ceil() as usize).min(size),
        );
        for y in y0..y1 {
            for x in x0..x1 {
                m[y * size + x] = true;
                any = true;
            }
        }
    }
    Ok(any.then_some(m))
}

/// Scores the crop boxes `encoder` draws on `records` (those with masks or boxes).
pub fn crop_localisation(
    encoder: &Encoder,
    records: &[medret_data::Record],
) -> Result<CropLocalisation> {
    use medret_eval::localisation::{PixelBox, box_score};
    let size = encoder.size();
    let (mut n, mut hit, mut rhit, mut frac, mut rfrac, mut area, mut whole) =
        (0usize, 0.0, 0.0, 0.0, 0.0, 0.0, 0);
    for r in records
        .iter()
        .filter(|r| !r.masks.is_empty() || !r.boxes.is_empty())
    {
        let img = medret_data::decode::load_image(&r.source)?;
        let Some(mask) = lesion_mask(r, img.height, img.width, size)? else {
            continue;
        };
        let e = encoder.encode_images(vec![img], true).remove(0);
        let Some(b) = e.crop else { continue };
        let pb = PixelBox {
            x: b.x,
            y: b.y,
            w: b.w,
            h: b.h,
        };
        let Some(s) = box_score(&mask, size, size, pb) else {
            continue;
        };
        n += 1;
        hit += f64::from(u8::from(s.centroid_in_box));
        rhit += s.random_centroid;
        frac += s.lesion_fraction_in_box;
        rfrac += s.random_lesion_fraction;
        area += b.area_fraction(size, size);
        whole += usize::from(b.w == size && b.h == size);
    }
    if n == 0 {
        return Err(SearchError::Invalid(
            "no image with a lesion mask or box to score the crop on".into(),
        ));
    }
    let d = n as f64;
    Ok(CropLocalisation {
        images: n,
        centroid_hit_rate: hit / d,
        random_centroid_hit_rate: rhit / d,
        lesion_fraction_in_box: frac / d,
        random_lesion_fraction_in_box: rfrac / d,
        box_area_fraction: area / d,
        whole_image_crops: whole,
    })
}

/// How much of a model's saliency (Grad-CAM for the chest model, where the mirror
/// attention falls for the fundus model) lands on lesions, against a random map, whose
/// expected pointing-game hit rate and energy share both equal the lesions' area share.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SaliencyLocalisation {
    pub images: usize,
    /// Share of images whose saliency maximum lies on a lesion pixel.
    pub pointing_hit_rate: f64,
    /// Mean share of the saliency mass on lesion pixels.
    pub energy_in_lesions: f64,
    /// Mean share of the image the lesions cover: a random map's expectation of both.
    pub lesion_area_share: f64,
}

pub fn saliency_localisation(
    encoder: &Encoder,
    records: &[medret_data::Record],
) -> Result<SaliencyLocalisation> {
    let size = encoder.size();
    let (mut n, mut hits, mut energy, mut area) = (0usize, 0usize, 0.0, 0.0);
    for r in records
        .iter()
        .filter(|r| !r.masks.is_empty() || !r.boxes.is_empty())
    {
        let img = medret_data::decode::load_image(&r.source)?;
        let Some(mask) = lesion_mask(r, img.height, img.width, size)? else {
            continue;
        };
        let e = encoder.encode_images(vec![img], true).remove(0);
        let Some(s) = e.saliency else { continue };
        let total: f64 = s.data.iter().map(|&v| v as f64).sum();
        if total <= 0.0 {
            continue;
        }
        n += 1;
        let (row, col) = s.argmax();
        hits += usize::from(mask[row * size + col]);
        energy += s
            .data
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m)
            .map(|(&v, _)| v as f64)
            .sum::<f64>()
            / total;
        area += mask.iter().filter(|&&m| m).count() as f64 / mask.len() as f64;
    }
    if n == 0 {
        return Err(SearchError::Invalid(
            "no image with a lesion mask or box and a non-empty saliency map".into(),
        ));
    }
    let d = n as f64;
    Ok(SaliencyLocalisation {
        images: n,
        pointing_hit_rate: hits as f64 / d,
        energy_in_lesions: energy / d,
        lesion_area_share: area / d,
    })
}
