//! Analytic drawing primitives for the phantoms: soft-edged shapes accumulated into float
//! planes, and the matching lesion masks. Shapes are evaluated only inside their bounding
//! box, which keeps a 256-pixel phantom at a few milliseconds.

use rand::Rng;
use rand_distr::{Distribution, Normal};

/// A single float plane, `w * h`, row-major. Coordinates passed to the drawing functions
/// are normalised to `[0, 1]` of the width (x) and height (y).
#[derive(Debug, Clone)]
pub struct Plane {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

/// Smooth step from 1 (inside, `d <= -soft`) to 0 (outside, `d >= soft`).
#[inline]
pub fn soft_inside(d: f32, soft: f32) -> f32 {
    if soft <= 0.0 {
        return if d <= 0.0 { 1.0 } else { 0.0 };
    }
    let t = ((soft - d) / (2.0 * soft)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Pixel bounds `[x0, x1) x [y0, y1)` of a normalised box, clipped to the plane.
fn pixel_box(
    w: usize,
    h: usize,
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
) -> (usize, usize, usize, usize) {
    let fx = |v: f32| ((v * w as f32).floor().max(0.0) as usize).min(w);
    let fy = |v: f32| ((v * h as f32).floor().max(0.0) as usize).min(h);
    (fx(x0), fy(y0), (fx(x1) + 1).min(w), (fy(y1) + 1).min(h))
}

impl Plane {
    pub fn new(w: usize, h: usize, value: f32) -> Self {
        Plane {
            w,
            h,
            data: vec![value; w * h],
        }
    }

    /// Calls `f(index, x, y)` for every pixel centre inside the normalised box.
    #[inline]
    fn for_box(&self, b: (f32, f32, f32, f32), mut f: impl FnMut(usize, f32, f32)) {
        let (x0, y0, x1, y1) = pixel_box(self.w, self.h, b.0, b.1, b.2, b.3);
        let (sw, sh) = (1.0 / self.w as f32, 1.0 / self.h as f32);
        for py in y0..y1 {
            let y = (py as f32 + 0.5) * sh;
            for px in x0..x1 {
                f(py * self.w + px, (px as f32 + 0.5) * sw, y);
            }
        }
    }

    /// Adds `f(x, y)` to every pixel inside the normalised box `(x0, y0, x1, y1)`.
    pub fn add_fn(&mut self, b: (f32, f32, f32, f32), f: impl Fn(f32, f32) -> f32) {
        let mut data = std::mem::take(&mut self.data);
        self.for_box(b, |i, x, y| data[i] += f(x, y));
        self.data = data;
    }

    /// Adds `amp * inside` for a rotated ellipse with a soft rim of `soft` (normalised units).
    pub fn ellipse(&mut self, e: &Ellipse, amp: f32, soft: f32) {
        let r = e.rx.max(e.ry) + soft;
        let mut data = std::mem::take(&mut self.data);
        self.for_box((e.cx - r, e.cy - r, e.cx + r, e.cy + r), |i, x, y| {
            data[i] += amp * soft_inside(e.signed_distance(x, y), soft);
        });
        self.data = data;
    }

    /// Adds an anisotropic Gaussian blob (`amp` at the centre), evaluated to 3 sigma.
    pub fn gaussian(&mut self, cx: f32, cy: f32, sx: f32, sy: f32, angle: f32, amp: f32) {
        let r = 3.0 * sx.max(sy);
        let (c, s) = (angle.cos(), angle.sin());
        let mut data = std::mem::take(&mut self.data);
        self.for_box((cx - r, cy - r, cx + r, cy + r), |i, x, y| {
            let (dx, dy) = (x - cx, y - cy);
            let (u, v) = ((dx * c + dy * s) / sx, (-dx * s + dy * c) / sy);
            data[i] += amp * (-0.5 * (u * u + v * v)).exp();
        });
        self.data = data;
    }

    /// Adds a stroke of half-width `hw` along a polyline, with a soft rim. Coverage is the
    /// maximum over the segments, so joints are not drawn twice (no beading).
    pub fn polyline(&mut self, pts: &[(f32, f32)], hw: f32, amp: f32, soft: f32) {
        if pts.len() < 2 {
            return;
        }
        let r = hw + soft;
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x - r);
            y0 = y0.min(y - r);
            x1 = x1.max(x + r);
            y1 = y1.max(y + r);
        }
        let (bx0, by0, bx1, by1) = pixel_box(self.w, self.h, x0, y0, x1, y1);
        if bx0 >= bx1 || by0 >= by1 {
            return;
        }
        let bw = bx1 - bx0;
        let mut cover = vec![0.0f32; bw * (by1 - by0)];
        let (sw, sh) = (1.0 / self.w as f32, 1.0 / self.h as f32);
        for seg in pts.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            let (sx0, sy0, sx1, sy1) = pixel_box(
                self.w,
                self.h,
                a.0.min(b.0) - r,
                a.1.min(b.1) - r,
                a.0.max(b.0) + r,
                a.1.max(b.1) + r,
            );
            for py in sy0.max(by0)..sy1.min(by1) {
                let y = (py as f32 + 0.5) * sh;
                for px in sx0.max(bx0)..sx1.min(bx1) {
                    let d = segment_distance(((px as f32 + 0.5) * sw, y), a, b) - hw;
                    let c = &mut cover[(py - by0) * bw + px - bx0];
                    *c = c.max(soft_inside(d, soft));
                }
            }
        }
        for py in by0..by1 {
            for px in bx0..bx1 {
                self.data[py * self.w + px] += amp * cover[(py - by0) * bw + px - bx0];
            }
        }
    }

