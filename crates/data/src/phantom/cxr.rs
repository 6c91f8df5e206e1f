//! Chest X-ray phantom in the NIH ChestX-ray14 layout.
//!
//! Each patient has fixed anatomy (lung size and position, heart size, body habitus); each
//! of their images ("follow-ups") jitters position and exposure slightly and draws the
//! findings as small or diffuse lesions on that near-identical anatomy, so classes differ by
//! small regions: the high inter-class similarity the hashing method targets.
//! Bright means dense, as on a radiograph: lungs dark, bone, heart and abdomen bright.

use std::f32::consts::PI;
use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::draw::{Ellipse, Mask, Plane, mix_seed, soft_inside, union_box};
use crate::error::{DataError, Result};
use crate::labels::{NIH_BBOX_FINDINGS, NIH_FINDINGS, NO_FINDING};
use crate::record::{BBox, Split};

/// Settings of `medret synth cxr`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CxrConfig {
    pub n: usize,
    pub size: usize,
    pub seed: u64,
    /// Fraction of patients in `test_list.txt` (patient-disjoint).
    pub test_fraction: f32,
    /// Fraction of images with no finding.
    pub no_finding_fraction: f32,
}

impl Default for CxrConfig {
    fn default() -> Self {
        CxrConfig {
            n: 200,
            size: 256,
            seed: 0,
            test_fraction: 0.2,
            no_finding_fraction: 0.3,
        }
    }
}

/// Ground truth of one generated image, exactly what the NIH files say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct CxrCase {
    pub name: String,
    pub patient_id: u32,
    pub follow_up: u32,
    pub age: u32,
    pub sex: char,
    pub view: &'static str,
    /// Finding names in NIH order, or `["No Finding"]`.
    pub labels: Vec<String>,
    pub split: Split,
    /// Boxes (pixels) for the eight box findings present.
    pub boxes: Vec<BBox>,
}

#[derive(Debug, Clone)]
struct Anatomy {
    cx: f32,
    top: f32,
    bottom: f32,
    hw: f32,
    sep: f32,
    heart_r: f32,
    body_hw: f32,
    age: u32,
    sex: char,
}

impl Anatomy {
    fn sample(rng: &mut ChaCha8Rng) -> Self {
        Anatomy {
            cx: 0.5 + rng.random_range(-0.015..0.015),
            top: rng.random_range(0.15..0.19),
            bottom: rng.random_range(0.68..0.74),
            hw: rng.random_range(0.15..0.18),
            sep: rng.random_range(0.05..0.065),
            heart_r: rng.random_range(0.14..0.16),
            body_hw: rng.random_range(0.40..0.45),
            age: rng.random_range(18..90),
            sex: if rng.random_bool(0.5) { 'M' } else { 'F' },
        }
    }

    /// Bounding ellipse of a lung: side 0 is the patient's right lung (image left).
    fn lung(&self, side: usize) -> Ellipse {
        let s = if side == 0 { -1.0 } else { 1.0 };
        let hw = if side == 0 { self.hw } else { self.hw * 0.93 };
        let cy = (self.top + self.bottom) / 2.0;
        let ry = (self.bottom - self.top) / 2.0;
        Ellipse::new(self.cx + s * (self.sep + hw), cy, hw, ry, 0.0)
    }

    /// Centre and half-width of a lung's horizontal slice at height `y`: narrow at the apex,
    /// full width from a third of the way down, drifting laterally towards the base.
    fn lung_slice(&self, side: usize, y: f32) -> (f32, f32) {
        let l = self.lung(side);
        let s = if side == 0 { -1.0 } else { 1.0 };
        let t = ((y - self.top) / (self.bottom - self.top)).clamp(0.0, 1.2);
        let half = l.rx * (0.3 + 0.7 * (t / 0.35).min(1.0).sqrt());
        (l.cx + s * 0.025 * t, half)
    }

    /// Lateral lung edge at height `y`.
    fn lateral_edge(&self, side: usize, y: f32) -> f32 {
        let (c, half) = self.lung_slice(side, y);
        if side == 0 { c - half } else { c + half }
    }

    /// Height of the diaphragm dome under a lung at x (the right one sits higher: liver).
    fn dome(&self, side: usize, x: f32) -> f32 {
        let l = self.lung(side);
        let t = ((x - l.cx) / (l.rx * 1.1)).clamp(-1.0, 1.0);
        let base = if side == 0 {
            self.bottom - 0.015
        } else {
            self.bottom
        };
        base - 0.05 * (1.0 - t * t)
    }

