//! A PNG grid of images with their labels, so a person can look at a dataset.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::decode::{load_image, load_mask};
use crate::error::Result;
use crate::record::Dataset;
use crate::transform::resize;

const TEXT_LINES: usize = 2;
const LINE_H: usize = 10;

fn draw_text(img: &mut RgbImage, x0: u32, y0: u32, text: &str, colour: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (x, y) = (x0 + i as u32 * 8 + col, y0 + row as u32);
                    if x < img.width() && y < img.height() {
                        img.put_pixel(x, y, colour);
                    }
                }
            }
        }
    }
}

/// Wraps `text` into at most `lines` lines of `width` characters.
fn wrap(text: &str, width: usize, lines: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.truncate(lines);
    for l in &mut out {
        l.truncate(width);
    }
    out
}

/// The caption of a record: grade and eye for graded data, else its labels.
fn caption(ds: &Dataset, i: usize) -> String {
    let r = &ds.records[i];
    let mut s = match r.grade {
        Some(g) => format!("DR{g}"),
        None if r.labels.is_empty() => "unlabelled".into(),
        None => r.labels.join(" "),
    };
    if let Some(e) = r.eye {
        s = format!("{s} {}", e.name());
    }
    s
}

/// Builds a contact sheet of the records at `indices`, `cols` tiles a row, each `tile`
/// pixels square with a two-line caption. With `outline_masks`, lesion-mask borders are
/// drawn in yellow so the lesions can be found by eye.
pub fn contact_sheet(
    ds: &Dataset,
    indices: &[usize],
    cols: usize,
    tile: usize,
    outline_masks: bool,
) -> Result<RgbImage> {
    let cols = cols.max(1);
    let rows = indices.len().div_ceil(cols);
    let cell_h = tile + TEXT_LINES * LINE_H + 4;
    let mut sheet = RgbImage::from_pixel(
        (cols * tile) as u32,
        (rows * cell_h) as u32,
        Rgb([20, 20, 20]),
    );
    let tiles: Vec<(RgbImage, String)> = indices
        .par_iter()
        .map(|&i| -> Result<(RgbImage, String)> {
            let rec = &ds.records[i];
            let img = resize(&load_image(&rec.source)?.to_rgb(), tile, tile);
            let mut t = match img.to_dynamic() {
                image::DynamicImage::ImageRgb8(t) => t,
                other => other.to_rgb8(),
            };
            if outline_masks {
                for m in &rec.masks {
                    if m.lesion.as_deref() == Some("OD") {
                        continue;
                    }
                    let mask = load_mask(&m.path)?;
                    let mask = image::imageops::resize(
                        &mask,
                        tile as u32,
                        tile as u32,
                        image::imageops::FilterType::Nearest,
                    );
                    for y in 0..tile as u32 {
                        for x in 0..tile as u32 {
                            let v = mask.get_pixel(x, y).0[0];
                            if v == 0 {
                                continue;
                            }
                            let edge =
                                [(0i32, 1i32), (1, 0), (0, -1), (-1, 0)]
                                    .iter()
                                    .any(|(dx, dy)| {
                                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                                        nx < 0
                                            || ny < 0
                                            || nx >= tile as i32
                                            || ny >= tile as i32
                                            || mask.get_pixel(nx as u32, ny as u32).0[0] != v
                                    });
                            if edge {
                                t.put_pixel(x, y, Rgb([255, 230, 0]));
                            }
                        }
                    }
                }
            }
            Ok((t, caption(ds, i)))
        })
        .collect::<Result<_>>()?;
    for (k, (t, cap)) in tiles.iter().enumerate() {
        let (x0, y0) = ((k % cols * tile) as u32, (k / cols * cell_h) as u32);
        image::imageops::replace(&mut sheet, t, x0 as i64, y0 as i64);
        for (l, line) in wrap(cap, tile / 8, TEXT_LINES).iter().enumerate() {
            draw_text(
                &mut sheet,
                x0 + 1,
                y0 + tile as u32 + 2 + (l * LINE_H) as u32,
                line,
                Rgb([235, 235, 235]),
            );
        }
    }
    Ok(sheet)
}
