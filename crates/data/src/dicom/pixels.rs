//! One frame of a DICOM image, from its stored samples to the values medret works with.
//!
//! The codecs (`jpeg.rs` for the JPEG processes; the `dicom` crates' adapters for RLE,
//! JPEG-LS and JPEG 2000) only decompress. Everything PS3.3 C.7.6.3 says about what the
//! samples mean is done here, the same way for every transfer syntax: Bits Allocated (1,
//! 8, 16, 32), Bits Stored and High Bit, signed pixels, planar configuration, the
//! photometric interpretation (MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, YBR_PARTIAL_*,
//! YBR_RCT/ICT, PALETTE COLOR), the modality LUT or rescale (per frame in enhanced
//! objects), then, for display only, the VOI window or LUT.

use std::path::Path;

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataDictionary, Tag};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::{dicom_err, guarded};
use crate::error::Result;
use crate::image_buf::ImageF32;

/// A decoded frame before any display choice: what `medret data export --raw` writes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub rows: usize,
    pub cols: usize,
    /// 1 (grey) or 3 (RGB: colour models converted, palettes applied).
    pub samples: usize,
    /// Rows x columns x samples, interleaved. Grey: after the modality LUT or rescale.
    /// Colour: RGB in the stored range (0 to 2^BitsStored - 1, or the palette's range).
    pub data: Vec<f32>,
    /// Full scale of colour values (for display); unused for grey.
    pub colour_max: f32,
    /// MONOCHROME1: low values are bright.
    pub monochrome1: bool,
    /// The VOI transform the file asks for (grey only).
    pub voi: Option<Voi>,
    /// Frames in the object.
    pub frames: u32,
}

/// A VOI transform (PS3.3 C.11.2), mapping modality values to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    Window {
        center: f64,
        width: f64,
        function: VoiFunction,
    },
    Lut {
        first: f64,
        /// Entries already divided by the LUT's full scale.
        table: Vec<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl Voi {
    pub fn apply(&self, x: f64) -> f64 {
        match self {
            Voi::Window {
                center: c,
                width: w,
                function: VoiFunction::Linear,
            } => {
                // PS3.3 C.11.2.1.2.1; a width below 1 is read as 1.
                let w = w.max(1.0);
                let lo = c - 0.5 - (w - 1.0) / 2.0;
                let hi = c - 0.5 + (w - 1.0) / 2.0;
                if x <= lo {
                    0.0
                } else if x > hi {
                    1.0
                } else if w <= 1.0 {
                    0.5
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5).clamp(0.0, 1.0)
                }
            }
            Voi::Window {
                center: c,
                width: w,
                function: VoiFunction::LinearExact,
            } => ((x - c) / w.max(f64::MIN_POSITIVE) + 0.5).clamp(0.0, 1.0),
            Voi::Window {
                center: c,
                width: w,
                function: VoiFunction::Sigmoid,
            } => 1.0 / (1.0 + (-4.0 * (x - c) / w.max(f64::MIN_POSITIVE)).exp()),
            Voi::Lut { first, table } => {
                let i = (x - first).round().clamp(0.0, (table.len() - 1) as f64) as usize;
                table[i]
            }
        }
    }
}

impl Frame {
    /// The frame as medret shows and encodes it, in `[0, 1]`: grey through the VOI
    /// window or LUT when the file has one (min-max over the frame otherwise), MONOCHROME1
    /// inverted so that bright means dense; colour divided by its full scale.
    pub fn display(&self) -> ImageF32 {
        let n = self.rows * self.cols;
        if self.samples == 1 {
            let mut v: Vec<f32> = match &self.voi {
                Some(voi) => self
                    .data
                    .iter()
                    .map(|&x| voi.apply(x as f64) as f32)
                    .collect(),
                None => {
                    let (lo, hi) = self
                        .data
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                            (a.min(x), b.max(x))
                        });
                    let range = (hi - lo).max(f32::EPSILON);
                    self.data.iter().map(|&x| (x - lo) / range).collect()
                }
            };
            if self.monochrome1 {
                v.iter_mut().for_each(|x| *x = 1.0 - *x);
            }
            ImageF32::from_data(1, self.rows, self.cols, v)
        } else {
            let mut img = ImageF32::new(3, self.rows, self.cols);
            let max = self.colour_max.max(f32::EPSILON);
            for i in 0..n {
                for c in 0..3 {
                    img.data[c * n + i] = (self.data[i * 3 + c] / max).clamp(0.0, 1.0);
                }
            }
            img
        }
    }
}