    fn lung_inside(&self, side: usize, x: f32, y: f32) -> f32 {
        let (c, half) = self.lung_slice(side, y);
        let sd = ((x - c).abs() - half)
            .max(self.top - y)
            .max(y - self.dome(side, x));
        soft_inside(sd, 0.01)
    }

    /// The cardiac silhouette: over the lower mediastinum, bulging into the left lung.
    fn heart(&self, scale: f32) -> Ellipse {
        let rx = self.heart_r * scale;
        let ry = self.heart_r * 0.72 * scale;
        Ellipse::new(
            self.cx + 0.04 + 0.35 * (rx - self.heart_r),
            self.bottom - 0.065,
            rx,
            ry,
            -0.3,
        )
    }

    /// A point well inside a lung, within a vertical band (0 top .. 1 base) of it.
    fn lung_point(&self, rng: &mut ChaCha8Rng, side: usize, band: (f32, f32)) -> (f32, f32) {
        let l = self.lung(side);
        for _ in 0..200 {
            let x = rng.random_range(l.cx - l.rx..l.cx + l.rx);
            let t = rng.random_range(band.0..band.1);
            let y = self.top + t * (self.bottom - self.top);
            if self.lung_inside(side, x, y) > 0.99 && !self.heart(1.0).contains(x, y) {
                return (x, y);
            }
        }
        (l.cx, l.cy)
    }
}

/// Relative frequencies of findings when an image has any (small lesions favoured).
const FINDING_WEIGHTS: [f32; 14] = [
    1.2, 0.6, 1.0, 1.2, 0.9, 1.4, 0.6, 0.7, 0.7, 0.5, 0.4, 0.5, 0.6, 0.25,
];

fn sample_findings(rng: &mut ChaCha8Rng, no_finding: f32) -> Vec<usize> {
    if rng.random::<f32>() < no_finding {
        return Vec::new();
    }
    let k = match rng.random::<f32>() {
        x if x < 0.6 => 1,
        x if x < 0.9 => 2,
        _ => 3,
    };
    let total: f32 = FINDING_WEIGHTS.iter().sum();
    let mut out = Vec::new();
    while out.len() < k {
        let mut u = rng.random::<f32>() * total;
        let mut pick = 0;
        for (i, w) in FINDING_WEIGHTS.iter().enumerate() {
            if u < *w {
                pick = i;
                break;
            }
            u -= w;
        }
        if !out.contains(&pick) {
            out.push(pick);
        }
    }
    out.sort_unstable();
    out
}

/// A rendered phantom: pixels in `[0, 1]`, its lesion label map (code = 1 + NIH index),
/// and pixel boxes per finding.
pub struct CxrImage {
    pub pixels: Plane,
    pub mask: Mask,
    pub boxes: Vec<(usize, (u32, u32, u32, u32))>,
}

