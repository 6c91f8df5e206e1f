//! Uploaded images: the kind decided by magic bytes (never by the name or the declared
//! content type), then decoded through the same readers as files on disk. Only pixels are
//! read from a DICOM upload, in memory; its headers (patient name, birth date, ...) go
//! nowhere, not even to a temporary file.

use std::time::Instant;

use axum::http::StatusCode;
use medret_data::ImageF32;

use crate::error::ApiError;

/// An uploaded image's kind, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Png,
    Jpeg,
    Dicom,
}

impl Kind {
    pub fn sniff(bytes: &[u8]) -> Option<Kind> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Kind::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Kind::Jpeg)
        } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            Some(Kind::Dicom)
        } else {
            None
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Kind::Png => "png",
            Kind::Jpeg => "jpg",
            Kind::Dicom => "dcm",
        }
    }
}

/// Images above this many pixels (per frame) are refused before any pixel is decoded,
/// unless `medret serve --max-pixels` raises it: 8192 x 8192 covers every radiograph and
/// fundus camera, and decodes to at most 768 MiB of f32 RGB.
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// Bytes of memory a decode is charged per pixel: the decoder's own buffer, the f32 RGB
/// image (12 bytes), the copy the display path makes and the preprocessing's grey and
/// resized planes. Measured: one 8192 x 8192 RGB PNG raises the server's peak RSS by
/// 2.36 GB, 35 bytes per pixel (`bench/upload_burst.sh`).
pub const BYTES_PER_PIXEL: u64 = 40;

/// Memory that uploads being decoded and encoded may take at once, shared by every
/// request: each one reserves `pixels x BYTES_PER_PIXEL` from the header before decoding
/// and holds it until its network has run, so a burst of large uploads waits its turn
/// instead of multiplying the server's memory.
#[derive(Clone)]
pub struct DecodeBudget {
    mib: u32,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A reservation from a [`DecodeBudget`], returned when dropped.
pub type Reservation = Option<tokio::sync::OwnedSemaphorePermit>;

impl DecodeBudget {
    pub fn new(mib: u32) -> Self {
        let mib = mib.max(1);
        DecodeBudget {
            mib,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(mib as usize)),
        }
    }

    /// Waits (on a blocking thread) until `w x h` pixels fit; 413 when they never can.
    fn reserve(&self, name: &str, w: u64, h: u64) -> Result<Reservation, ApiError> {
        let need = (w * h * BYTES_PER_PIXEL).div_ceil(1 << 20).max(1);
        if need > self.mib as u64 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{name}: decoding {w}x{h} pixels needs about {need} MiB, more than this server's decode budget ({} MiB)",
                    self.mib
                ),
            ));
        }
        let permits = self.permits.clone();
        let permit = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.block_on(permits.acquire_many_owned(need as u32)),
            // Outside a runtime (unit tests): no one to wait for.
            Err(_) => return Ok(None),
        }
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
        Ok(Some(permit))
    }
}