/// The image attributes of one frame, functional groups applied.
struct Attrs {
    rows: usize,
    cols: usize,
    spp: usize,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    planar: bool,
    photometric: String,
    frames: u32,
}

fn element(obj: &InMemDicomObject, tag: Tag) -> Option<&dicom_object::mem::InMemElement> {
    obj.element_opt(tag).ok().flatten()
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    element(obj, tag).and_then(|e| e.to_int::<i64>().ok())
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    element(obj, tag).and_then(|e| e.to_float64().ok())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = element(obj, tag)?.to_str().ok()?;
    let s = s.trim().trim_end_matches('\0').trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    element(obj, tag)?.items()?.first()
}

fn tag_name(tag: Tag) -> String {
    let name = dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias)
        .unwrap_or("element");
    format!("{name} {tag}")
}

impl Attrs {
    fn read(path: &Path, obj: &InMemDicomObject) -> Result<Attrs> {
        let need = |tag: Tag| -> Result<i64> {
            int(obj, tag)
                .ok_or_else(|| dicom_err(path, format!("no {} in the header", tag_name(tag))))
        };
        let rows = need(tags::ROWS)?;
        let cols = need(tags::COLUMNS)?;
        let bits_allocated = need(tags::BITS_ALLOCATED)?;
        let spp = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits_stored = int(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
        let high_bit = int(obj, tags::HIGH_BIT).unwrap_or(bits_stored - 1);
        let frames = match text(obj, tags::NUMBER_OF_FRAMES) {
            None => 1,
            Some(s) => s.parse::<u32>().map_err(|_| {
                dicom_err(
                    path,
                    format!("Number of Frames (0028,0008) `{s}` is not a count"),
                )
            })?,
        };
        if rows < 1 || cols < 1 || rows > 65535 || cols > 65535 {
            return Err(dicom_err(
                path,
                format!("{rows} x {cols} pixels: not an image size"),
            ));
        }
        if ![1, 8, 16, 32].contains(&bits_allocated) {
            return Err(dicom_err(
                path,
                format!("Bits Allocated (0028,0100) is {bits_allocated}; expected 1, 8, 16 or 32"),
            ));
        }
        if !(1..=bits_allocated).contains(&bits_stored)
            || high_bit < bits_stored - 1
            || high_bit >= bits_allocated
        {
            return Err(dicom_err(
                path,
                format!(
                    "Bits Stored {bits_stored} and High Bit {high_bit} do not fit Bits Allocated {bits_allocated}"
                ),
            ));
        }
        if spp != 1 && spp != 3 {
            return Err(dicom_err(
                path,
                format!("{spp} samples per pixel; expected 1 or 3"),
            ));
        }
        if frames == 0 {
            return Err(dicom_err(path, "Number of Frames (0028,0008) is 0"));
        }
        let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap_or_else(|| if spp == 3 { "RGB" } else { "MONOCHROME2" }.to_string());
        Ok(Attrs {
            rows: rows as usize,
            cols: cols as usize,
            spp: spp as usize,
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            high_bit: high_bit as u16,
            signed: int(obj, tags::PIXEL_REPRESENTATION) == Some(1),
            planar: int(obj, tags::PLANAR_CONFIGURATION) == Some(1),
            photometric: photometric.to_ascii_uppercase(),
            frames,
        })
    }

    /// Stored samples in one frame (YBR_FULL_422 native data holds two per pixel).
    fn samples_in_frame(&self, native: bool) -> usize {
        if native && self.spp == 3 && self.photometric == "YBR_FULL_422" {
            self.rows * self.cols * 2
        } else {
            self.rows * self.cols * self.spp
        }
    }

    /// Masks a raw container value to its stored bits and sign-extends it.
    fn value(&self, raw: u32) -> i64 {
        let shift = u32::from(self.high_bit + 1 - self.bits_stored);
        let bits = u32::from(self.bits_stored);
        let mask = if bits >= 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        };
        let v = (raw >> shift) & mask;
        if self.signed && bits > 0 && v >> (bits - 1) & 1 == 1 {
            i64::from(v) - (1i64 << bits)
        } else {
            i64::from(v)
        }
    }
}