/// Renders one image of a patient with the given findings (indices into `NIH_FINDINGS`).
fn render(anat: &Anatomy, findings: &[usize], size: usize, rng: &mut ChaCha8Rng) -> CxrImage {
    let mut a = anat.clone();
    // Follow-up jitter: positioning and inspiration differ slightly between studies.
    a.cx += rng.random_range(-0.01..0.01);
    a.top += rng.random_range(-0.008..0.008);
    a.bottom += rng.random_range(-0.01..0.01);
    let has = |f: &str| findings.iter().any(|&i| NIH_FINDINGS[i] == f);
    if has("Emphysema") {
        a.bottom += 0.035; // hyperinflation flattens and lowers the diaphragm
    }
    let heart_scale = if has("Cardiomegaly") { 1.4 } else { 1.0 };

    let mut p = Plane::new(size, size, 0.0);
    let mut mask = Mask::new(size, size);
    let mut boxes: Vec<(usize, (u32, u32, u32, u32))> = Vec::new();

    // Body with shoulders, neck and lungs, per pixel.
    let emph = if has("Emphysema") { 0.07 } else { 0.0 };
    {
        let (w, h) = (p.w, p.h);
        for py in 0..h {
            let y = (py as f32 + 0.5) / h as f32;
            for px in 0..w {
                let x = (px as f32 + 0.5) / w as f32;
                let dx = (x - a.cx).abs();
                let shoulder_top = 0.07 + 0.09 * (dx / a.body_hw).powi(3);
                let torso =
                    soft_inside(dx - a.body_hw, 0.02) * soft_inside(shoulder_top - y, 0.025);
                let neck = soft_inside(dx - 0.075, 0.02);
                let lungs = a.lung_inside(0, x, y) + a.lung_inside(1, x, y);
                // Soft tissue thickens towards the abdomen.
                let tissue = 0.47 + 0.08 * y;
                p.data[py * w + px] = 0.05 + tissue * torso.max(neck) - (0.32 + emph) * lungs;
            }
        }
    }
    // Humeral heads at the top corners.
    for s in [-1.0f32, 1.0] {
        p.ellipse(
            &Ellipse::new(a.cx + s * (a.body_hw + 0.01), 0.14, 0.06, 0.07, 0.0),
            0.12,
            0.015,
        );
    }
    // Spine and mediastinum, trachea.
    p.add_fn((a.cx - 0.06, 0.0, a.cx + 0.06, 1.0), |x, _| {
        0.12 * soft_inside((x - a.cx).abs() - 0.028, 0.01)
    });
    p.add_fn((a.cx - 0.03, 0.0, a.cx + 0.03, a.top + 0.12), |x, y| {
        -0.12 * soft_inside((x - a.cx).abs() - 0.011, 0.004) * soft_inside(y - (a.top + 0.1), 0.02)
    });
    // Heart.
    let heart = a.heart(heart_scale);
    // As dense as soft tissue: cancels the lung lucency it overlaps.
    p.ellipse(&heart, 0.33, 0.02);
    if has("Cardiomegaly") {
        let b = mask.paint(heart.bbox(), 2, |x, y| heart.contains(x, y));
        if let Some(b) = b {
            boxes.push((1, b));
        }
    }
    // Gastric bubble under the left hemidiaphragm (image right).
    let gb = Ellipse::new(
        a.lung(1).cx + 0.02,
        a.dome(1, a.lung(1).cx) + 0.05,
        0.035,
        0.022,
        0.0,
    );
    p.ellipse(&gb, -0.12, 0.01);
    // Ribs: posterior arcs leave the spine, rise a little and fall steeply at the lateral
    // chest wall; fainter anterior ribs run back down and inwards from there.
    let spacing = (a.bottom - a.top) / 8.0;
    for side in 0..2 {
        let s = if side == 0 { -1.0f32 } else { 1.0 };
        let reach = a.sep + 2.0 * a.hw + 0.025;
        for i in 0..10 {
            let y0 = a.top - 0.04 + i as f32 * spacing;
            let pts: Vec<(f32, f32)> = (0..12)
                .map(|k| {
                    let t = k as f32 / 11.0;
                    (
                        a.cx + s * (0.025 + t * reach),
                        y0 - 0.02 * (PI * t).sin() + 0.12 * t.powi(3),
                    )
                })
                .collect();
            p.polyline(&pts, 0.0075, 0.06, 0.004);
            let (ex, ey) = pts[pts.len() - 1];
            let ant: Vec<(f32, f32)> = (0..8)
                .map(|k| {
                    let t = k as f32 / 7.0;
                    (
                        ex - s * t * (reach - 0.12),
                        ey + 0.02 + 0.1 * t - 0.03 * (PI * t).sin(),
                    )
                })
                .collect();
            p.polyline(&ant, 0.006, 0.03, 0.004);
        }
        let cl: Vec<(f32, f32)> = (0..6)
            .map(|k| {
                let t = k as f32 / 5.0;
                (
                    a.cx + s * (0.03 + 0.2 * t),
                    a.top + 0.005 - 0.035 * t + 0.012 * (PI * t).sin(),
                )
            })
            .collect();
        p.polyline(&cl, 0.009, 0.1, 0.004);
        // Lung markings: vessels fanning out from the hilum.
        let hil = (a.cx + s * (a.sep + 0.03), (a.top + a.bottom) / 2.0 - 0.02);
        for _ in 0..11 {
            let mut ang = if side == 0 { PI } else { 0.0 } + rng.random_range(-1.1..1.1);
            let (mut x, mut y) = hil;
            let mut pts = vec![(x, y)];
            for _ in 0..6 {
                ang += rng.random_range(-0.25..0.25);
                x += 0.022 * ang.cos();
                y += 0.022 * ang.sin();
                pts.push((x, y));
            }
            p.polyline(&pts, 0.0026, 0.055, 0.002);
        }
    }

    // Findings. Each paints its label code (1 + NIH index) into the mask.
    for &f in findings {
        let code = f as u8 + 1;
        let side = rng.random_range(0..2usize);
        let painted = match NIH_FINDINGS[f] {
            "Nodule" => {
                let (x, y) = a.lung_point(rng, side, (0.15, 0.85));
                let r = rng.random_range(0.010..0.017);
                let e = Ellipse::new(
                    x,
                    y,
                    r,
                    r * rng.random_range(0.85..1.0),
                    rng.random_range(0.0..PI),
                );
                p.ellipse(&e, 0.24, r * 0.35);
                mask.paint(e.bbox(), code, |x, y| e.contains(x, y))
            }
            "Mass" => {
                let (x, y) = a.lung_point(rng, side, (0.2, 0.8));
                let r = rng.random_range(0.03..0.045);
                let mut b = None;
                for k in 0..3 {
                    let (ox, oy) = if k == 0 {
                        (0.0, 0.0)
                    } else {
                        (
                            rng.random_range(-0.5..0.5) * r,
                            rng.random_range(-0.5..0.5) * r,
                        )
                    };
                    let e = Ellipse::new(
                        x + ox,
                        y + oy,
                        r * rng.random_range(0.6..1.0),
                        r * rng.random_range(0.6..1.0),
                        rng.random_range(0.0..PI),
                    );
                    p.ellipse(&e, if k == 0 { 0.26 } else { 0.08 }, r * 0.25);
                    b = union_box(b, mask.paint(e.bbox(), code, |x, y| e.contains(x, y)));
                }
                b
            }
            "Effusion" => {
                let l = a.lung(side);
                let level = a.bottom - rng.random_range(0.07..0.13);
                let s = if side == 0 { -1.0 } else { 1.0 };
                // Meniscus: the fluid climbs the lateral chest wall.
                let surface = move |x: f32| {
                    level - 0.05 * ((s * (x - l.cx) / l.rx + 1.0) / 2.0).clamp(0.0, 1.0)
                };
                let bx = (l.cx - l.rx, level - 0.06, l.cx + l.rx, a.bottom + 0.02);
                let aa = a.clone();
                p.add_fn(bx, |x, y| {
                    0.3 * aa.lung_inside(side, x, y) * soft_inside(surface(x) - y, 0.012)
                });
                mask.paint(bx, code, |x, y| {
                    a.lung_inside(side, x, y) > 0.5 && y > surface(x)
                })
            }
            "Infiltration" => {
                let (x, y) = a.lung_point(rng, side, (0.2, 0.8));
                let mut b = None;
                for _ in 0..rng.random_range(4..7) {
                    let (bx, by) = (
                        x + rng.random_range(-0.04..0.04),
                        y + rng.random_range(-0.04..0.04),
                    );
                    let s = rng.random_range(0.01..0.018);
                    p.gaussian(
                        bx,
                        by,
                        s,
                        s * 0.8,
                        rng.random_range(0.0..PI),
                        rng.random_range(0.1..0.14),
                    );
                    let e = Ellipse::new(bx, by, 1.2 * s, 0.96 * s, 0.0);
                    b = union_box(
                        b,
                        mask.paint(e.bbox(), code, |x, y| {
                            e.contains(x, y) && a.lung_inside(side, x, y) > 0.5
                        }),
                    );
                }
                b
            }
            "Pneumothorax" => {
                let l = a.lung(side);
                let s = if side == 0 { -1.0 } else { 1.0 };
                let collapsed = Ellipse::new(
                    l.cx - s * 0.03 * l.rx / 0.16,
                    l.cy + 0.04,
                    l.rx * 0.78,
                    l.ry * 0.82,
                    l.angle,
                );
                let bx = l.bbox();
                let aa = a.clone();
                let yl = l.cy + 0.05;
                p.add_fn(bx, |x, y| {
                    if y > yl {
                        return 0.0;
                    }
                    let crescent = aa.lung_inside(side, x, y)
                        * soft_inside(-collapsed.signed_distance(x, y), 0.004);
                    let line = soft_inside(collapsed.signed_distance(x, y).abs() - 0.0015, 0.0015)
                        * aa.lung_inside(side, x, y);
                    -0.12 * crescent + 0.08 * line
                });
                mask.paint(bx, code, |x, y| {
                    y <= yl && a.lung_inside(side, x, y) > 0.5 && !collapsed.contains(x, y)
                })
            }
            "Atelectasis" => {
                let (x, y) = a.lung_point(rng, side, (0.55, 0.9));
                let ang = rng.random_range(-0.35..0.35f32);
                let len = rng.random_range(0.03..0.05);
                let (a0, a1) = (
                    (x - len * ang.cos(), y - len * ang.sin()),
                    (x + len * ang.cos(), y + len * ang.sin()),
                );
                let hw = rng.random_range(0.005..0.009);
                p.segment(a0, a1, hw, 0.2, 0.004);
                let bx = (
                    x - len - 0.02,
                    y - len - 0.02,
                    x + len + 0.02,
                    y + len + 0.02,
                );
                mask.paint(bx, code, |px, py| {
                    super::draw::segment_distance((px, py), a0, a1) <= hw + 0.002
                })
            }
            "Pneumonia" => {
                let (x, y) = a.lung_point(rng, side, (0.45, 0.85));
                let mut b = None;
                for _ in 0..rng.random_range(2..4) {
                    let (bx, by) = (
                        x + rng.random_range(-0.03..0.03),
                        y + rng.random_range(-0.03..0.03),
                    );
                    let s = rng.random_range(0.018..0.028);
                    p.gaussian(bx, by, s, s * 0.85, rng.random_range(0.0..PI), 0.16);
                    let e = Ellipse::new(bx, by, 1.2 * s, 1.02 * s, 0.0);
                    b = union_box(
                        b,
                        mask.paint(e.bbox(), code, |x, y| {
                            e.contains(x, y) && a.lung_inside(side, x, y) > 0.5
                        }),
                    );
                }
                b
            }
            "Consolidation" => {
                let (x, y) = a.lung_point(rng, side, (0.3, 0.85));
                let e = Ellipse::new(
                    x,
                    y,
                    rng.random_range(0.035..0.05),
                    rng.random_range(0.025..0.04),
                    rng.random_range(0.0..PI),
                );
                p.ellipse(&e, 0.26, 0.01);
                for _ in 0..2 {
                    let ang = rng.random_range(0.0..PI);
                    let d = 0.6 * e.rx.min(e.ry);
                    p.segment(
                        (x - d * ang.cos(), y - d * ang.sin()),
                        (x + d * ang.cos(), y + d * ang.sin()),
                        0.002,
                        -0.08,
                        0.0015,
                    );
                }
                mask.paint(e.bbox(), code, |x, y| e.contains(x, y))
            }
            "Edema" => {
                let mut b = None;
                for s in [-1.0f32, 1.0] {
                    let (hx, hy) = (a.cx + s * (a.sep + 0.06), (a.top + a.bottom) / 2.0);
                    p.gaussian(hx, hy, 0.045, 0.06, 0.0, 0.13);
                    let e = Ellipse::new(hx, hy, 0.053, 0.07, 0.0);
                    b = union_box(b, mask.paint(e.bbox(), code, |x, y| e.contains(x, y)));
                }
                b
            }
            "Emphysema" => {
                // Already drawn as hyperlucent lungs and a flat diaphragm.
                let l0 = a.lung(0);
                let l1 = a.lung(1);
                let bx = (l0.cx - l0.rx, a.top - 0.05, l1.cx + l1.rx, a.bottom + 0.05);
                mask.paint(bx, code, |x, y| {
                    a.lung_inside(0, x, y) > 0.5 || a.lung_inside(1, x, y) > 0.5
                })
            }
            "Fibrosis" => {
                let mut b = None;
                for _ in 0..rng.random_range(14..22) {
                    let sd = rng.random_range(0..2usize);
                    let (x, y) = a.lung_point(rng, sd, (0.6, 0.95));
                    let ang = rng.random_range(0.0..PI);
                    let len = rng.random_range(0.008..0.016);
                    let (a0, a1) = (
                        (x - len * ang.cos(), y - len * ang.sin()),
                        (x + len * ang.cos(), y + len * ang.sin()),
                    );
                    p.segment(a0, a1, 0.0022, 0.11, 0.0015);
                    let bx = (x - 0.02, y - 0.02, x + 0.02, y + 0.02);
                    b = union_box(
                        b,
                        mask.paint(bx, code, |px, py| {
                            super::draw::segment_distance((px, py), a0, a1) <= 0.004
                        }),
                    );
                }
                b
            }
            "Pleural_Thickening" => {
                let y0 = a.top + rng.random_range(0.1..0.6f32) * (a.bottom - a.top);
                let s = if side == 0 { 1.0f32 } else { -1.0 };
                let pts: Vec<(f32, f32)> = (0..8)
                    .map(|k| {
                        let y = y0 + k as f32 * 0.012;
                        (a.lateral_edge(side, y) + s * 0.006, y)
                    })
                    .collect();
                p.polyline(&pts, 0.006, 0.17, 0.003);
                let bx = pts.iter().fold((1.0f32, 1.0f32, 0.0f32, 0.0f32), |b, q| {
                    (
                        b.0.min(q.0 - 0.01),
                        b.1.min(q.1 - 0.01),
                        b.2.max(q.0 + 0.01),
                        b.3.max(q.1 + 0.01),
                    )
                });
                mask.paint(bx, code, |x, y| {
                    pts.windows(2)
                        .any(|w| super::draw::segment_distance((x, y), w[0], w[1]) <= 0.008)
                })
            }
            "Hernia" => {
                let e = Ellipse::new(
                    a.cx + rng.random_range(0.0..0.03),
                    a.bottom - 0.06,
                    0.04,
                    0.032,
                    0.0,
                );
                p.ellipse(&e, 0.16, 0.008);
                // Air-fluid level: gas above, fluid below.
                let ee = e;
                p.add_fn(e.bbox(), |x, y| {
                    if ee.contains(x, y) && y < ee.cy - 0.005 {
                        -0.1
                    } else {
                        0.0
                    }
                });
                mask.paint(e.bbox(), code, |x, y| e.contains(x, y))
            }
            // Cardiomegaly was drawn with the heart.
            _ => None,
        };
        if let Some(b) = painted
            && NIH_FINDINGS[f] != "Cardiomegaly"
        {
            boxes.push((f, b));
        }
    }

    // Soften, add acquisition noise and exposure variation.
    p.blur(1);
    p.smooth_noise(rng, 6, 0.025);
    p.noise(rng, 0.012);
    let gain = rng.random_range(0.92..1.08f32);
    let offset = rng.random_range(-0.03..0.03f32);
    let gamma = rng.random_range(0.9..1.1f32);
    for v in &mut p.data {
        *v = ((*v * gain + offset).clamp(0.0, 1.0)).powf(gamma);
    }
    boxes.retain(|(f, _)| NIH_BBOX_FINDINGS.contains(&NIH_FINDINGS[*f]));
    boxes.sort_by_key(|(f, _)| *f);
    CxrImage {
        pixels: p,
        mask,
        boxes,
    }
}

