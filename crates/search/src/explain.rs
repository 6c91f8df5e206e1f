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

fn overlay_png(
    shown: &ImageF32,
    saliency: Option<&[f32]>,
    crop: Option<&CropBox>,
    path: &Path,
) -> Result<()> {
    let mut img = match saliency {
        Some(s) => medret_data::overlay::overlay(shown, s, 0.45)?,
        None => medret_data::overlay::overlay(shown, &vec![0.0; shown.height * shown.width], 0.0)?,
    };
    if let Some(b) = crop {
        draw_box(&mut img, b, [255, 255, 0]);
    }
    img.save(path).map_err(|e| SearchError::File {
        path: path.to_path_buf(),
        message: format!("cannot write: {e}"),
    })
}

/// Writes `query.png` (saliency overlay and crop box) and `rank-NN-<case>.png` for each
/// result whose image can be read, into `dir`. Returns the files written.
pub fn write_explanations(
    dir: &Path,
    encoder: &Encoder,
    shown: &ImageF32,
    query: &medret_models::encoder::Encoded,
    hits: &[Hit],
    root: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| SearchError::File {
        path: dir.to_path_buf(),
        message: format!("cannot create: {e}"),
    })?;
    let mut written = Vec::new();
    let q = dir.join("query.png");
    overlay_png(
        shown,
        query.saliency.as_ref().map(|s| s.data.as_slice()),
        query.crop.as_ref(),
        &q,
    )?;
    written.push(q);
    for h in hits {
        let p = Path::new(&h.path);
        let p = match root {
            Some(r) if p.is_relative() => r.join(p),
            _ => p.to_path_buf(),
        };
        let Ok((shown, e)) = encoder.encode_file(&p, true) else {
            tracing::warn!(rank = h.rank, "result image unreadable; no overlay written");
            continue;
        };
        let safe: String = h
            .case_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let out = dir.join(format!("rank-{:02}-{safe}.png", h.rank));
        overlay_png(
            &shown,
            e.saliency.as_ref().map(|s| s.data.as_slice()),
            e.crop.as_ref(),
            &out,
        )?;
        written.push(out);
    }
    Ok(written)
}
