//! Decoding a record's pixels, whatever their source.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::image_buf::ImageF32;
use crate::record::ImageSource;

/// Decodes a PNG or JPEG file (format from content, not extension).
pub fn decode_file(path: &Path) -> Result<ImageF32> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(path, &bytes)
}

/// [`decode_file`] of a PNG or JPEG held in memory; `path` only names it in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<ImageF32> {
    let img = image::load_from_memory(bytes).map_err(|e| DataError::image(path, e))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(DataError::image(path, "image has zero size"));
    }
    Ok(ImageF32::from_dynamic(&img))
}

/// Decodes an image source to `[0, 1]` floats.
pub fn load_image(source: &ImageSource) -> Result<ImageF32> {
    match source {
        ImageSource::File(p) => decode_file(p),
        ImageSource::Dicom { path, frame } => crate::dicom::decode_dicom_frame(path, *frame),
        ImageSource::Array {
            file,
            key,
            index,
            height,
            width,
            channels,
            pixels,
        } => {
            let n = height * width * channels;
            let px = pixels.get(index * n..(index + 1) * n).ok_or_else(|| {
                DataError::format(
                    file,
                    format!(
                        "{key}[{index}] lies beyond the array ({} bytes for {height}x{width}x{channels} images)",
                        pixels.len()
                    ),
                )
            })?;
            Ok(ImageF32::from_u8_hwc(*channels, *height, *width, px))
        }
    }
}

/// Decodes a label-map mask (8-bit grey PNG) to raw codes.
pub fn load_mask(path: &Path) -> Result<image::GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::image(path, e))?;
    Ok(img.to_luma8())
}

/// Whether a file is DICOM: a `.dcm` name, or the `DICM` magic at byte 128.
pub fn is_dicom_path(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    crate::manifest::is_dicom_name(path)
        || std::fs::File::open(path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(128))?;
                f.read_exact(&mut magic)
            })
            .is_ok_and(|_| &magic == b"DICM")
}

/// Decodes an image file whatever its kind, decided by its content: a DICOM file (the
/// `DICM` magic at byte 128, or a `.dcm` name) through the DICOM reader, anything else
/// (PNG, JPEG) through the image decoders. What a query upload goes through.
pub fn decode_any(path: &Path) -> Result<ImageF32> {
    if is_dicom_path(path) {
        crate::dicom::decode_dicom(path)
    } else {
        decode_file(path)
    }
}