/// The plan of a run: who the patients are and which findings each image has.
fn plan(cfg: &CxrConfig) -> Vec<(CxrCase, Anatomy, Vec<usize>, u64)> {
    let mut out = Vec::new();
    let mut pid: u32 = 0;
    while out.len() < cfg.n {
        pid += 1;
        let mut prng = ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, 1, pid as u64));
        let anat = Anatomy::sample(&mut prng);
        let n_img = match prng.random::<f32>() {
            x if x < 0.3 => 1,
            x if x < 0.6 => 2,
            x if x < 0.85 => 3,
            _ => 4,
        }
        .min(cfg.n - out.len());
        // Findings persist across a patient's studies more often than not.
        let base = sample_findings(&mut prng, cfg.no_finding_fraction);
        let view_ap = prng.random_bool(0.3);
        for fu in 0..n_img {
            let findings = if fu == 0 || prng.random_bool(0.6) {
                base.clone()
            } else {
                sample_findings(&mut prng, cfg.no_finding_fraction)
            };
            let labels = if findings.is_empty() {
                vec![NO_FINDING.to_string()]
            } else {
                findings
                    .iter()
                    .map(|&i| NIH_FINDINGS[i].to_string())
                    .collect()
            };
            let case = CxrCase {
                name: format!("{pid:08}_{fu:03}.png"),
                patient_id: pid,
                follow_up: fu as u32,
                age: anat.age + fu as u32 / 2,
                sex: anat.sex,
                view: if view_ap { "AP" } else { "PA" },
                labels,
                split: Split::Train,
                boxes: Vec::new(),
            };
            let seed = mix_seed(cfg.seed, 2, out.len() as u64);
            out.push((case, anat.clone(), findings, seed));
        }
    }
    // Patient-disjoint test split: the patients with the smallest hash of (seed, id).
    let patients = pid as usize;
    let n_test = ((patients as f32 * cfg.test_fraction).round() as usize)
        .clamp(usize::from(patients > 1), patients.saturating_sub(1).max(1));
    let mut order: Vec<u32> = (1..=pid).collect();
    order.sort_by_key(|&p| mix_seed(cfg.seed, 3, p as u64));
    let test: std::collections::HashSet<u32> = order.into_iter().take(n_test).collect();
    for (c, ..) in &mut out {
        if test.contains(&c.patient_id) {
            c.split = Split::Test;
        }
    }
    out
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |e| DataError::io(path, e)
}