/// Retired in 2006 and still in archives; the dictionary marks its constant deprecated.
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Transfer syntaxes whose pixel data is stored as is (the data set may be deflated).
fn is_native(ts: &str) -> bool {
    matches!(
        ts,
        uids::IMPLICIT_VR_LITTLE_ENDIAN
            | uids::EXPLICIT_VR_LITTLE_ENDIAN
            | EXPLICIT_VR_BIG_ENDIAN
            | uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    )
}

/// The JPEG processes (ISO 10918), decoded by `jpeg.rs`.
fn is_jpeg(ts: &str) -> bool {
    matches!(
        ts,
        uids::JPEG_BASELINE8_BIT
            | uids::JPEG_EXTENDED12_BIT
            | uids::JPEG_LOSSLESS
            | uids::JPEG_LOSSLESS_SV1
    )
}

/// A transfer syntax's name for messages.
pub fn syntax_name(ts: &str) -> String {
    let name = match ts {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => "Implicit VR Little Endian",
        uids::EXPLICIT_VR_LITTLE_ENDIAN => "Explicit VR Little Endian",
        EXPLICIT_VR_BIG_ENDIAN => "Explicit VR Big Endian",
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => "Deflated Explicit VR Little Endian",
        uids::RLE_LOSSLESS => "RLE Lossless",
        uids::JPEG_BASELINE8_BIT => "JPEG Baseline",
        uids::JPEG_EXTENDED12_BIT => "JPEG Extended",
        uids::JPEG_LOSSLESS => "JPEG Lossless (process 14)",
        uids::JPEG_LOSSLESS_SV1 => "JPEG Lossless SV1",
        uids::JPEGLS_LOSSLESS => "JPEG-LS Lossless",
        uids::JPEGLS_NEAR_LOSSLESS => "JPEG-LS Near-Lossless",
        uids::JPEG2000_LOSSLESS => "JPEG 2000 Lossless",
        uids::JPEG2000 => "JPEG 2000",
        _ => return format!("transfer syntax {ts}"),
    };
    format!("{name} ({ts})")
}

/// Decodes frame `frame` (0-based) of `obj`.
pub fn decode_frame(path: &Path, obj: &DefaultDicomObject, frame: u32) -> Result<Frame> {
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let in_syntax = |e: crate::error::DataError| match e {
        crate::error::DataError::Dicom { path, message } => crate::error::DataError::Dicom {
            path,
            message: format!("{} ({}): {message}", "pixel data", syntax_name(&ts)),
        },
        other => other,
    };
    decode_frame_in(path, obj, &ts, frame).map_err(in_syntax)
}

