//! Fundus phantom in the EyePACS layout.
//!
//! A retina disc on black with the optic disc on the nasal side (image right for a right
//! eye, left for a left eye), a darker macula temporal to it, and a branching vessel tree
//! whose temporal arcades curve around the macula. Diabetic retinopathy lesions are drawn
//! by grade and the grade label is then *derived from what was drawn*
//! ([`grade_from_lesions`]), so label and image always agree.

use std::f32::consts::PI;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::draw::{Ellipse, Mask, Plane, mix_seed, soft_inside};
use crate::error::{DataError, Result};
use crate::labels::fundus_mask as code;
use crate::record::{Eye, Split};

/// Settings of `medret synth fundus`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FundusConfig {
    pub n: usize,
    pub size: usize,
    pub seed: u64,
    pub test_fraction: f32,
    /// Probability of each target grade 0-4. EyePACS is ~73% grade 0; the default is
    /// flatter so small demo sets contain every grade.
    pub grade_weights: [f32; 5],
    pub jpeg_quality: u8,
}

impl Default for FundusConfig {
    fn default() -> Self {
        FundusConfig {
            n: 200,
            size: 256,
            seed: 0,
            test_fraction: 0.2,
            grade_weights: [0.36, 0.16, 0.2, 0.14, 0.14],
            jpeg_quality: 92,
        }
    }
}

/// Lesion counts drawn on one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LesionCounts {
    pub microaneurysms: u32,
    pub haemorrhages: u32,
    pub hard_exudates: u32,
    pub cotton_wool: u32,
    pub neovascularisation: u32,
    /// Quadrants (around the macula) holding at least 4 haemorrhages.
    pub haemorrhage_quadrants: u32,
}

/// A simplified International Clinical DR scale applied to what was drawn:
/// 4 any neovascularisation; 3 haemorrhages (>= 4) in all four quadrants; 2 haemorrhages,
/// exudates or cotton-wool spots; 1 microaneurysms only; 0 nothing.
pub fn grade_from_lesions(c: &LesionCounts) -> u8 {
    if c.neovascularisation > 0 {
        4
    } else if c.haemorrhage_quadrants >= 4 {
        3
    } else if c.haemorrhages + c.hard_exudates + c.cotton_wool > 0 {
        2
    } else if c.microaneurysms > 0 {
        1
    } else {
        0
    }
}

/// Ground truth of one generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct FundusCase {
    /// `{patient}_{left|right}`.
    pub name: String,
    pub patient_id: u32,
    pub eye: Eye,
    pub grade: u8,
    pub lesions: LesionCounts,
    pub split: Split,
}

struct Vessel {
    pts: Vec<(f32, f32)>,
    hw: f32,
}

/// A vessel to grow: from `start` with heading `ang`, bending by `bend` a step.
#[derive(Clone, Copy)]
struct Sprout {
    start: (f32, f32),
    ang: f32,
    bend: f32,
    hw: f32,
    steps: usize,
    depth: u32,
}

/// Grows a vessel and, recursively, its branches, staying inside the retina disc.
fn grow(rng: &mut ChaCha8Rng, out: &mut Vec<Vessel>, s: Sprout, centre: (f32, f32), radius: f32) {
    let Sprout {
        start,
        mut ang,
        bend,
        hw,
        steps,
        depth,
    } = s;
    let mut pts = vec![start];
    let (mut x, mut y) = start;
    let step = 0.022;
    for i in 0..steps {
        ang += bend + rng.random_range(-0.12..0.12);
        x += step * ang.cos();
        y += step * ang.sin();
        if ((x - centre.0).powi(2) + (y - centre.1).powi(2)).sqrt() > radius * 0.97 {
            break;
        }
        pts.push((x, y));
        if depth > 0 && i > 2 && i % 4 == 2 && rng.random_bool(0.7) {
            let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let turn = rng.random_range(0.5..0.9);
            let branch = Sprout {
                start: (x, y),
                ang: ang + side * turn,
                bend: bend * 0.5 + side * 0.03,
                hw: hw * 0.65,
                steps: steps / 2 + 2,
                depth: depth - 1,
            };
            grow(rng, out, branch, centre, radius);
        }
    }
    if pts.len() > 1 {
        out.push(Vessel { pts, hw });
    }
}