/// Writes `n` chest phantoms in the NIH layout under `out`; `tick` is called once per image
/// written (for progress bars). Returns the ground truth in file order.
pub fn write_cxr(out: &Path, cfg: &CxrConfig, tick: &(dyn Fn() + Sync)) -> Result<Vec<CxrCase>> {
    if cfg.size < 32 {
        return Err(DataError::format(
            out,
            format!("phantom size {} is below the minimum 32", cfg.size),
        ));
    }
    for d in ["images", "masks"] {
        std::fs::create_dir_all(out.join(d)).map_err(io_err(&out.join(d)))?;
    }
    let planned = plan(cfg);
    let size = cfg.size;
    let cases: Vec<CxrCase> = planned
        .par_iter()
        .map(|(case, anat, findings, seed)| -> Result<CxrCase> {
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            let img = render(anat, findings, size, &mut rng);
            let px: Vec<u8> = img
                .pixels
                .data
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect();
            let ip = out.join("images").join(&case.name);
            image::GrayImage::from_raw(size as u32, size as u32, px)
                .expect("size")
                .save(&ip)
                .map_err(|e| DataError::image(&ip, e))?;
            let mp = out.join("masks").join(&case.name);
            image::GrayImage::from_raw(size as u32, size as u32, img.mask.data)
                .expect("size")
                .save(&mp)
                .map_err(|e| DataError::image(&mp, e))?;
            let mut case = case.clone();
            case.boxes = img
                .boxes
                .iter()
                .map(|(f, b)| BBox {
                    label: NIH_FINDINGS[*f].to_string(),
                    x: b.0 as f32,
                    y: b.1 as f32,
                    w: b.2 as f32,
                    h: b.3 as f32,
                })
                .collect();
            tick();
            Ok(case)
        })
        .collect::<Result<_>>()?;

    let spacing = 0.143 * 1024.0 / size as f32;
    let entry = out.join("Data_Entry_2017.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&entry).map_err(io_err(&entry))?);
    let mut text = String::from(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n",
    );
    for c in &cases {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{size},{size},{spacing:.6},{spacing:.6}\n",
            c.name,
            c.labels.join("|"),
            c.follow_up,
            c.patient_id,
            c.age,
            c.sex,
            c.view
        ));
    }
    f.write_all(text.as_bytes()).map_err(io_err(&entry))?;
    f.flush().map_err(io_err(&entry))?;

    for (file, split) in [
        ("train_val_list.txt", Split::Train),
        ("test_list.txt", Split::Test),
    ] {
        let p = out.join(file);
        let list: String = cases
            .iter()
            .filter(|c| c.split == split)
            .map(|c| format!("{}\n", c.name))
            .collect();
        std::fs::write(&p, list).map_err(io_err(&p))?;
    }
    // NIH spells the box label `Infiltrate`; we write it that way so the reader's
    // canonicalisation is what the phantoms exercise.
    let bp = out.join("BBox_List_2017.csv");
    let mut bt = String::from("Image Index,Finding Label,Bbox [x,y,w,h],,,\n");
    for c in &cases {
        for b in &c.boxes {
            let label = if b.label == "Infiltration" {
                "Infiltrate"
            } else {
                &b.label
            };
            bt.push_str(&format!(
                "{},{label},{},{},{},{}\n",
                c.name, b.x, b.y, b.w, b.h
            ));
        }
    }
    std::fs::write(&bp, bt).map_err(io_err(&bp))?;
    Ok(cases)
}
