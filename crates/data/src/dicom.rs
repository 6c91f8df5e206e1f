//! Single-frame 2-D DICOM (CR/DX chest radiographs, ophthalmic photographs) through the
//! `dicom` crates: modality rescale, VOI LUT or window, MONOCHROME1 inversion.
//!
//! PatientID is read only as the split key; no other identifying attribute is kept.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutOption};

use crate::error::{DataError, Result};
use crate::image_buf::ImageF32;
use crate::record::{Dataset, Eye, Format, ImageSource, ReadOptions, Record};

fn dicom_err(path: &Path, message: impl ToString) -> DataError {
    DataError::Dicom {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Runs a call into the `dicom` crates, turning a panic of theirs into an error: fuzzing
/// found inputs on which their decoders index out of bounds (a truncated RLE segment) or
/// fail an assertion, and one malformed file must not take a server thread down.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(dicom_err(
            path,
            format!("{what}: the DICOM decoder failed on this file ({message})"),
        ))
    })
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let s = e.to_str().ok()?.trim().trim_end_matches('\0').to_string();
    (!s.is_empty()).then_some(s)
}

fn open(path: &Path) -> Result<DefaultDicomObject> {
    let bytes = std::fs::read(path)
        .map_err(|e| dicom_err(path, format!("not a readable DICOM file: {e}")))?;
    open_bytes(path, &bytes)
}

/// Parses a DICOM file held in memory, as [`open`] parses one on disk; `path` only names
/// it in errors. The preamble is skipped as `open_file` skips it: when `DICM` stands at
/// byte 128, or when it stands neither there nor at byte 0.
pub(crate) fn open_bytes(path: &Path, bytes: &[u8]) -> Result<DefaultDicomObject> {
    let preamble = if bytes.get(128..132) != Some(&b"DICM"[..]) && bytes.starts_with(b"DICM") {
        ReadPreamble::Never
    } else {
        ReadPreamble::Always
    };
    let magic = match preamble {
        ReadPreamble::Never => bytes,
        _ => bytes.get(128..).unwrap_or_default(),
    };
    guarded(path, "not a readable DICOM file", || {
        check_declared_lengths(path, magic, bytes.len() as u64)?;
        OpenFileOptions::new()
            .read_preamble(preamble)
            .from_reader(bytes)
            .map_err(|e| dicom_err(path, format!("not a readable DICOM file: {e}")))
    })
}