fn decode_frame_in(path: &Path, obj: &DefaultDicomObject, ts: &str, frame: u32) -> Result<Frame> {
    let a = Attrs::read(path, obj)?;
    if frame >= a.frames {
        return Err(dicom_err(
            path,
            format!(
                "frame {} asked for; the file has {} frame{}",
                frame + 1,
                a.frames,
                if a.frames == 1 { "" } else { "s" }
            ),
        ));
    }
    let pixel = element(obj, tags::PIXEL_DATA)
        .ok_or_else(|| dicom_err(path, "no pixel data (7FE0,0010)"))?;
    let native = is_native(ts);
    // The codec's output: container values and whether it already produced RGB.
    let (raw, codec_rgb, jpeg_ycc): (Vec<u32>, bool, bool) = match pixel.value() {
        Value::Primitive(p) if native => (native_samples(path, &a, p, ts, frame)?, false, false),
        Value::PixelSequence(seq) if is_jpeg(ts) => {
            let bytes = encapsulated_frame(path, &a, seq, frame)?;
            let d = super::jpeg::decode(path, &bytes, (a.rows, a.cols, a.spp))?;
            (d.samples, d.rgb, d.ycc_markers)
        }
        Value::PixelSequence(seq) if ts == uids::RLE_LOSSLESS => {
            if ![8, 16, 32].contains(&a.bits_allocated) {
                return Err(dicom_err(
                    path,
                    format!(
                        "Bits Allocated {} in RLE Lossless; expected 8, 16 or 32",
                        a.bits_allocated
                    ),
                ));
            }
            let bytes = encapsulated_frame(path, &a, seq, frame)?;
            let samples = super::rle::decode(
                path,
                &bytes,
                a.rows * a.cols,
                a.spp,
                usize::from(a.bits_allocated / 8),
            )?;
            (samples, false, false)
        }
        Value::PixelSequence(_) if native => {
            return Err(dicom_err(
                path,
                "encapsulated pixel data in a native transfer syntax",
            ));
        }
        Value::PixelSequence(_) => (codec_samples(path, obj, &a, ts, frame)?, false, false),
        Value::Primitive(_) => {
            return Err(dicom_err(
                path,
                "native pixel data in a compressed transfer syntax",
            ));
        }
        Value::Sequence(_) => return Err(dicom_err(path, "pixel data (7FE0,0010) is a sequence")),
    };
    let expect = a.samples_in_frame(native && !matches!(pixel.value(), Value::PixelSequence(_)));
    if raw.len() < expect {
        return Err(dicom_err(
            path,
            format!(
                "frame {} holds {} samples; {} x {} x {} needs {expect} (truncated pixel data)",
                frame + 1,
                raw.len(),
                a.rows,
                a.cols,
                a.spp
            ),
        ));
    }
    let values: Vec<i64> = raw[..expect].iter().map(|&r| a.value(r)).collect();
    let (rows, cols, n) = (a.rows, a.cols, a.rows * a.cols);
    let colour_max = ((1u64 << a.bits_stored) - 1) as f32;
    match (a.spp, a.photometric.as_str()) {
        (1, "MONOCHROME1" | "MONOCHROME2") => {
            let modality = Modality::read(path, obj, frame, a.signed)?;
            let data = values.iter().map(|&v| modality.apply(v) as f32).collect();
            Ok(Frame {
                rows,
                cols,
                samples: 1,
                data,
                colour_max,
                monochrome1: a.photometric == "MONOCHROME1",
                voi: read_voi(path, obj, frame, a.signed)?,
                frames: a.frames,
            })
        }
        (1, "PALETTE COLOR") => {
            let (data, max) = super::colour::palette(path, obj, &values)?;
            Ok(Frame {
                rows,
                cols,
                samples: 3,
                data,
                colour_max: max,
                monochrome1: false,
                voi: None,
                frames: a.frames,
            })
        }
        (3, pi) => {
            let mut v = values;
            // Planar configuration applies to three full planes (never to 4:2:2 data).
            if a.planar && native && v.len() == 3 * n {
                v = (0..n)
                    .flat_map(|i| [v[i], v[n + i], v[2 * n + i]])
                    .collect();
            }
            let max = colour_max as f64;
            let rgb = match pi {
                _ if codec_rgb => v.into_iter().map(|x| x as f32).collect(),
                "RGB" if jpeg_ycc => super::colour::ybr_full_to_rgb(&v, max),
                "RGB" | "YBR_RCT" | "YBR_ICT" => v.into_iter().map(|x| x as f32).collect(),
                "YBR_FULL" => super::colour::ybr_full_to_rgb(&v, max),
                "YBR_FULL_422" if v.len() == 2 * n => {
                    let full = super::colour::upsample_422(path, &v, rows, cols)?;
                    super::colour::ybr_full_to_rgb(&full, max)
                }
                "YBR_FULL_422" => super::colour::ybr_full_to_rgb(&v, max),
                "YBR_PARTIAL_422" | "YBR_PARTIAL_420" => super::colour::ybr_partial_to_rgb(&v, max),
                other => {
                    return Err(dicom_err(
                        path,
                        format!(
                            "photometric interpretation {other} with 3 samples is not supported"
                        ),
                    ));
                }
            };
            Ok(Frame {
                rows,
                cols,
                samples: 3,
                data: rgb,
                colour_max,
                monochrome1: false,
                voi: None,
                frames: a.frames,
            })
        }
        (spp, pi) => Err(dicom_err(
            path,
            format!(
                "photometric interpretation {pi} with {spp} sample(s) per pixel is not supported"
            ),
        )),
    }
}

