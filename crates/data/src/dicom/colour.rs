//! Colour models of DICOM pixel data (PS3.3 C.7.6.3.1.2): YCbCr to RGB, 4:2:2 chroma,
//! palette colour lookup tables.

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::dicom_err;
use crate::error::Result;

/// YBR_FULL (and the full-range data of YBR_FULL_422 once upsampled) to RGB, rounded to
/// integers and clamped to `[0, max]`, as the standard's equations give them.
pub fn ybr_full_to_rgb(v: &[i64], max: f64) -> Vec<f32> {
    let mid = (max + 1.0) / 2.0;
    v.chunks_exact(3)
        .flat_map(|p| {
            let (y, cb, cr) = (p[0] as f64, p[1] as f64 - mid, p[2] as f64 - mid);
            [
                y + 1.402 * cr,
                y - 0.344136 * cb - 0.714136 * cr,
                y + 1.772 * cb,
            ]
        })
        .map(|x| x.round().clamp(0.0, max) as f32)
        .collect()
}

/// YBR_PARTIAL_422 and YBR_PARTIAL_420 (ITU-R BT.601 video range: Y from 16, chroma
/// around 128, at 8 bits; scaled for deeper samples) to RGB.
pub fn ybr_partial_to_rgb(v: &[i64], max: f64) -> Vec<f32> {
    let scale = (max + 1.0) / 256.0;
    let (black, mid) = (16.0 * scale, 128.0 * scale);
    v.chunks_exact(3)
        .flat_map(|p| {
            let y = 1.1644 * (p[0] as f64 - black);
            let (cb, cr) = (p[1] as f64 - mid, p[2] as f64 - mid);
            [
                y + 1.5960 * cr,
                y - 0.3918 * cb - 0.8130 * cr,
                y + 2.0172 * cb,
            ]
        })
        .map(|x| x.round().clamp(0.0, max) as f32)
        .collect()
}

/// Native YBR_FULL_422 data (`Y1 Y2 Cb Cr` for each pair of pixels in a row) to one
/// `Y Cb Cr` triple per pixel, each pair sharing its chroma.
pub fn upsample_422(path: &Path, v: &[i64], rows: usize, cols: usize) -> Result<Vec<i64>> {
    if !cols.is_multiple_of(2) {
        return Err(dicom_err(
            path,
            format!("YBR_FULL_422 with an odd number of columns ({cols})"),
        ));
    }
    let mut out = Vec::with_capacity(rows * cols * 3);
    for q in v.chunks_exact(4).take(rows * cols / 2) {
        out.extend_from_slice(&[q[0], q[2], q[3], q[1], q[2], q[3]]);
    }
    Ok(out)
}

/// PALETTE COLOR: each stored index through the red, green and blue lookup tables.
/// Returns interleaved RGB and the tables' full scale.
pub fn palette(path: &Path, obj: &InMemDicomObject, index: &[i64]) -> Result<(Vec<f32>, f32)> {
    if obj
        .element_opt(tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA)
        .ok()
        .flatten()
        .is_some()
    {
        return Err(dicom_err(
            path,
            "segmented palette colour lookup tables are not supported",
        ));
    }
    let tables = [
        (
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "red",
        ),
        (
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "green",
        ),
        (
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "blue",
        ),
    ]
    .map(|(d, t, name)| table(path, obj, d, t, name));
    let [r, g, b] = tables;
    let (r, g, b) = (r?, g?, b?);
    let max = ((1u64 << r.bits) - 1) as f32;
    let look = |t: &Table, v: i64| -> f32 {
        let i = (v - t.first).clamp(0, t.entries.len() as i64 - 1) as usize;
        t.entries[i]
    };
    let data = index
        .iter()
        .flat_map(|&v| [look(&r, v), look(&g, v), look(&b, v)])
        .collect();
    Ok((data, max))
}

struct Table {
    first: i64,
    bits: u32,
    entries: Vec<f32>,
}

fn table(path: &Path, obj: &InMemDicomObject, desc: Tag, data: Tag, name: &str) -> Result<Table> {
    let d: Vec<i64> = obj
        .element_opt(desc)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or_else(|| {
            dicom_err(
                path,
                format!("PALETTE COLOR without a three-value {name} lookup table descriptor"),
            )
        })?;
    let n = if d[0] == 0 { 65536 } else { d[0] as usize };
    let bits = match d[2] {
        8 => 8,
        16 => 16,
        other => {
            return Err(dicom_err(
                path,
                format!("{name} palette entries of {other} bits; expected 8 or 16"),
            ));
        }
    };
    let bytes = obj
        .element_opt(data)
        .ok()
        .flatten()
        .ok_or_else(|| {
            dicom_err(
                path,
                format!("PALETTE COLOR without {name} lookup table data"),
            )
        })?
        .value()
        .to_bytes()
        .map_err(|e| dicom_err(path, format!("{name} lookup table data: {e}")))?;
    let entries: Vec<f32> = if bits == 8 && bytes.len() < 2 * n {
        // 8-bit entries packed two to a 16-bit word, the first in the low byte.
        bytes.iter().take(n).map(|&b| f32::from(b)).collect()
    } else {
        let words: Vec<u16> = bytes
            .chunks_exact(2)
            .take(n)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if bits == 8 && words.iter().any(|&w| w > 255) {
            // One 8-bit entry per word, written in the high byte.
            words.iter().map(|&w| f32::from(w >> 8)).collect()
        } else {
            words.iter().map(|&w| f32::from(w)).collect()
        }
    };
    if entries.len() < n {
        return Err(dicom_err(
            path,
            format!(
                "the {name} lookup table declares {n} entries and holds {}",
                entries.len()
            ),
        ));
    }
    Ok(Table {
        first: d[1],
        bits,
        entries,
    })
}