/// Refuses a file in which a value declares more bytes than the whole file holds, before
/// the `dicom` crates read it: they allocate and zero a buffer of the declared length
/// first, so a header of a few hundred bytes could make them take 4 GiB (found by
/// fuzzing; fuzz/regressions/dicom). `magic` is the file from its `DICM` code on; the
/// walk reads the file meta group and the data set as `dicom-object` reads them and
/// leaves every other fault to it. A deflated data set, whose values may rightly be
/// longer than the file, is not checked.
fn check_declared_lengths(path: &Path, magic: &[u8], file_len: u64) -> Result<()> {
    use dicom_core::header::{HasLength, Header, Length};
    use dicom_encoding::decode::Decode;
    use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
    use dicom_parser::dataset::DataToken;

    let check = |tag: dicom_core::Tag, len: Length| match len.get() {
        Some(n) if u64::from(n) > file_len => Err(dicom_err(
            path,
            format!("element {tag} declares {n} bytes, more than the file's {file_len}"),
        )),
        _ => Ok(()),
    };
    // The file meta group, walked as `FileMetaTable::read_from` reads it: explicit VR
    // little endian, as many bytes as its group length (0002,0000) says.
    let Some(mut src) = magic.strip_prefix(b"DICM") else {
        return Ok(());
    };
    let decoder = dicom_encoding::decode::file_header_decoder();
    let Ok((first, _)) = decoder.decode_header(&mut src) else {
        return Ok(());
    };
    let Some(group_length) = src.get(..4).filter(|_| first.length() == Length(4)) else {
        return Ok(());
    };
    let group_length = u32::from_le_bytes([
        group_length[0],
        group_length[1],
        group_length[2],
        group_length[3],
    ]);
    src = &src[4..];
    let mut read = 0u64;
    while read < u64::from(group_length) {
        let Ok((h, n)) = decoder.decode_header(&mut src) else {
            return Ok(());
        };
        check(h.tag(), h.length())?;
        let Some(rest) = h.length().get().and_then(|len| src.get(len as usize..)) else {
            return Ok(());
        };
        src = rest;
        read += (n + h.length().0 as usize) as u64;
    }
    // The data set, through the token reader `dicom-object` builds it with: each
    // element's header comes before its value is read.
    let Ok(meta) = dicom_object::FileMetaTable::from_reader(magic) else {
        return Ok(());
    };
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let Some(ts) = registry.get(meta.transfer_syntax()) else {
        return Ok(());
    };
    if matches!(ts.codec(), Codec::Dataset(_)) {
        return Ok(());
    }
    let Ok(reader) = dicom_parser::DataSetReader::new_with_ts(src, ts) else {
        return Ok(());
    };
    for token in reader {
        match token {
            Ok(DataToken::ElementHeader(h)) => check(h.tag(), h.length())?,
            Ok(DataToken::ItemStart { len }) => check(dicom_core::Tag(0xFFFE, 0xE000), len)?,
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Refuses RLE Lossless fragments whose 64-byte header is absent or counts more than the
/// standard's 15 segments (PS3.5 G.5): the RLE decoder allocates a table of as many
/// offsets as the header claims, up to 16 GiB (found by fuzzing).
fn check_rle_headers(path: &Path, obj: &DefaultDicomObject) -> Result<()> {
    if obj.meta().transfer_syntax().trim_end_matches('\0')
        != dicom_dictionary_std::uids::RLE_LOSSLESS
    {
        return Ok(());
    }
    let Some(fragments) = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|e| e.value().fragments())
    else {
        return Ok(());
    };
    for f in fragments {
        let segments = f
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match segments {
            Some(n) if f.len() >= 64 && n <= 15 => {}
            _ => {
                return Err(dicom_err(
                    path,
                    "RLE Lossless fragment without a valid header (at most 15 segments)",
                ));
            }
        }
    }
    Ok(())
}

/// Checks the properties a record needs without decoding pixels: pixel data present,
/// one frame, one or three samples per pixel.
fn check_image_attributes(path: &Path, obj: &DefaultDicomObject) -> Result<()> {
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(dicom_err(path, "no pixel data (7FE0,0010)"));
    }
    let frames = text(obj, tags::NUMBER_OF_FRAMES)
        .map(|s| s.parse::<u32>().unwrap_or(0))
        .unwrap_or(1);
    if frames != 1 {
        return Err(dicom_err(
            path,
            format!("{frames} frames; only single-frame 2-D images are supported"),
        ));
    }
    Ok(())
}

/// Rows and columns as the header declares them, read without decoding any pixel: what a
/// server checks against its size limit before it decodes an upload.
pub fn declared_size(path: &Path) -> Result<(u64, u64)> {
    declared_size_of(path, &open(path)?)
}

/// [`declared_size`] of a DICOM file held in memory; `name` only names it in errors.
pub fn declared_size_bytes(name: &Path, bytes: &[u8]) -> Result<(u64, u64)> {
    declared_size_of(name, &open_bytes(name, bytes)?)
}

fn declared_size_of(path: &Path, obj: &DefaultDicomObject) -> Result<(u64, u64)> {
    check_image_attributes(path, obj)?;
    let dim = |tag, what: &str| -> Result<u64> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(u64::from)
            .ok_or_else(|| dicom_err(path, format!("no {what} in the header")))
    };
    Ok((
        dim(tags::ROWS, "Rows (0028,0010)")?,
        dim(tags::COLUMNS, "Columns (0028,0011)")?,
    ))
}

/// Reads a DICOM file's record (no pixels decoded yet).
pub fn read_dicom_record(path: &Path) -> Result<Record> {
    record_of(path, &open(path)?)
}

pub(crate) fn record_of(path: &Path, obj: &DefaultDicomObject) -> Result<Record> {
    check_image_attributes(path, obj)?;
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut rec = Record::new(id, ImageSource::Dicom(path.to_path_buf()));
    rec.patient_id = text(obj, tags::PATIENT_ID).unwrap_or_default();
    rec.view = text(obj, tags::VIEW_POSITION);
    rec.eye = text(obj, tags::IMAGE_LATERALITY)
        .or_else(|| text(obj, tags::LATERALITY))
        .and_then(|s| Eye::parse(&s));
    if let Some(m) = text(obj, tags::MODALITY) {
        rec.meta.insert("modality".into(), m);
    }
    if let Some(p) = text(obj, tags::PHOTOMETRIC_INTERPRETATION) {
        rec.meta.insert("photometric".into(), p);
    }
    rec.meta.insert(
        "transfer_syntax".into(),
        obj.meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
    );
    Ok(rec)
}

fn is_dicom_file(p: &Path) -> bool {
    if crate::manifest::is_dicom_name(p) {
        return true;
    }
    // Files without an extension are common in PACS exports: look for the `DICM` magic.
    if p.extension().is_none()
        && let Ok(mut f) = std::fs::File::open(p)
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut magic = [0u8; 4];
        return f.seek(SeekFrom::Start(128)).is_ok()
            && f.read_exact(&mut magic).is_ok()
            && &magic == b"DICM";
    }
    false
}

