//! The JPEG processes of ISO 10918 in DICOM: Baseline (8-bit), Extended (12-bit),
//! Lossless (process 14, and its first-order prediction SV1).
//!
//! 8-bit DCT and lossless streams go through `jpeg-decoder` (the codec the `dicom` crates
//! use) with its colour transform off: what the samples mean is the photometric
//! interpretation's business (`pixels.rs`), and a lossless RGB stream must not be read as
//! YCbCr. `jpeg-decoder` refuses 12-bit DCT, so Extended streams with 12-bit samples go
//! through libjpeg-turbo 3 (`turbojpeg-sys`, built from its bundled source), whose
//! `tj3Decompress12` is the reference IJG decoder for them.

use std::path::Path;

use super::dicom_err;
use crate::error::Result;

/// One decoded JPEG frame.
pub struct Decoded {
    /// Component values, interleaved.
    pub samples: Vec<u32>,
    /// The decoder already converted YCbCr to RGB (libjpeg-turbo's 12-bit path).
    pub rgb: bool,
    /// The stream says its three components are YCbCr (a JFIF marker, or Adobe's
    /// transform flag): a lossy stream labelled RGB that carries these was converted
    /// by its encoder all the same.
    pub ycc_markers: bool,
}

/// The compressed bytes of frame `frame`: every fragment for a single frame, one fragment
/// per frame when they match, the Basic Offset Table when it has one entry per frame,
/// else frames start at the fragments that begin with a start-of-image marker.
pub fn frame_bytes(
    path: &Path,
    fragments: &[Vec<u8>],
    offsets: &[u32],
    frames: usize,
    frame: usize,
) -> Result<Vec<u8>> {
    if fragments.is_empty() {
        return Err(dicom_err(path, "encapsulated pixel data without fragments"));
    }
    if frames == 1 {
        return Ok(fragments.concat());
    }
    if fragments.len() == frames {
        return Ok(fragments[frame].clone());
    }
    let groups: Vec<usize> = if offsets.len() == frames {
        // Offsets count from the first fragment's item tag; each item has 8 bytes of tag
        // and length before its value.
        let mut starts = Vec::with_capacity(fragments.len());
        let mut pos = 0u64;
        for f in fragments {
            starts.push(pos);
            pos += 8 + f.len() as u64;
        }
        starts
            .iter()
            .map(|&s| {
                offsets
                    .iter()
                    .filter(|&&o| u64::from(o) <= s)
                    .count()
                    .saturating_sub(1)
            })
            .collect()
    } else {
        let mut g = 0usize;
        fragments
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i > 0 && f.starts_with(&[0xFF, 0xD8]) {
                    g += 1;
                }
                g
            })
            .collect()
    };
    let bytes: Vec<u8> = fragments
        .iter()
        .zip(&groups)
        .filter(|&(_, &g)| g == frame)
        .flat_map(|(f, _)| f.iter().copied())
        .collect();
    if bytes.is_empty() {
        return Err(dicom_err(
            path,
            format!(
                "no fragment holds frame {} of {frames} ({} fragments)",
                frame + 1,
                fragments.len()
            ),
        ));
    }
    Ok(bytes)
}

/// What the stream's headers say, read before decoding.
#[derive(Debug, Default)]
struct Header {
    /// The SOF marker's second byte (0xC0 baseline ... 0xC3 lossless ...).
    sof: Option<u8>,
    precision: u8,
    height: usize,
    width: usize,
    component_ids: Vec<u8>,
    jfif: bool,
    adobe_transform: Option<u8>,
}

fn header(path: &Path, b: &[u8]) -> Result<Header> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err(dicom_err(
            path,
            "the JPEG stream has no start-of-image marker",
        ));
    }
    let mut h = Header::default();
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = b[i + 1];
        if marker == 0xFF || marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            i += if marker == 0xFF { 1 } else { 2 };
            continue;
        }
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let seg = b.get(i + 4..i + 2 + len).unwrap_or_default();
        match marker {
            0xDA | 0xD9 => break,
            0xE0 if seg.starts_with(b"JFIF\0") => h.jfif = true,
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                h.adobe_transform = Some(seg[11]);
            }
            0xC0..=0xCF if ![0xC4, 0xC8, 0xCC].contains(&marker) && seg.len() >= 6 => {
                h.sof = Some(marker);
                h.precision = seg[0];
                h.height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
                h.width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
                let n = usize::from(seg[5]);
                h.component_ids = (0..n).filter_map(|c| seg.get(6 + 3 * c).copied()).collect();
            }
            _ => {}
        }
        i += 2 + len.max(2);
    }
    if h.sof.is_none() {
        return Err(dicom_err(path, "the JPEG stream has no frame header (SOF)"));
    }
    Ok(h)
}

