//! RLE Lossless (PS3.5 Annex G), decoded here rather than by the `dicom` crates' adapter.
//!
//! Why not the adapter: it refuses any frame of 16 MiB or more that compresses better than
//! 32:1 (a 4096 x 4096 radiograph with wide uniform borders, a blank scout), it panics on
//! truncated segments (found by fuzzing), it expands each segment whole before cutting it to
//! size, and it has no 32-bit samples. The output here is bounded by the header's size,
//! which the caller has already checked against its limits, so no ratio guess is needed.

use std::path::Path;

use super::dicom_err;
use crate::Result;

/// The frame's samples as container values, interleaved (R G B R G B ... for colour), from
/// the frame's RLE fragment bytes. `bytes_per_sample` is Bits Allocated / 8.
pub fn decode(
    path: &Path,
    fragment: &[u8],
    pixels: usize,
    samples: usize,
    bytes_per_sample: usize,
) -> Result<Vec<u32>> {
    let want = samples * bytes_per_sample;
    let header = fragment.get(..64).ok_or_else(|| {
        dicom_err(
            path,
            "RLE Lossless fragment without a valid header (shorter than 64 bytes)",
        )
    })?;
    let word = |i: usize| {
        u32::from_le_bytes([
            header[4 * i],
            header[4 * i + 1],
            header[4 * i + 2],
            header[4 * i + 3],
        ]) as usize
    };
    let count = word(0);
    if count > 15 {
        return Err(dicom_err(
            path,
            format!("RLE Lossless fragment without a valid header ({count} segments; at most 15)"),
        ));
    }
    if count != want {
        return Err(dicom_err(
            path,
            format!(
                "RLE Lossless fragment holds {count} segments; {samples} sample(s) of {} bits need {want}",
                8 * bytes_per_sample
            ),
        ));
    }
    let mut out = vec![0u32; pixels * samples];
    for s in 0..count {
        let start = word(s + 1);
        let end = if s + 1 < count {
            word(s + 2)
        } else {
            fragment.len()
        };
        let segment = fragment
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| {
                dicom_err(
                    path,
                    format!(
                        "RLE Lossless segment {} spans bytes {start}..{end} of a {}-byte fragment",
                        s + 1,
                        fragment.len()
                    ),
                )
            })?;
        let bytes = packbits(segment, pixels);
        if bytes.len() < pixels {
            return Err(dicom_err(
                path,
                format!(
                    "RLE Lossless segment {} decodes to {} bytes; the frame needs {pixels} (truncated pixel data)",
                    s + 1,
                    bytes.len()
                ),
            ));
        }
        // Segments run most significant byte first within each sample (PS3.5 G.2).
        let (sample, byte) = (s / bytes_per_sample, s % bytes_per_sample);
        let shift = 8 * (bytes_per_sample - 1 - byte);
        for (o, &b) in out[sample..].iter_mut().step_by(samples).zip(&bytes) {
            *o |= u32::from(b) << shift;
        }
    }
    Ok(out)
}

/// One PackBits segment (PS3.5 G.3.2), stopping at `limit` bytes: a header byte n of 0..=127
/// copies the next n + 1 bytes, -127..=-1 repeats the next byte 1 - n times, -128 does
/// nothing. A run cut short by the end of the segment keeps what it has.
fn packbits(segment: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit);
    let mut i = 0;
    while i < segment.len() && out.len() < limit {
        let n = segment[i] as i8;
        i += 1;
        let room = limit - out.len();
        match n {
            0..=127 => {
                let take = (n as usize + 1).min(segment.len() - i).min(room);
                out.extend_from_slice(&segment[i..i + take]);
                i += n as usize + 1;
            }
            -127..=-1 => {
                let Some(&b) = segment.get(i) else { break };
                out.resize(out.len() + (1 - n as isize).unsigned_abs().min(room), b);
                i += 1;
            }
            -128 => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fragment from segments given as PackBits streams.
    fn fragment(segments: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        for (i, s) in segments.iter().enumerate() {
            f[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
            at += s.len() as u32;
        }
        for s in segments {
            f.extend_from_slice(s);
        }
        f
    }

    #[test]
    fn packbits_follows_the_standards_three_cases() {
        // Literal 3 bytes, a no-op, then 4 repeats of 9 (n = -3).
        assert_eq!(
            packbits(&[2, 1, 2, 3, 0x80, 0xFD, 9], 100),
            vec![1, 2, 3, 9, 9, 9, 9]
        );
        // Output stops at the limit, inside a run.
        assert_eq!(packbits(&[0x81, 7], 5), vec![7; 5]);
        // A literal cut short by the segment's end keeps what is there.
        assert_eq!(packbits(&[5, 1, 2], 100), vec![1, 2]);
    }

    #[test]
    fn sixteen_bit_samples_take_the_high_byte_from_the_first_segment() {
        // Two pixels, 0x0102 and 0x0A0B.
        let f = fragment(&[&[1, 0x01, 0x0A], &[1, 0x02, 0x0B]]);
        assert_eq!(
            decode(Path::new("x.dcm"), &f, 2, 1, 2).unwrap(),
            vec![0x0102, 0x0A0B]
        );
    }

    #[test]
    fn colour_planes_are_interleaved_and_32_bit_samples_are_whole() {
        let f = fragment(&[&[1, 1, 2], &[1, 3, 4], &[1, 5, 6]]);
        assert_eq!(
            decode(Path::new("x.dcm"), &f, 2, 3, 1).unwrap(),
            vec![1, 3, 5, 2, 4, 6]
        );
        let f = fragment(&[&[0, 0x12], &[0, 0x34], &[0, 0x56], &[0, 0x78]]);
        assert_eq!(
            decode(Path::new("x.dcm"), &f, 1, 1, 4).unwrap(),
            vec![0x1234_5678]
        );
    }

    #[test]
    fn a_highly_compressed_large_frame_decodes() {
        // 4096 x 4096 of one value: 64:1, which the `dicom` adapter refuses.
        let pixels = 4096 * 4096;
        let seg: Vec<u8> = [0x81u8, 200].repeat(pixels / 128);
        let f = fragment(&[&seg]);
        let v = decode(Path::new("x.dcm"), &f, pixels, 1, 1).unwrap();
        assert_eq!(v.len(), pixels);
        assert!(v.iter().all(|&x| x == 200));
    }

    #[test]
    fn bad_fragments_are_errors_that_say_why() {
        let err = |f: &[u8], spp, bps| {
            decode(Path::new("bad.dcm"), f, 4, spp, bps)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[1, 0, 0], 1, 1).contains("shorter than 64 bytes"));
        let mut many = fragment(&[&[3, 1, 2, 3, 4]]);
        many[..4].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(err(&many, 1, 1).contains("at most 15"));
        assert!(err(&fragment(&[&[3, 1, 2, 3, 4]]), 1, 2).contains("need 2"));
        assert!(err(&fragment(&[&[1, 1, 2]]), 1, 1).contains("truncated pixel data"));
        let mut out_of_range = fragment(&[&[3, 1, 2, 3, 4]]);
        out_of_range[4..8].copy_from_slice(&9_999u32.to_le_bytes());
        let e = err(&out_of_range, 1, 1);
        assert!(
            e.contains("segment 1 spans") && e.contains("bad.dcm"),
            "{e}"
        );
    }
}