/// Reads one DICOM file or every DICOM file under a folder (sorted by path).
pub fn read_dicom(path: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let mut files: Vec<PathBuf> = Vec::new();
    if path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .map_err(|e| DataError::io(&d, e))?
                .flatten()
            {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if is_dicom_file(&p) {
                    files.push(p);
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(DataError::format(path, "no DICOM files in this folder"));
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        if let Some(r) = opts.keep_or_skip(read_dicom_record(&f), &mut skipped)? {
            records.push(r);
        }
    }
    Ok(Dataset {
        format: Format::Dicom,
        root: path.to_path_buf(),
        label_names: Vec::new(),
        records,
        skipped,
    })
}

/// Decodes a DICOM file's pixels to `[0, 1]`.
///
/// Monochrome: modality rescale, then the first VOI LUT or window in the file; without
/// either, min-max over the rescaled values. MONOCHROME1 is inverted so that, as in
/// MONOCHROME2, bright means dense. Colour (RGB) is scaled by the bit depth.
pub fn decode_dicom(path: &Path) -> Result<ImageF32> {
    decode_object(path, &open(path)?)
}

/// [`decode_dicom`] of a DICOM file held in memory; `name` only names it in errors.
pub fn decode_dicom_bytes(name: &Path, bytes: &[u8]) -> Result<ImageF32> {
    decode_object(name, &open_bytes(name, bytes)?)
}

fn decode_object(path: &Path, obj: &DefaultDicomObject) -> Result<ImageF32> {
    check_image_attributes(path, obj)?;
    check_rle_headers(path, obj)?;
    let pixel = guarded(path, "cannot decode pixel data", || {
        obj.decode_pixel_data()
            .map_err(|e| dicom_err(path, format!("cannot decode pixel data: {e}")))
    })?;
    // The crate's lookup tables assert 1 <= BitsStored <= 32 (a panic found by fuzzing).
    let bits = pixel.bits_stored();
    if !(1..=32).contains(&bits) {
        return Err(dicom_err(
            path,
            format!("BitsStored (0028,0101) is {bits}; expected 1 to 32"),
        ));
    }
    let (h, w) = (pixel.rows() as usize, pixel.columns() as usize);
    let spp = pixel.samples_per_pixel() as usize;
    let photometric = pixel.photometric_interpretation().to_string();
    let conv = |opts: &ConvertOptions| -> Result<Vec<f32>> {
        guarded(path, "cannot convert pixel data", || {
            pixel
                .to_vec_frame_with_options::<f32>(0, opts)
                .map_err(|e| dicom_err(path, format!("cannot convert pixel data: {e}")))
        })
    };
    match spp {
        1 => {
            let has_voi = pixel.window().ok().flatten().is_some()
                || pixel.voi_lut_sequence().ok().flatten().is_some();
            let mut v = if has_voi {
                // The crate scales VOI output to 0..2^n-1, n the power of two >= BitsStored.
                let n = (pixel.bits_stored() as u32).next_power_of_two();
                let y_max = ((1u64 << n) - 1) as f32;
                let mut v = conv(&ConvertOptions::new().with_voi_lut(VoiLutOption::First))?;
                v.iter_mut().for_each(|x| *x = (*x / y_max).clamp(0.0, 1.0));
                v
            } else {
                let mut v = conv(
                    &ConvertOptions::new()
                        .with_modality_lut(ModalityLutOption::Default)
                        .with_voi_lut(VoiLutOption::Identity),
                )?;
                let (lo, hi) = v
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                let range = (hi - lo).max(f32::EPSILON);
                v.iter_mut().for_each(|x| *x = (*x - lo) / range);
                v
            };
            if photometric.trim() == "MONOCHROME1" {
                v.iter_mut().for_each(|x| *x = 1.0 - *x);
            }
            if v.len() != h * w {
                return Err(dicom_err(
                    path,
                    format!("pixel data holds {} values, expected {}", v.len(), h * w),
                ));
            }
            Ok(ImageF32::from_data(1, h, w, v))
        }
        3 => {
            let v = conv(&ConvertOptions::new().with_voi_lut(VoiLutOption::Identity))?;
            if v.len() != 3 * h * w {
                return Err(dicom_err(
                    path,
                    format!(
                        "pixel data holds {} values, expected {}",
                        v.len(),
                        3 * h * w
                    ),
                ));
            }
            let max = ((1u64 << pixel.bits_stored()) - 1) as f32;
            let mut img = ImageF32::new(3, h, w);
            for i in 0..h * w {
                for c in 0..3 {
                    img.data[c * h * w + i] = (v[i * 3 + c] / max).clamp(0.0, 1.0);
                }
            }
            Ok(img)
        }
        n => Err(dicom_err(
            path,
            format!("{n} samples per pixel; expected 1 or 3"),
        )),
    }
}