/// The compressed bytes of one frame of encapsulated pixel data (any codec).
fn encapsulated_frame(
    path: &Path,
    a: &Attrs,
    seq: &PixelFragmentSequence<dicom_object::mem::InMemFragment>,
    frame: u32,
) -> Result<Vec<u8>> {
    super::jpeg::frame_bytes(
        path,
        seq.fragments(),
        seq.offset_table(),
        a.frames as usize,
        frame as usize,
    )
}

/// One frame of native pixel data as container values.
fn native_samples(
    path: &Path,
    a: &Attrs,
    p: &PrimitiveValue,
    ts: &str,
    frame: u32,
) -> Result<Vec<u32>> {
    let count = a.samples_in_frame(true);
    let bytes = p.to_bytes();
    let frame = frame as usize;
    let short = |have: usize, need: usize| {
        dicom_err(
            path,
            format!(
                "pixel data holds {have} bytes; frame {} needs {need} (truncated pixel data)",
                frame + 1
            ),
        )
    };
    // Checked in 128 bits first: a header may declare 2^32 frames of 65535 x 65535 x 3.
    let need_bits = (frame as u128 + 1) * count as u128 * u128::from(a.bits_allocated);
    if need_bits > bytes.len() as u128 * 8 {
        let need = usize::try_from(need_bits.div_ceil(8)).unwrap_or(usize::MAX);
        return Err(short(bytes.len(), need));
    }
    match a.bits_allocated {
        1 => {
            // Frames follow each other bit by bit, not byte by byte (PS3.5 8.1.1).
            let start = frame * count;
            let need = (start + count).div_ceil(8);
            if bytes.len() < need {
                return Err(short(bytes.len(), need));
            }
            Ok((start..start + count)
                .map(|i| u32::from(bytes[i / 8] >> (i % 8) & 1))
                .collect())
        }
        8 => {
            let (start, need) = (frame * count, (frame + 1) * count);
            let b = bytes
                .get(start..need)
                .ok_or_else(|| short(bytes.len(), need))?;
            Ok(b.iter().map(|&x| u32::from(x)).collect())
        }
        16 => {
            let (start, need) = (frame * count * 2, (frame + 1) * count * 2);
            let b = bytes
                .get(start..need)
                .ok_or_else(|| short(bytes.len(), need))?;
            // OB pixel data in big endian holds its bytes as written.
            let big_bytes = ts == EXPLICIT_VR_BIG_ENDIAN && matches!(p, PrimitiveValue::U8(_));
            Ok(b.chunks_exact(2)
                .map(|c| {
                    u32::from(if big_bytes {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    })
                })
                .collect())
        }
        _ => {
            let (start, need) = (frame * count * 4, (frame + 1) * count * 4);
            let b = bytes
                .get(start..need)
                .ok_or_else(|| short(bytes.len(), need))?;
            let big = ts == EXPLICIT_VR_BIG_ENDIAN;
            Ok(b.chunks_exact(4)
                .map(|c| match (big, p) {
                    // OB in big endian holds the bytes as written. OW is read as 16-bit
                    // words, already swapped: their little-endian bytes are the file's
                    // value as a little-endian writer would have stored it (dcmtk and
                    // GDCM write 32-bit OW this way).
                    (true, PrimitiveValue::U8(_)) => u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                })
                .collect())
        }
    }
}