    /// One straight stroke.
    pub fn segment(&mut self, a: (f32, f32), b: (f32, f32), hw: f32, amp: f32, soft: f32) {
        let r = hw + soft;
        let bx = (
            a.0.min(b.0) - r,
            a.1.min(b.1) - r,
            a.0.max(b.0) + r,
            a.1.max(b.1) + r,
        );
        let mut data = std::mem::take(&mut self.data);
        self.for_box(bx, |i, x, y| {
            let d = segment_distance((x, y), a, b) - hw;
            let v = amp * soft_inside(d, soft);
            data[i] += v;
        });
        self.data = data;
    }

    /// Multiplies every pixel inside the box by `f(x, y)`.
    pub fn modulate(&mut self, f: impl Fn(f32, f32) -> f32) {
        let (sw, sh) = (1.0 / self.w as f32, 1.0 / self.h as f32);
        for py in 0..self.h {
            let y = (py as f32 + 0.5) * sh;
            for px in 0..self.w {
                self.data[py * self.w + px] *= f((px as f32 + 0.5) * sw, y);
            }
        }
    }

    /// Adds white Gaussian noise.
    pub fn noise<R: Rng>(&mut self, rng: &mut R, sigma: f32) {
        let n = Normal::new(0.0f32, sigma).expect("sigma");
        for v in &mut self.data {
            *v += n.sample(rng);
        }
    }

    /// Adds smooth low-frequency noise: bilinear interpolation of a coarse random grid.
    pub fn smooth_noise<R: Rng>(&mut self, rng: &mut R, cells: usize, amp: f32) {
        let g = cells + 2;
        let grid: Vec<f32> = (0..g * g).map(|_| rng.random_range(-amp..amp)).collect();
        for py in 0..self.h {
            let gy = py as f32 / self.h as f32 * cells as f32;
            let (y0, ty) = (gy.floor() as usize, gy.fract());
            for px in 0..self.w {
                let gx = px as f32 / self.w as f32 * cells as f32;
                let (x0, tx) = (gx.floor() as usize, gx.fract());
                let v = |yy: usize, xx: usize| grid[yy * g + xx];
                let top = v(y0, x0) * (1.0 - tx) + v(y0, x0 + 1) * tx;
                let bot = v(y0 + 1, x0) * (1.0 - tx) + v(y0 + 1, x0 + 1) * tx;
                self.data[py * self.w + px] += top * (1.0 - ty) + bot * ty;
            }
        }
    }

    /// 3-tap box blur, `passes` times (approximates a Gaussian); softens hard edges.
    pub fn blur(&mut self, passes: usize) {
        let (w, h) = (self.w, self.h);
        let mut tmp = vec![0.0f32; w * h];
        for _ in 0..passes {
            for y in 0..h {
                for x in 0..w {
                    let l = self.data[y * w + x.saturating_sub(1)];
                    let r = self.data[y * w + (x + 1).min(w - 1)];
                    tmp[y * w + x] = (l + self.data[y * w + x] + r) / 3.0;
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let u = tmp[y.saturating_sub(1) * w + x];
                    let d = tmp[(y + 1).min(h - 1) * w + x];
                    self.data[y * w + x] = (u + tmp[y * w + x] + d) / 3.0;
                }
            }
        }
    }
}