/// A file name fit for messages: the upload's own name without directories or control
/// characters, at most 80 characters.
pub fn shown_name(name: Option<&str>) -> String {
    let n = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .unwrap_or("upload");
    let clean: String = n.chars().filter(|c| !c.is_control()).take(80).collect();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// Decodes one upload, or says which upload and what is wrong with it. Returns the image
/// and the seconds spent.
/// The image comes with its reservation from `budget`: keep it until the image (and
/// what is made from it at full size) is dropped.
pub fn decode(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    budget: &DecodeBudget,
) -> Result<(ImageF32, Kind, f64, Reservation), ApiError> {
    let t = Instant::now();
    if bytes.is_empty() {
        return Err(ApiError::bad_request(format!("{name}: the file is empty")));
    }
    let kind = Kind::sniff(bytes).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{name}: not a PNG, JPEG or DICOM file (judged by its content)"),
        )
    })?;
    let unreadable = |e: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{name}: cannot read this {}: {e}",
                kind.extension().to_uppercase()
            ),
        )
    };
    // JPEG decoders fill a truncated scan with grey rather than fail; a JPEG must end
    // with its end-of-image marker (allowing a little trailing padding).
    if kind == Kind::Jpeg
        && !bytes[bytes.len().saturating_sub(64)..]
            .windows(2)
            .any(|w| w == [0xff, 0xd9])
    {
        return Err(unreadable(
            "the file is truncated (no end-of-image marker)".into(),
        ));
    }
    let reservation;
    let img = match kind {
        Kind::Png | Kind::Jpeg => {
            let format = if kind == Kind::Png {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::Jpeg
            };
            // A PNG's size is in its first chunk (IHDR), read here directly: the decoder
            // wants more of the file than the header before it reports dimensions.
            let (w, h) = match png_declared_size(bytes) {
                Some(size) => size,
                None => {
                    let mut reader =
                        image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
                    let mut limits = image::Limits::default();
                    limits.max_alloc = Some(1 << 30);
                    reader.limits(limits);
                    reader
                        .into_dimensions()
                        .map_err(|e| unreadable(e.to_string()))?
                }
            };
            check_size(name, w as u64, h as u64, max_pixels)?;
            reservation = budget.reserve(name, w as u64, h as u64)?;
            let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(1 << 30);
            reader.limits(limits);
            let img = reader.decode().map_err(|e| unreadable(e.to_string()))?;
            ImageF32::from_dynamic(&img)
        }
        Kind::Dicom => {
            // Read from memory: an upload's bytes (patient headers included) never touch
            // the disk. Messages name the file as the client named it.
            let shown = std::path::Path::new(name);
            let unreadable = |e: medret_data::DataError| unreadable(e.to_string());
            let (h, w) =
                medret_data::dicom::declared_size_bytes(shown, bytes).map_err(unreadable)?;
            check_size(name, w, h, max_pixels)?;
            reservation = budget.reserve(name, w, h)?;
            medret_data::dicom::decode_dicom_bytes(shown, bytes).map_err(unreadable)?
        }
    };
    check_size(name, img.width as u64, img.height as u64, max_pixels)?;
    Ok((img, kind, t.elapsed().as_secs_f64(), reservation))
}

/// Width and height from a PNG's IHDR chunk, when the file starts with one.
fn png_declared_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((be(16), be(20)))
}

fn check_size(name: &str, w: u64, h: u64, max_pixels: u64) -> Result<(), ApiError> {
    if w == 0 || h == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{name}: the image is {w}x{h} pixels"),
        ));
    }
    if w * h > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{name}: {w}x{h} pixels is more than this server decodes ({max_pixels} pixels; `medret serve --max-pixels` raises it)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_content_not_names() {
        assert_eq!(Kind::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(Kind::Png));
        assert_eq!(Kind::sniff(&[0xff, 0xd8, 0xff, 0xe0]), Some(Kind::Jpeg));
        let mut dcm = vec![0u8; 140];
        dcm[128..132].copy_from_slice(b"DICM");
        assert_eq!(Kind::sniff(&dcm), Some(Kind::Dicom));
        assert_eq!(Kind::sniff(b"GIF89a"), None);
        assert_eq!(Kind::sniff(&dcm[..131]), None);
    }

    #[test]
    fn bad_uploads_are_4xx_with_the_name() {
        let e = decode(b"", "a.png", MAX_PIXELS, &DecodeBudget::new(4096)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = decode(
            b"hello world",
            "x.png",
            MAX_PIXELS,
            &DecodeBudget::new(4096),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.starts_with("x.png:"), "{}", e.message);
        // A PNG signature and a header claiming 40000 x 40000 pixels, nothing else.
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&40000u32.to_be_bytes());
        png.extend_from_slice(&40000u32.to_be_bytes());
        png.extend_from_slice(&[8, 0, 0, 0, 0]);
        let crc = crc32(&png[12..]);
        png.extend_from_slice(&crc.to_be_bytes());
        let e = decode(&png, "big.png", MAX_PIXELS, &DecodeBudget::new(4096)).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{e:?}");
        assert_eq!(shown_name(Some("C:\\x\\y/scan\n.png")), "scan.png");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