/// Decodes one JPEG frame of `rows` x `cols` pixels with `components` components, as
/// the DICOM header declares: a stream whose own header says otherwise is refused before
/// anything is decoded (a small file could otherwise declare a 65535 x 65535 stream).
pub fn decode(
    path: &Path,
    bytes: &[u8],
    (rows, cols, components): (usize, usize, usize),
) -> Result<Decoded> {
    let h = header(path, bytes)?;
    // A DCT decoder fills a truncated scan with grey rather than fail: the stream must
    // end with its end-of-image marker (a fragment may pad it with a byte or a few).
    if !bytes[bytes.len().saturating_sub(16)..]
        .windows(2)
        .any(|w| w == [0xFF, 0xD9])
    {
        return Err(dicom_err(
            path,
            "the JPEG stream is truncated (no end-of-image marker)",
        ));
    }
    if (h.height, h.width, h.component_ids.len()) != (rows, cols, components) {
        return Err(dicom_err(
            path,
            format!(
                "the JPEG stream holds {}x{} pixels with {} components; the DICOM header says {cols}x{rows} with {components}",
                h.width,
                h.height,
                h.component_ids.len()
            ),
        ));
    }
    let sof = h.sof.unwrap_or_default();
    let lossless = matches!(sof, 0xC3 | 0xC7 | 0xCB | 0xCF);
    let ycc_markers = h.component_ids.len() == 3
        && h.component_ids != [b'R', b'G', b'B']
        && (h.jfif || h.adobe_transform.is_some_and(|t| t != 0));
    if !lossless && h.precision > 8 {
        let mut d = decode_12bit(path, bytes, (rows, cols, components))?;
        d.ycc_markers = ycc_markers;
        return Ok(d);
    }
    let decoded = super::guarded(path, "cannot decode the JPEG stream", || {
        let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
        // No colour conversion: three components are interleaved as stored, which the
        // decoder's `RGB` transform does (its `None` writes them planar into the
        // interleaved buffer and overruns it when chroma is subsampled).
        dec.set_color_transform(if h.component_ids.len() == 3 {
            jpeg_decoder::ColorTransform::RGB
        } else {
            jpeg_decoder::ColorTransform::None
        });
        let data = dec
            .decode()
            .map_err(|e| dicom_err(path, format!("cannot decode the JPEG stream: {e}")))?;
        let info = dec
            .info()
            .ok_or_else(|| dicom_err(path, "the JPEG stream has no frame"))?;
        Ok((data, info))
    })?;
    let (data, info) = decoded;
    if (usize::from(info.width), usize::from(info.height)) != (cols, rows) {
        return Err(dicom_err(
            path,
            "the JPEG decoder returned another size than the stream's header",
        ));
    }
    let samples: Vec<u32> = if h.precision > 8 {
        // 16-bit samples in native byte order (the decoder's documented output).
        data.chunks_exact(2)
            .map(|c| u32::from(u16::from_ne_bytes([c[0], c[1]])))
            .collect()
    } else {
        data.iter().map(|&x| u32::from(x)).collect()
    };
    Ok(Decoded {
        samples,
        rgb: false,
        ycc_markers,
    })
}

/// 12-bit DCT (JPEG Extended) through libjpeg-turbo.
fn decode_12bit(
    path: &Path,
    bytes: &[u8],
    (rows, cols, want_components): (usize, usize, usize),
) -> Result<Decoded> {
    use turbojpeg_sys as tj;

    /// Frees the handle however the decoding ends.
    struct Handle(tj::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { tj::tj3Destroy(self.0) }
        }
    }
    let fail = |h: &Handle, what: &str| {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        let msg = unsafe { std::ffi::CStr::from_ptr(tj::tj3GetErrorStr(h.0)) }
            .to_string_lossy()
            .into_owned();
        dicom_err(
            path,
            format!("cannot decode the 12-bit JPEG stream ({what}): {msg}"),
        )
    };
    // SAFETY: plain constructor; a null handle is checked.
    let h = Handle(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) });
    if h.0.is_null() {
        return Err(dicom_err(path, "cannot start the 12-bit JPEG decoder"));
    }
    // SAFETY: the buffer and its length describe `bytes`, alive for the call.
    if unsafe { tj::tj3DecompressHeader(h.0, bytes.as_ptr(), bytes.len() as _) } != 0 {
        return Err(fail(&h, "header"));
    }
    // SAFETY: reading parameters of a live handle.
    let get = |p: tj::TJPARAM| unsafe { tj::tj3Get(h.0, p as i32) };
    let (w, hgt) = (
        get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
        get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
    );
    let colourspace = get(tj::TJPARAM_TJPARAM_COLORSPACE);
    if w <= 0 || hgt <= 0 {
        return Err(dicom_err(path, "the 12-bit JPEG stream has no size"));
    }
    let grey = colourspace == tj::TJCS_TJCS_GRAY as i32;
    let (format, components) = if grey {
        (tj::TJPF_TJPF_GRAY, 1)
    } else {
        (tj::TJPF_TJPF_RGB, 3)
    };
    let (w, hgt) = (w as usize, hgt as usize);
    if (w, hgt) != (cols, rows) || components != want_components {
        return Err(dicom_err(
            path,
            "the 12-bit JPEG stream's size differs from the header's",
        ));
    }
    let mut out = vec![0i16; w * hgt * components];
    // SAFETY: `out` holds width x height x components samples, the size libjpeg-turbo
    // writes for this pixel format with pitch 0 (rows packed).
    let rc = unsafe {
        tj::tj3Decompress12(
            h.0,
            bytes.as_ptr(),
            bytes.len() as _,
            out.as_mut_ptr(),
            0,
            format,
        )
    };
    if rc != 0 {
        return Err(fail(&h, "scan"));
    }
    Ok(Decoded {
        samples: out.iter().map(|&s| u32::from(s as u16)).collect(),
        rgb: !grey && colourspace == tj::TJCS_TJCS_YCbCr as i32,
        ycc_markers: false,
    })
}