/// The plan of one image.
#[derive(Debug, Clone)]
struct Plan {
    case: FundusCase,
    target: u8,
    seed: u64,
    pigment: f32,
}

fn lesion_targets(rng: &mut ChaCha8Rng, grade: u8) -> LesionCounts {
    let mut c = LesionCounts::default();
    match grade {
        0 => {}
        1 => c.microaneurysms = rng.random_range(1..6),
        2 => {
            c.microaneurysms = rng.random_range(2..10);
            c.haemorrhages = rng.random_range(0..6);
            c.hard_exudates = rng.random_range(0..10);
            c.cotton_wool = rng.random_range(0..3);
            if c.haemorrhages + c.hard_exudates + c.cotton_wool == 0 {
                c.haemorrhages = 1;
            }
        }
        _ => {
            c.microaneurysms = rng.random_range(5..15);
            c.haemorrhages = 16 + rng.random_range(0..8);
            c.hard_exudates = rng.random_range(0..12);
            c.cotton_wool = rng.random_range(0..4);
            if grade == 4 {
                c.neovascularisation = rng.random_range(1..3);
            }
        }
    }
    c
}

/// Renders one fundus image; returns RGB planes, the lesion mask and what was drawn.
fn render(plan: &Plan, size: usize) -> ([Plane; 3], Mask, LesionCounts) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let want = lesion_targets(&mut rng, plan.target);
    // Camera: small rotation and offset of the whole scene.
    let rot = rng.random_range(-0.15..0.15f32);
    let centre = (
        0.5 + rng.random_range(-0.01..0.01),
        0.5 + rng.random_range(-0.01..0.01),
    );
    let radius = rng.random_range(0.44..0.47f32);
    let rotp = |x: f32, y: f32| {
        let (dx, dy) = (x - centre.0, y - centre.1);
        (
            centre.0 + dx * rot.cos() - dy * rot.sin(),
            centre.1 + dx * rot.sin() + dy * rot.cos(),
        )
    };
    let nasal = if plan.case.eye == Eye::Right {
        1.0f32
    } else {
        -1.0
    };
    let disc = rotp(
        centre.0 + nasal * 0.24,
        centre.1 + rng.random_range(-0.03..0.03),
    );
    let disc_r = rng.random_range(0.062..0.075f32);
    let macula = rotp(
        centre.0 - nasal * 0.05,
        centre.1 + rng.random_range(-0.015..0.015),
    );

    // Reflectance: one "red-free" density plane `d` (vessels, haemorrhages darken) and a
    // "bright" plane `b` (disc, exudates, cotton wool), mixed into colour at the end.
    let mut d = Plane::new(size, size, 0.0);
    let mut b = Plane::new(size, size, 0.0);
    let mut yellow = Plane::new(size, size, 0.0);
    let mut mask = Mask::new(size, size);
    let mut got = LesionCounts::default();

    d.smooth_noise(&mut rng, 8, 0.05);
    d.smooth_noise(&mut rng, 40, 0.025); // choroidal texture
    d.gaussian(macula.0, macula.1, 0.07, 0.07, 0.0, 0.22);
    d.gaussian(macula.0, macula.1, 0.015, 0.015, 0.0, 0.12);
    b.ellipse(
        &Ellipse::new(disc.0, disc.1, disc_r, disc_r * 1.1, rot),
        0.55,
        0.012,
    );
    b.gaussian(
        disc.0 + nasal * 0.01,
        disc.1,
        disc_r * 0.35,
        disc_r * 0.4,
        0.0,
        0.3,
    );

    // Vessel tree: four main vessels leave the disc; temporal arcades bend round the macula.
    let mut vessels = Vec::new();
    let temporal = if nasal > 0.0 { PI } else { 0.0 };
    let nasal_ang = if nasal > 0.0 { 0.0 } else { PI };
    for (k, (a0, bend)) in [
        (temporal - 1.2, 0.06),
        (temporal + 1.2, -0.06),
        (nasal_ang - 0.6, 0.0),
        (nasal_ang + 0.6, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        // Arcades turn towards the temporal horizontal and so arch round the macula.
        let bend = if k < 2 {
            bend
        } else {
            rng.random_range(-0.03..0.03)
        };
        for pair in 0..2 {
            // An artery and its vein run side by side.
            let off = if pair == 0 { 0.0 } else { 0.012 };
            let sprout = Sprout {
                start: (disc.0, disc.1 + off - 0.006),
                ang: a0 + rot + off,
                bend,
                hw: if pair == 0 { 0.0045 } else { 0.0058 },
                steps: if k < 2 { 20 } else { 14 },
                depth: 3,
            };
            grow(&mut rng, &mut vessels, sprout, centre, radius);
        }
    }
    for v in &vessels {
        d.polyline(&v.pts, v.hw, 0.45, 0.0025);
    }

    let dist_c = |x: f32, y: f32| ((x - centre.0).powi(2) + (y - centre.1).powi(2)).sqrt();
    // Points next to a vessel (where MAs and haemorrhages sit).
    let near_vessel = |rng: &mut ChaCha8Rng| -> (f32, f32) {
        for _ in 0..50 {
            let v = &vessels[rng.random_range(0..vessels.len())];
            let i = rng.random_range(0..v.pts.len());
            let (x, y) = v.pts[i];
            let (ox, oy) = (
                rng.random_range(-0.025..0.025),
                rng.random_range(-0.025..0.025),
            );
            let p = (x + ox, y + oy);
            let far_disc = ((p.0 - disc.0).powi(2) + (p.1 - disc.1).powi(2)).sqrt() > disc_r * 1.4;
            if dist_c(p.0, p.1) < radius * 0.92 && far_disc {
                return p;
            }
        }
        (macula.0, macula.1 + 0.1)
    };
    let quadrant =
        |x: f32, y: f32| -> usize { (usize::from(x > macula.0)) + 2 * usize::from(y > macula.1) };

    // Haemorrhages: blots; for grade 3+, spread over all four quadrants.
    let mut per_quadrant = [0u32; 4];
    for i in 0..want.haemorrhages {
        let (x, y) = if plan.target >= 3 {
            // Force the four-quadrant spread that defines severe NPDR.
            let q = (i % 4) as usize;
            let (sx, sy) = (
                if q & 1 == 1 { 1.0 } else { -1.0 },
                if q & 2 == 2 { 1.0 } else { -1.0 },
            );
            let r = rng.random_range(0.08..0.3f32).min(radius * 0.8);
            let t = rng.random_range(0.2..1.35f32);
            (macula.0 + sx * r * t.cos(), macula.1 + sy * r * t.sin())
        } else {
            near_vessel(&mut rng)
        };
        if dist_c(x, y) > radius * 0.93 {
            continue;
        }
        let r = rng.random_range(0.008..0.02f32);
        let e = Ellipse::new(
            x,
            y,
            r,
            r * rng.random_range(0.5..1.0),
            rng.random_range(0.0..PI),
        );
        d.ellipse(&e, 0.5, r * 0.3);
        if mask
            .paint(e.bbox(), code::HAEMORRHAGE, |x, y| e.contains(x, y))
            .is_some()
        {
            got.haemorrhages += 1;
            per_quadrant[quadrant(x, y)] += 1;
        }
    }
    got.haemorrhage_quadrants = per_quadrant.iter().filter(|&&n| n >= 4).count() as u32;
    // Microaneurysms: tiny dark-red dots beside vessels, at least a pixel across.
    let ma_r = (0.0045f32).max(0.9 / size as f32);
    for _ in 0..want.microaneurysms {
        let (x, y) = near_vessel(&mut rng);
        let e = Ellipse::new(x, y, ma_r, ma_r, 0.0);
        d.ellipse(&e, 0.55, ma_r * 0.4);
        if mask
            .paint(e.bbox(), code::MICROANEURYSM, |x, y| e.contains(x, y))
            .is_some()
        {
            got.microaneurysms += 1;
        }
    }
    // Hard exudates: yellow flecks, often in a ring around the macula.
    for _ in 0..want.hard_exudates {
        let t = rng.random_range(0.0..2.0 * PI);
        let r = rng.random_range(0.05..0.14f32);
        let (x, y) = (macula.0 + r * t.cos(), macula.1 + r * t.sin());
        let s = rng.random_range(0.004..0.01f32);
        let e = Ellipse::new(x, y, s, s * rng.random_range(0.6..1.0), t);
        yellow.ellipse(&e, 0.7, s * 0.3);
        if mask
            .paint(e.bbox(), code::HARD_EXUDATE, |x, y| e.contains(x, y))
            .is_some()
        {
            got.hard_exudates += 1;
        }
    }
    // Cotton-wool spots: pale, fluffy, along the arcades.
    for _ in 0..want.cotton_wool {
        let (x, y) = near_vessel(&mut rng);
        let s = rng.random_range(0.014..0.024f32);
        b.gaussian(x, y, s, s * 0.7, rng.random_range(0.0..PI), 0.35);
        let e = Ellipse::new(x, y, s * 1.1, s * 0.77, 0.0);
        if mask
            .paint(e.bbox(), code::COTTON_WOOL, |x, y| e.contains(x, y))
            .is_some()
        {
            got.cotton_wool += 1;
        }
    }
    // Neovascularisation: fine tortuous loops on or near the disc.
    for _ in 0..want.neovascularisation {
        let t = rng.random_range(0.0..2.0 * PI);
        let (cx, cy) = (
            disc.0 + 1.2 * disc_r * t.cos(),
            disc.1 + 1.2 * disc_r * t.sin(),
        );
        let pts: Vec<(f32, f32)> = (0..24)
            .map(|k| {
                let a = k as f32 / 23.0 * 4.0 * PI;
                let r = 0.012 + 0.01 * (3.0 * a).sin();
                (cx + r * a.cos(), cy + r * a.sin())
            })
            .collect();
        d.polyline(&pts, 0.0018, 0.4, 0.0015);
        let painted = mask.paint(
            (cx - 0.03, cy - 0.03, cx + 0.03, cy + 0.03),
            code::NEOVASCULARISATION,
            |x, y| {
                pts.windows(2)
                    .any(|w| super::draw::segment_distance((x, y), w[0], w[1]) <= 0.004)
            },
        );
        if painted.is_some() {
            got.neovascularisation += 1;
        }
    }

    // Colour: orange-red fundus, pigmentation and illumination vary per image.
    let base = [
        0.78 * plan.pigment,
        0.36 * plan.pigment,
        0.16 * plan.pigment,
    ];
    let vessel_col = [0.45, 0.07, 0.05];
    let bright_col = [1.0, 0.9, 0.62];
    let yellow_col = [0.98, 0.88, 0.35];
    let light_dir = rng.random_range(0.0..2.0 * PI);
    let light_amp = rng.random_range(0.0..0.25f32);
    let mut planes = [
        Plane::new(size, size, 0.0),
        Plane::new(size, size, 0.0),
        Plane::new(size, size, 0.0),
    ];
    for py in 0..size {
        let y = (py as f32 + 0.5) / size as f32;
        for px in 0..size {
            let x = (px as f32 + 0.5) / size as f32;
            let i = py * size + px;
            let r = dist_c(x, y) / radius;
            let inside = soft_inside(r - 1.0, 0.006);
            if inside <= 0.0 {
                continue;
            }
            let vignette = 1.0 - 0.45 * r.powi(3);
            let light = 1.0
                + light_amp * ((x - centre.0) * light_dir.cos() + (y - centre.1) * light_dir.sin())
                    / radius;
            let dd = d.data[i].clamp(-0.2, 1.0);
            let bb = b.data[i].clamp(0.0, 1.0);
            let yy = yellow.data[i].clamp(0.0, 1.0);
            for c in 0..3 {
                let mut v = base[c] * (1.0 - dd) + vessel_col[c] * dd * 0.6;
                v = v * (1.0 - bb) + bright_col[c] * bb;
                v = v * (1.0 - yy) + yellow_col[c] * yy;
                planes[c].data[i] = (v * vignette * light * inside).clamp(0.0, 1.0);
            }
        }
    }
    for p in &mut planes {
        p.noise(&mut rng, 0.008);
        for v in &mut p.data {
            *v = v.clamp(0.0, 1.0);
        }
    }
    (planes, mask, got)
}