/// One frame through the `dicom` crates' adapters (JPEG-LS, JPEG 2000), which write
/// little-endian samples, interleaved, with the colour model untouched except JPEG 2000's
/// multi-component transform (YBR_RCT, YBR_ICT), which OpenJPEG inverts.
fn codec_samples(
    path: &Path,
    obj: &DefaultDicomObject,
    a: &Attrs,
    ts: &str,
    frame: u32,
) -> Result<Vec<u32>> {
    use dicom_pixeldata::PixelDecoder;
    if ![8, 16].contains(&a.bits_allocated) {
        return Err(dicom_err(
            path,
            format!(
                "Bits Allocated {} in {}; expected 8 or 16",
                a.bits_allocated,
                syntax_name(ts)
            ),
        ));
    }
    if let Some(Value::PixelSequence(seq)) = element(obj, tags::PIXEL_DATA).map(|e| e.value()) {
        // The codecs size their buffers by the stream's own header: a stream declaring
        // more than the DICOM header (checked against the limits) is refused first.
        let bytes = encapsulated_frame(path, a, seq, frame)?;
        if let Some((h, w)) = codestream_size(ts, &bytes)
            && (h, w) != (a.rows, a.cols)
        {
            return Err(dicom_err(
                path,
                format!(
                    "the compressed stream holds {w}x{h} pixels; the DICOM header says {}x{}",
                    a.cols, a.rows
                ),
            ));
        }
    }
    let decoded = guarded(path, "cannot decode pixel data", || {
        obj.decode_pixel_data_frame(frame)
            .map_err(|e| dicom_err(path, format!("cannot decode pixel data: {e}")))
    })?;
    let bytes = decoded.data();
    Ok(match a.bits_allocated {
        8 => bytes.iter().map(|&x| u32::from(x)).collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
    })
}

