//! DICOM images (CR/DX chest radiographs, ophthalmic photographs), one frame at a time,
//! in every transfer syntax of common clinical use: the `dicom` crates parse the file,
//! [`jpeg`] and the `dicom` crates' adapters decompress, [`pixels`] interprets the samples
//! (bit depths, signedness, colour models through [`colour`], modality and VOI
//! transforms).
//!
//! PatientID is read only as the split key; no other identifying attribute is kept.

mod colour;
mod jpeg;
pub mod pixels;
mod rle;

pub use pixels::{Frame, Voi, syntax_name};

use std::path::{Path, PathBuf};

use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

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
/// byte 128, or when it stands neither there nor at byte 0. A file without any File Meta
/// header (a bare data set, as older modalities and some exports write) is read as
/// explicit VR little endian when its first element carries a VR, else as implicit VR
/// little endian, and the log says so. A deflated data set is inflated here, at most
/// [`MAX_INFLATED`] bytes of it.
pub(crate) fn open_bytes(path: &Path, bytes: &[u8]) -> Result<DefaultDicomObject> {
    let at_128 = bytes.get(128..132) == Some(&b"DICM"[..]);
    if !at_128
        && !bytes.starts_with(b"DICM")
        && let Some(obj) = open_without_meta(path, bytes)?
    {
        return Ok(obj);
    }
    let preamble = if !at_128 && bytes.starts_with(b"DICM") {
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
        if let Some(obj) = open_deflated(path, magic)? {
            return Ok(obj);
        }
        OpenFileOptions::new()
            .read_preamble(preamble)
            .from_reader(bytes)
            .map_err(|e| dicom_err(path, format!("not a readable DICOM file: {e}")))
    })
}

/// The most bytes a deflated data set may inflate to: an 8192 x 8192 frame of 16-bit RGB
/// and its header fit; a few kilobytes that inflate to gigabytes do not.
pub const MAX_INFLATED: u64 = 512 << 20;

/// A data set in Deflated Explicit VR Little Endian, inflated with a cap and parsed as the
/// explicit VR little endian it holds. The meta group keeps the deflated syntax, so that
/// messages and records name what the file is.
fn open_deflated(path: &Path, magic: &[u8]) -> Result<Option<DefaultDicomObject>> {
    use std::io::Read;
    let Ok(meta) = dicom_object::FileMetaTable::from_reader(magic) else {
        return Ok(None);
    };
    if meta.transfer_syntax().trim_end_matches('\0') != uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        return Ok(None);
    }
    // The data set starts after `DICM`, the group length element (12 bytes) and the group.
    let start = 4 + 12 + meta.information_group_length as usize;
    let deflated = magic
        .get(start..)
        .ok_or_else(|| dicom_err(path, "the file ends inside its File Meta header"))?;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| dicom_err(path, format!("the deflated data set does not inflate: {e}")))?;
    if inflated.len() as u64 > MAX_INFLATED {
        return Err(dicom_err(
            path,
            format!(
                "the deflated data set inflates to more than {} MiB",
                MAX_INFLATED >> 20
            ),
        ));
    }
    let ts = explicit_le();
    check_dataset_lengths(path, &inflated, ts, inflated.len() as u64)?;
    let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(&inflated[..], ts)
        .map_err(|e| dicom_err(path, format!("not a readable deflated data set: {e}")))?;
    Ok(Some(obj.with_exact_meta(meta)))
}

fn explicit_le() -> &'static dicom_encoding::TransferSyntax {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .expect("explicit VR little endian is registered")
}

/// A bare data set (no preamble, no `DICM`, no meta group): recognised by a first
/// element in group 0008 (or 0002 written without its magic), the usual start of one.
fn open_without_meta(path: &Path, bytes: &[u8]) -> Result<Option<DefaultDicomObject>> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let group = bytes.get(..2).map(|g| u16::from_le_bytes([g[0], g[1]]));
    if !matches!(group, Some(0x0008)) || bytes.len() < 8 {
        return Ok(None);
    }
    let vr = std::str::from_utf8(&bytes[4..6]).ok();
    let explicit = vr.is_some_and(|v| v.parse::<dicom_core::VR>().is_ok());
    let uid = if explicit {
        uids::EXPLICIT_VR_LITTLE_ENDIAN
    } else {
        uids::IMPLICIT_VR_LITTLE_ENDIAN
    };
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .expect("the little-endian syntaxes are registered");
    guarded(path, "not a readable DICOM file", || {
        check_dataset_lengths(path, bytes, ts, bytes.len() as u64)?;
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| {
            dicom_err(
                path,
                format!("no DICOM File Meta header, and not a readable data set: {e}"),
            )
        })?;
        tracing::warn!(
            file = %path.display(),
            "no DICOM File Meta header: read as {}",
            if explicit { "explicit VR little endian" } else { "implicit VR little endian" }
        );
        let obj = obj
            .with_meta(dicom_object::meta::FileMetaTableBuilder::new().transfer_syntax(uid))
            .map_err(|e| dicom_err(path, format!("no DICOM File Meta header, and {e}")))?;
        Ok(Some(obj))
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
    check_dataset_lengths(path, src, ts, file_len)
}