fn plan(cfg: &FundusConfig) -> Vec<Plan> {
    let mut out = Vec::new();
    let mut patient = 9u32; // EyePACS names start at 10_left
    let total: f32 = cfg.grade_weights.iter().sum();
    while out.len() < cfg.n {
        patient += 1;
        let mut prng = ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, 11, patient as u64));
        let mut u = prng.random::<f32>() * total;
        let mut g0 = 4u8;
        for (g, w) in cfg.grade_weights.iter().enumerate() {
            if u < *w {
                g0 = g as u8;
                break;
            }
            u -= w;
        }
        let pigment = prng.random_range(0.75..1.1f32);
        for eye in [Eye::Left, Eye::Right] {
            if out.len() >= cfg.n {
                break;
            }
            // The two eyes of a patient usually have similar disease.
            let target = if eye == Eye::Left {
                g0
            } else {
                (g0 as i32 + prng.random_range(-1..=1)).clamp(0, 4) as u8
            };
            out.push(Plan {
                case: FundusCase {
                    name: format!("{patient}_{}", eye.name()),
                    patient_id: patient,
                    eye,
                    grade: target,
                    lesions: LesionCounts::default(),
                    split: Split::Train,
                },
                target,
                seed: mix_seed(cfg.seed, 12, out.len() as u64),
                pigment,
            });
        }
    }
    let patients: Vec<u32> = (10..=patient).collect();
    let n_test = ((patients.len() as f32 * cfg.test_fraction).round() as usize)
        .min(patients.len().saturating_sub(1));
    let mut order = patients;
    order.sort_by_key(|&p| mix_seed(cfg.seed, 13, p as u64));
    let test: std::collections::HashSet<u32> = order.into_iter().take(n_test).collect();
    for p in &mut out {
        if test.contains(&p.case.patient_id) {
            p.case.split = Split::Test;
        }
    }
    out
}

