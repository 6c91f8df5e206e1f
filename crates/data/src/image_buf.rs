//! Decoded images as `f32` planes in `[0, 1]`: the form every reader hands to the transform
//! pipeline and, later, to the models.

use image::{DynamicImage, GrayImage, RgbImage};

/// A decoded image, channel-major (CHW), values in `[0, 1]`, 1 (grey) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl ImageF32 {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageF32 {
            channels,
            height,
            width,
            data: vec![0.0; channels * height * width],
        }
    }

    pub fn from_data(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), channels * height * width, "image buffer size");
        ImageF32 {
            channels,
            height,
            width,
            data,
        }
    }

    #[inline]
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    #[inline]
    pub fn set(&mut self, c: usize, y: usize, x: usize, v: f32) {
        self.data[(c * self.height + y) * self.width + x] = v;
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.height * self.width;
        &mut self.data[c * n..(c + 1) * n]
    }

    /// From 8-bit interleaved pixels (HWC).
    pub fn from_u8_hwc(channels: usize, height: usize, width: usize, px: &[u8]) -> Self {
        let mut img = ImageF32::new(channels, height, width);
        // Plane by plane, in order: this runs on every archive image (a tenth of encoding
        // a 1024 px PNG when it went pixel by pixel through `set`).
        if channels == 1 {
            // Kept apart from the strided loop below, which the compiler does not vectorise.
            for (d, &v) in img.data.iter_mut().zip(px) {
                *d = v as f32 / 255.0;
            }
            return img;
        }
        for c in 0..channels {
            let samples = px[c..].iter().step_by(channels);
            for (d, &v) in img.plane_mut(c).iter_mut().zip(samples) {
                *d = v as f32 / 255.0;
            }
        }
        img
    }

    /// Converts a decoded image: grey stays grey (alpha dropped), anything else becomes RGB.
    /// 16-bit PNGs keep their precision.
    pub fn from_dynamic(img: &DynamicImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        match img {
            DynamicImage::ImageLuma8(g) => Self::from_u8_hwc(1, h, w, g.as_raw()),
            DynamicImage::ImageLumaA8(_) => {
                let g = img.to_luma8();
                Self::from_u8_hwc(1, h, w, g.as_raw())
            }
            // 8-bit colour straight to f32: no intermediate f32 copy of a large image.
            DynamicImage::ImageRgb8(rgb) => Self::from_u8_hwc(3, h, w, rgb.as_raw()),
            DynamicImage::ImageRgba8(_) => Self::from_u8_hwc(3, h, w, img.to_rgb8().as_raw()),
            DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
                let g = img.to_luma16();
                let data = g.as_raw().iter().map(|&v| v as f32 / 65535.0).collect();
                Self::from_data(1, h, w, data)
            }
            _ => {
                let rgb = img.to_rgb32f();
                let mut out = ImageF32::new(3, h, w);
                for (i, p) in rgb.pixels().enumerate() {
                    for c in 0..3 {
                        out.data[c * h * w + i] = p.0[c].clamp(0.0, 1.0);
                    }
                }
                out
            }
        }
    }

    /// Grey by ITU-R BT.601 luma, or unchanged when already grey.
    pub fn to_grey(&self) -> ImageF32 {
        if self.channels == 1 {
            return self.clone();
        }
        let n = self.height * self.width;
        let data = (0..n)
            .map(|i| 0.299 * self.data[i] + 0.587 * self.data[n + i] + 0.114 * self.data[2 * n + i])
            .collect();
        ImageF32::from_data(1, self.height, self.width, data)
    }

    /// RGB, repeating a grey plane three times.
    pub fn to_rgb(&self) -> ImageF32 {
        if self.channels == 3 {
            return self.clone();
        }
        let mut data = Vec::with_capacity(3 * self.data.len());
        for _ in 0..3 {
            data.extend_from_slice(&self.data);
        }
        ImageF32::from_data(3, self.height, self.width, data)
    }

    fn to_u8(v: f32) -> u8 {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }

    /// 8-bit image for writing PNG/JPEG files and overlays.
    pub fn to_dynamic(&self) -> DynamicImage {
        let (w, h) = (self.width as u32, self.height as u32);
        if self.channels == 1 {
            let px = self.data.iter().map(|&v| Self::to_u8(v)).collect();
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).expect("size"))
        } else {
            let n = self.height * self.width;
            let mut px = Vec::with_capacity(3 * n);
            for i in 0..n {
                for c in 0..3 {
                    px.push(Self::to_u8(self.data[c * n + i]));
                }
            }
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, px).expect("size"))
        }
    }

    /// Values in height x width (x channels) order, as `.npy` files and other toolkits
    /// hold images.
    pub fn to_hwc(&self) -> Vec<f32> {
        let n = self.height * self.width;
        let c = self.channels;
        (0..n)
            .flat_map(|i| (0..c).map(move |k| self.data[k * n + i]))
            .collect()
    }

    /// 16-bit image (grey or RGB), for exports that must not lose precision.
    pub fn to_dynamic16(&self) -> DynamicImage {
        let (w, h) = (self.width as u32, self.height as u32);
        let px: Vec<u16> = self
            .to_hwc()
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
            .collect();
        if self.channels == 1 {
            DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, px).expect("size"))
        } else {
            DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(w, h, px).expect("size"))
        }
    }

    /// Mean over all channels and pixels.
    pub fn mean(&self) -> f32 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().sum::<f32>() / self.data.len() as f32
    }
}