/// The data set half of [`check_declared_lengths`], through the token reader
/// `dicom-object` builds it with: each element's header comes before its value is read.
fn check_dataset_lengths(
    path: &Path,
    src: &[u8],
    ts: &dicom_encoding::TransferSyntax,
    file_len: u64,
) -> Result<()> {
    use dicom_core::header::{HasLength, Header, Length};
    use dicom_parser::dataset::DataToken;
    let check = |tag: dicom_core::Tag, len: Length| match len.get() {
        Some(n) if u64::from(n) > file_len => Err(dicom_err(
            path,
            format!("element {tag} declares {n} bytes, more than the file's {file_len}"),
        )),
        _ => Ok(()),
    };
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

/// Checks the properties a record needs without decoding pixels: pixel data present and a
/// frame count that is a number.
fn check_image_attributes(path: &Path, obj: &DefaultDicomObject) -> Result<()> {
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(dicom_err(path, "no pixel data (7FE0,0010)"));
    }
    frame_count(path, obj)?;
    Ok(())
}

/// Number of Frames (0028,0008); 1 when absent.
pub(crate) fn frame_count(path: &Path, obj: &DefaultDicomObject) -> Result<u32> {
    match text(obj, tags::NUMBER_OF_FRAMES) {
        None => Ok(1),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(dicom_err(
                path,
                format!("Number of Frames (0028,0008) `{s}` is not a positive count"),
            )),
        },
    }
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

/// [`read_dicom_record`] of a DICOM file held in memory; `name` only names it.
pub fn record_of_bytes(name: &Path, bytes: &[u8]) -> Result<Record> {
    record_of(name, &open_bytes(name, bytes)?)
}

/// [`read_dicom_record`] for frame `frame` (0-based), refused when the file has fewer.
pub fn read_dicom_frame_record(path: &Path, frame: u32) -> Result<Record> {
    let mut rec = read_dicom_record(path)?;
    let frames = rec
        .meta
        .get("frames")
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(1);
    if frame >= frames {
        return Err(dicom_err(
            path,
            format!("frame {} asked for; the file has {frames}", frame + 1),
        ));
    }
    rec.source = ImageSource::Dicom {
        path: path.to_path_buf(),
        frame,
    };
    Ok(rec)
}

pub(crate) fn record_of(path: &Path, obj: &DefaultDicomObject) -> Result<Record> {
    check_image_attributes(path, obj)?;
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut rec = Record::new(
        id,
        ImageSource::Dicom {
            path: path.to_path_buf(),
            frame: 0,
        },
    );
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
    rec.meta
        .insert("frames".into(), frame_count(path, obj)?.to_string());
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
        if let Some(r) = opts.keep_or_skip(read_dicom_frame_record(&f, opts.frame), &mut skipped)? {
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

/// Decodes the first frame of a DICOM file to `[0, 1]` (see [`Frame::display`]).
pub fn decode_dicom(path: &Path) -> Result<ImageF32> {
    decode_dicom_frame(path, 0)
}

/// Decodes frame `frame` (0-based) of a DICOM file to `[0, 1]`.
pub fn decode_dicom_frame(path: &Path, frame: u32) -> Result<ImageF32> {
    Ok(read_frame(path, frame)?.display())
}

/// Frame `frame` (0-based) of a DICOM file before any display choice: grey after the
/// modality LUT, colour as RGB (what `medret data export --raw` writes).
pub fn read_frame(path: &Path, frame: u32) -> Result<Frame> {
    let obj = open(path)?;
    check_image_attributes(path, &obj)?;
    pixels::decode_frame(path, &obj, frame)
}

/// [`decode_dicom`] of a DICOM file held in memory; `name` only names it in errors.
pub fn decode_dicom_bytes(name: &Path, bytes: &[u8]) -> Result<ImageF32> {
    decode_dicom_bytes_frame(name, bytes, 0)
}

/// [`decode_dicom_frame`] of a DICOM file held in memory.
pub fn decode_dicom_bytes_frame(name: &Path, bytes: &[u8], frame: u32) -> Result<ImageF32> {
    let obj = open_bytes(name, bytes)?;
    check_image_attributes(name, &obj)?;
    Ok(pixels::decode_frame(name, &obj, frame)?.display())
}