/// Writes `n` fundus phantoms in the EyePACS layout under `out`: `trainLabels.csv` for the
/// train patients, `retinopathy_solution.csv` (`image,level,Usage`) for the test patients,
/// `images/{name}.jpeg` and `masks/{name}.png`. Returns the ground truth in file order.
pub fn write_fundus(
    out: &Path,
    cfg: &FundusConfig,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<FundusCase>> {
    if cfg.size < 32 {
        return Err(DataError::format(
            out,
            format!("phantom size {} is below the minimum 32", cfg.size),
        ));
    }
    for d in ["images", "masks"] {
        std::fs::create_dir_all(out.join(d)).map_err(|e| DataError::io(out.join(d), e))?;
    }
    let size = cfg.size;
    let cases: Vec<FundusCase> = plan(cfg)
        .par_iter()
        .map(|p| -> Result<FundusCase> {
            let (planes, mask, got) = render(p, size);
            let mut px = Vec::with_capacity(3 * size * size);
            for i in 0..size * size {
                for pl in &planes {
                    px.push((pl.data[i] * 255.0).round() as u8);
                }
            }
            let ip = out.join("images").join(format!("{}.jpeg", p.case.name));
            let file = std::fs::File::create(&ip).map_err(|e| DataError::io(&ip, e))?;
            let mut w = std::io::BufWriter::new(file);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, cfg.jpeg_quality)
                .encode(
                    &px,
                    size as u32,
                    size as u32,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| DataError::image(&ip, e))?;
            let mp = out.join("masks").join(format!("{}.png", p.case.name));
            image::GrayImage::from_raw(size as u32, size as u32, mask.data)
                .expect("size")
                .save(&mp)
                .map_err(|e| DataError::image(&mp, e))?;
            let mut case = p.case.clone();
            case.lesions = got;
            case.grade = grade_from_lesions(&got);
            tick();
            Ok(case)
        })
        .collect::<Result<_>>()?;
    let mut train = String::from("image,level\n");
    let mut test = String::from("image,level,Usage\n");
    for (i, c) in cases.iter().enumerate() {
        match c.split {
            Split::Test => test.push_str(&format!(
                "{},{},{}\n",
                c.name,
                c.grade,
                if i % 2 == 0 { "Public" } else { "Private" }
            )),
            _ => train.push_str(&format!("{},{}\n", c.name, c.grade)),
        }
    }
    for (f, t) in [
        ("trainLabels.csv", train),
        ("retinopathy_solution.csv", test),
    ] {
        let p = out.join(f);
        std::fs::write(&p, t).map_err(|e| DataError::io(&p, e))?;
    }
    Ok(cases)
}