/// Rows and columns a JPEG 2000 (SIZ) or JPEG-LS (SOF55) stream declares.
fn codestream_size(ts: &str, b: &[u8]) -> Option<(usize, usize)> {
    let be16 = |i: usize| {
        b.get(i..i + 2)
            .map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
    };
    let be32 = |i: usize| {
        b.get(i..i + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    };
    let find = |m: &[u8]| b.windows(m.len()).position(|w| w == m);
    match ts {
        uids::JPEG2000_LOSSLESS | uids::JPEG2000 => {
            let i = find(&[0xFF, 0x4F, 0xFF, 0x51])? + 4;
            let (x, y) = (be32(i + 4)?, be32(i + 8)?);
            let (xo, yo) = (be32(i + 12)?, be32(i + 16)?);
            Some((y.checked_sub(yo)?, x.checked_sub(xo)?))
        }
        uids::JPEGLS_LOSSLESS | uids::JPEGLS_NEAR_LOSSLESS => {
            let i = find(&[0xFF, 0xF7])? + 2;
            Some((be16(i + 3)?, be16(i + 5)?))
        }
        _ => None,
    }
}

/// The modality transform of one frame: a LUT, or a rescale (from the frame's functional
/// groups in enhanced objects, else the top level), or the identity.
enum Modality {
    Rescale { slope: f64, intercept: f64 },
    Lut { first: f64, table: Vec<f64> },
}

impl Modality {
    fn read(path: &Path, obj: &InMemDicomObject, frame: u32, signed: bool) -> Result<Modality> {
        if let Some(item) = first_item(obj, tags::MODALITY_LUT_SEQUENCE) {
            let (first, table) = read_lut(path, item, "Modality LUT", signed)?;
            return Ok(Modality::Lut { first, table });
        }
        let group = functional_group(obj, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);
        let from = group.unwrap_or(obj);
        let slope = float(from, tags::RESCALE_SLOPE).unwrap_or(1.0);
        let intercept = float(from, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        if !slope.is_finite() || !intercept.is_finite() || slope == 0.0 {
            return Err(dicom_err(
                path,
                format!("rescale slope {slope} and intercept {intercept} are not usable"),
            ));
        }
        Ok(Modality::Rescale { slope, intercept })
    }

    fn apply(&self, v: i64) -> f64 {
        match self {
            Modality::Rescale { slope, intercept } => v as f64 * slope + intercept,
            Modality::Lut { first, table } => {
                let i = (v as f64 - first).clamp(0.0, (table.len() - 1) as f64) as usize;
                table[i]
            }
        }
    }
}

/// The item of a functional group macro for `frame`: per frame first, then shared.
fn functional_group(
    obj: &InMemDicomObject,
    frame: u32,
    macro_tag: Tag,
) -> Option<&InMemDicomObject> {
    let per_frame = element(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.get(frame as usize))
        .and_then(|item| first_item(item, macro_tag));
    per_frame.or_else(|| {
        first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .and_then(|item| first_item(item, macro_tag))
    })
}

/// A LUT item (descriptor and data): its first input value and its entries, raw.
fn read_lut(
    path: &Path,
    item: &InMemDicomObject,
    what: &str,
    signed: bool,
) -> Result<(f64, Vec<f64>)> {
    let desc: Vec<i64> = element(item, tags::LUT_DESCRIPTOR)
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or_else(|| dicom_err(path, format!("{what} without a three-value LUT Descriptor")))?;
    let n = if desc[0] == 0 {
        65536
    } else {
        desc[0] as usize
    };
    let data = element(item, tags::LUT_DATA)
        .ok_or_else(|| dicom_err(path, format!("{what} without LUT Data")))?;
    let bytes = data
        .value()
        .to_bytes()
        .map_err(|e| dicom_err(path, format!("{what}: {e}")))?;
    let table: Vec<f64> = match data.value().primitive() {
        Some(PrimitiveValue::U8(_)) if desc[2] <= 8 && bytes.len() >= n => {
            bytes[..n].iter().map(|&b| f64::from(b)).collect()
        }
        _ => bytes
            .chunks_exact(2)
            .take(n)
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
    };
    if table.len() < n {
        return Err(dicom_err(
            path,
            format!("{what} declares {n} entries and holds {}", table.len()),
        ));
    }
    // The first mapped value is US or SS by the pixel representation; read as US, a
    // value above 32767 in a LUT for signed pixels is a negative one.
    let first = if signed && desc[1] > 32767 {
        desc[1] - 65536
    } else {
        desc[1]
    };
    Ok((first as f64, table))
}

/// The VOI transform of one frame: the frame's VOI LUT macro in enhanced objects, else the
/// first window, else the first VOI LUT.
fn read_voi(path: &Path, obj: &InMemDicomObject, frame: u32, signed: bool) -> Result<Option<Voi>> {
    let group = functional_group(obj, frame, tags::FRAME_VOILUT_SEQUENCE);
    let from = group.unwrap_or(obj);
    let first_float = |tag: Tag| {
        element(from, tag)
            .and_then(|e| e.to_multi_float64().ok())
            .and_then(|v| v.first().copied())
    };
    if let (Some(center), Some(width)) = (
        first_float(tags::WINDOW_CENTER),
        first_float(tags::WINDOW_WIDTH),
    ) && center.is_finite()
        && width.is_finite()
        && width > 0.0
    {
        let function = match text(from, tags::VOILUT_FUNCTION).as_deref() {
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            _ => VoiFunction::Linear,
        };
        return Ok(Some(Voi::Window {
            center,
            width,
            function,
        }));
    }
    if let Some(item) = first_item(obj, tags::VOILUT_SEQUENCE) {
        let (first, table) = read_lut(path, item, "VOI LUT", signed)?;
        let bits = element(item, tags::LUT_DESCRIPTOR)
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .and_then(|d| d.get(2).copied())
            .unwrap_or(16)
            .clamp(1, 16);
        let max = ((1u64 << bits) - 1) as f64;
        return Ok(Some(Voi::Lut {
            first,
            table: table
                .into_iter()
                .map(|x| (x / max).clamp(0.0, 1.0))
                .collect(),
        }));
    }
    Ok(None)
}