/// Distance from `p` to the segment `ab`.
#[inline]
pub fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let (apx, apy) = (p.0 - a.0, p.1 - a.1);
    let len2 = abx * abx + aby * aby;
    let t = if len2 > 0.0 {
        ((apx * abx + apy * aby) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (apx - t * abx, apy - t * aby);
    (dx * dx + dy * dy).sqrt()
}

/// A rotated ellipse in normalised coordinates.
#[derive(Debug, Clone, Copy)]
pub struct Ellipse {
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
    pub angle: f32,
}

impl Ellipse {
    pub fn new(cx: f32, cy: f32, rx: f32, ry: f32, angle: f32) -> Self {
        Ellipse {
            cx,
            cy,
            rx,
            ry,
            angle,
        }
    }

    /// Approximate signed distance (negative inside), exact on a circle.
    #[inline]
    pub fn signed_distance(&self, x: f32, y: f32) -> f32 {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
        let k = ((u / self.rx).powi(2) + (v / self.ry).powi(2)).sqrt();
        (k - 1.0) * self.rx.min(self.ry)
    }

    pub fn contains(&self, x: f32, y: f32) -> bool {
        self.signed_distance(x, y) <= 0.0
    }

    /// Axis-aligned bounding box `(x0, y0, x1, y1)`.
    pub fn bbox(&self) -> (f32, f32, f32, f32) {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let hx = ((self.rx * c).powi(2) + (self.ry * s).powi(2)).sqrt();
        let hy = ((self.rx * s).powi(2) + (self.ry * c).powi(2)).sqrt();
        (self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy)
    }
}

/// A lesion label map, one byte a pixel, with the lesion's pixel bounding boxes.
#[derive(Debug, Clone)]
pub struct Mask {
    pub w: usize,
    pub h: usize,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn new(w: usize, h: usize) -> Self {
        Mask {
            w,
            h,
            data: vec![0; w * h],
        }
    }

    /// Writes `code` wherever `inside(x, y)` holds within the normalised box and no earlier
    /// lesion is (first drawn wins, so a small lesion is never hidden in the mask by a larger
    /// one drawn later); returns the pixel box `(x, y, w, h)` actually painted, or `None`.
    pub fn paint(
        &mut self,
        b: (f32, f32, f32, f32),
        code: u8,
        inside: impl Fn(f32, f32) -> bool,
    ) -> Option<(u32, u32, u32, u32)> {
        let (x0, y0, x1, y1) = pixel_box(self.w, self.h, b.0, b.1, b.2, b.3);
        let (mut bx0, mut by0, mut bx1, mut by1) = (usize::MAX, usize::MAX, 0, 0);
        for py in y0..y1 {
            let y = (py as f32 + 0.5) / self.h as f32;
            for px in x0..x1 {
                let x = (px as f32 + 0.5) / self.w as f32;
                if self.data[py * self.w + px] == 0 && inside(x, y) {
                    self.data[py * self.w + px] = code;
                    bx0 = bx0.min(px);
                    by0 = by0.min(py);
                    bx1 = bx1.max(px);
                    by1 = by1.max(py);
                }
            }
        }
        (bx0 != usize::MAX).then(|| {
            (
                bx0 as u32,
                by0 as u32,
                (bx1 - bx0 + 1) as u32,
                (by1 - by0 + 1) as u32,
            )
        })
    }

    pub fn count(&self, code: u8) -> usize {
        self.data.iter().filter(|&&v| v == code).count()
    }
}

/// Union of two pixel boxes `(x, y, w, h)`.
pub fn union_box(
    a: Option<(u32, u32, u32, u32)>,
    b: Option<(u32, u32, u32, u32)>,
) -> Option<(u32, u32, u32, u32)> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => {
            let x0 = a.0.min(b.0);
            let y0 = a.1.min(b.1);
            let x1 = (a.0 + a.2).max(b.0 + b.2);
            let y1 = (a.1 + a.3).max(b.1 + b.3);
            Some((x0, y0, x1 - x0, y1 - y0))
        }
    }
}

/// Deterministic per-item RNG seed: a SplitMix64 mix of the run seed and item indices,
/// so that results do not depend on thread scheduling.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
