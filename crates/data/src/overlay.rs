//! Saliency overlays: a heat map blended over the image, for reports and the web page.

use image::{Rgb, RgbImage};

use crate::error::{DataError, Result};
use crate::image_buf::ImageF32;

/// The "jet" colour map: 0 dark blue, 0.35 cyan, 0.5 green, 0.65 yellow, 1 dark red.
pub fn jet(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let ramp = |x: f32| (1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// Blends `jet(saliency)` over the image: `(1 - alpha) * image + alpha * colour`.
/// `saliency` is row-major at the image's size, values in `[0, 1]`.
pub fn overlay(image: &ImageF32, saliency: &[f32], alpha: f32) -> Result<RgbImage> {
    let (h, w) = (image.height, image.width);
    if saliency.len() != h * w {
        return Err(DataError::format(
            "saliency",
            format!("map has {} values for a {w}x{h} image", saliency.len()),
        ));
    }
    let rgb = image.to_rgb();
    let n = h * w;
    let mut out = RgbImage::new(w as u32, h as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        let c = jet(saliency[i]);
        let mut p = [0u8; 3];
        for k in 0..3 {
            let v = (1.0 - alpha) * rgb.data[k * n + i] + alpha * c[k];
            p[k] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        *px = Rgb(p);
    }
    Ok(out)
}
