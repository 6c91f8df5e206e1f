//! DICOM files written with the `dicom` crates, decoded, and checked against values worked
//! out by hand from the standard's formulas.

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use medret_data::dicom::{decode_dicom, read_dicom_record};
use medret_data::{DataError, Eye, Format, ReadOptions, open_dataset};

struct Spec<'a> {
    photometric: &'a str,
    samples: u16,
    bits_allocated: u16,
    bits_stored: u16,
    rows: u16,
    cols: u16,
    rescale: Option<(&'a str, &'a str)>,
    window: Option<(&'a str, &'a str)>,
    frames: Option<&'a str>,
    pixels: Option<Vec<u8>>,
}

fn write_dicom(path: &Path, s: &Spec) {
    let mut el = vec![
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4.5"),
        ),
        DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("PAT-001")),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Doe^Jane")),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("DX")),
        DataElement::new(tags::VIEW_POSITION, VR::CS, PrimitiveValue::from("PA")),
        DataElement::new(tags::IMAGE_LATERALITY, VR::CS, PrimitiveValue::from("L")),
        DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(s.samples),
        ),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(s.photometric),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(s.rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(s.cols)),
        DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(s.bits_allocated),
        ),
        DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(s.bits_stored),
        ),
        DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(s.bits_stored - 1),
        ),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
    ];
    if s.samples == 3 {
        el.push(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    if let Some((slope, intercept)) = s.rescale {
        el.push(DataElement::new(
            tags::RESCALE_SLOPE,
            VR::DS,
            PrimitiveValue::from(slope),
        ));
        el.push(DataElement::new(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            PrimitiveValue::from(intercept),
        ));
    }
    if let Some((c, w)) = s.window {
        el.push(DataElement::new(
            tags::WINDOW_CENTER,
            VR::DS,
            PrimitiveValue::from(c),
        ));
        el.push(DataElement::new(
            tags::WINDOW_WIDTH,
            VR::DS,
            PrimitiveValue::from(w),
        ));
    }
    if let Some(f) = s.frames {
        el.push(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(f),
        ));
    }
    if let Some(px) = &s.pixels {
        let vr = if s.bits_allocated == 16 {
            VR::OW
        } else {
            VR::OB
        };
        el.push(DataElement::new(
            tags::PIXEL_DATA,
            vr,
            PrimitiveValue::from(px.clone()),
        ));
    }
    let obj = InMemDicomObject::from_element_iter(el)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    obj.write_to_file(path).unwrap();
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

const RAW: [u16; 6] = [50, 100, 300, 550, 600, 2000];

fn mono(photometric: &'static str, window: Option<(&'static str, &'static str)>) -> Spec<'static> {
    Spec {
        photometric,
        samples: 1,
        bits_allocated: 16,
        bits_stored: 12,
        rows: 2,
        cols: 3,
        rescale: Some(("2", "-100")),
        window,
        frames: None,
        pixels: Some(u16_bytes(&RAW)),
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "pixel {i}: got {g}, want {w}");
    }
}

// Rescaled values: 2 * raw - 100 = [0, 100, 500, 1000, 1100, 3900].
// Linear window (PS3.3 C.11.2.1.2.1), c = 500, w = 1000: y = ((x - 499.5) / 999 + 0.5),
// 0 below x <= 0, 1 above x > 999: [0, 0.1001, 0.5005, 1, 1, 1].
const WINDOWED: [f32; 6] = [0.0, 0.1001, 0.5005, 1.0, 1.0, 1.0];

#[test]
fn monochrome2_rescale_then_window() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.dcm");
    write_dicom(&p, &mono("MONOCHROME2", Some(("500", "1000"))));
    let img = decode_dicom(&p).unwrap();
    assert_eq!((img.channels, img.height, img.width), (1, 2, 3));
    assert_close(&img.data, &WINDOWED, 2e-4);
}

#[test]
fn monochrome1_is_inverted() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.dcm");
    write_dicom(&p, &mono("MONOCHROME1", Some(("500", "1000"))));
    let inv: Vec<f32> = WINDOWED.iter().map(|v| 1.0 - v).collect();
    assert_close(&decode_dicom(&p).unwrap().data, &inv, 2e-4);
}

#[test]
fn without_window_rescaled_values_are_min_max_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.dcm");
    write_dicom(&p, &mono("MONOCHROME2", None));
    let want: Vec<f32> = [0.0, 100.0, 500.0, 1000.0, 1100.0, 3900.0]
        .iter()
        .map(|v| v / 3900.0)
        .collect();
    assert_close(&decode_dicom(&p).unwrap().data, &want, 1e-5);
}

#[test]
fn rgb_photograph_is_scaled_by_bit_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("fundus.dcm");
    let px: Vec<u8> = vec![255, 0, 51, 102, 153, 204];
    write_dicom(
        &p,
        &Spec {
            photometric: "RGB",
            samples: 3,
            bits_allocated: 8,
            bits_stored: 8,
            rows: 1,
            cols: 2,
            rescale: None,
            window: None,
            frames: None,
            pixels: Some(px),
        },
    );
    let img = decode_dicom(&p).unwrap();
    assert_eq!((img.channels, img.height, img.width), (3, 1, 2));
    // CHW: R plane [255, 102], G [0, 153], B [51, 204].
    assert_close(&img.data, &[1.0, 0.4, 0.0, 0.6, 0.2, 0.8], 1e-6);
}

#[test]
fn record_keeps_only_what_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.dcm");
    write_dicom(&p, &mono("MONOCHROME2", Some(("500", "1000"))));
    let r = read_dicom_record(&p).unwrap();
    assert_eq!(r.patient_id, "PAT-001");
    assert_eq!(r.view.as_deref(), Some("PA"));
    assert_eq!(r.eye, Some(Eye::Left));
    assert_eq!(r.meta["modality"], "DX");
    assert!(
        r.meta.values().all(|v| !v.contains("Doe")),
        "patient name must not be kept"
    );
    assert!(r.is_unlabelled());
    let ds = open_dataset(tmp.path(), Some(Format::Dicom), &ReadOptions::default()).unwrap();
    assert_eq!(ds.records.len(), 1);
}

#[test]
fn bad_dicom_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let no_px = tmp.path().join("nopixels.dcm");
    write_dicom(
        &no_px,
        &Spec {
            pixels: None,
            ..mono("MONOCHROME2", None)
        },
    );
    let e = read_dicom_record(&no_px).unwrap_err();
    assert!(matches!(e, DataError::Dicom { .. }));
    assert!(
        e.to_string().contains("nopixels.dcm") && e.to_string().contains("no pixel data"),
        "{e}"
    );

    let multi = tmp.path().join("multi.dcm");
    let mut spec = mono("MONOCHROME2", None);
    spec.frames = Some("2");
    spec.pixels = Some(u16_bytes(&[RAW, RAW].concat()));
    write_dicom(&multi, &spec);
    // Two frames read (each frame by number); a third is an error that names the file,
    // the syntax and the count.
    assert_eq!(decode_dicom(&multi).unwrap().data.len(), 2 * 3);
    medret_data::dicom::decode_dicom_frame(&multi, 1).unwrap();
    let e = medret_data::dicom::decode_dicom_frame(&multi, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("multi.dcm") && e.contains("frame 3") && e.contains("2 frames"),
        "{e}"
    );
    assert!(e.contains("Explicit VR Little Endian"), "{e}");
    let r = read_dicom_record(&multi).unwrap();
    assert_eq!(r.meta["frames"], "2");

    let junk = tmp.path().join("junk.dcm");
    std::fs::write(&junk, b"this is not DICOM").unwrap();
    let e = read_dicom_record(&junk).unwrap_err().to_string();
    assert!(
        e.contains("junk.dcm") && e.contains("not a readable DICOM"),
        "{e}"
    );

    // A folder read stops at the first bad file unless asked to skip.
    let e = open_dataset(tmp.path(), Some(Format::Dicom), &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::Dicom { .. }), "{e}");
    let ds = open_dataset(
        tmp.path(),
        Some(Format::Dicom),
        &ReadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The two-frame file is good; with --frame 3 it is skipped too.
    assert_eq!(ds.records.len(), 1);
    assert_eq!(ds.skipped.len(), 2);
    let ds = open_dataset(
        tmp.path(),
        Some(Format::Dicom),
        &ReadOptions {
            skip_bad: true,
            frame: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((ds.records.len(), ds.skipped.len()), (0, 3));
    let ds = open_dataset(
        tmp.path(),
        Some(Format::Dicom),
        &ReadOptions {
            skip_bad: true,
            frame: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.records.len(), 1);
    assert!(
        matches!(&ds.records[0].source, medret_data::ImageSource::Dicom { path, frame: 1 } if *path == multi),
        "{:?}",
        ds.records[0].source
    );
}

#[test]
fn query_files_are_told_apart_by_content() {
    // A DICOM file without an extension (as PACS exports name them) is found by its DICM
    // magic; a PNG goes to the image decoders; a .dcm holding PNG bytes is a DICOM error
    // naming the file, not a silent PNG.
    let dir = tempfile::tempdir().unwrap();
    let dcm = dir.path().join("IM0001");
    write_dicom(&dcm, &mono("MONOCHROME2", Some(("500", "1000"))));
    let img = medret_data::decode::decode_any(&dcm).unwrap();
    assert_close(&img.data, &WINDOWED, 2e-3);
    let png = dir.path().join("x.png");
    image::GrayImage::from_pixel(3, 2, image::Luma([255]))
        .save(&png)
        .unwrap();
    assert_eq!(
        medret_data::decode::decode_any(&png).unwrap().data,
        vec![1.0; 6]
    );
    let fake = dir.path().join("fake.dcm");
    std::fs::copy(&png, &fake).unwrap();
    let e = medret_data::decode::decode_any(&fake)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake.dcm"), "{e}");
}

/// Headers that would overflow the frame arithmetic or index past the data (2^32 - 1
/// frames of 65535 x 65535 RGB; planar configuration on 4:2:2 data) are errors naming the
/// file, never a panic.
#[test]
fn absurd_headers_are_errors() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, pi: &str, frames: &str, rows: u16, planar: u16| {
        let p = tmp.path().join(name);
        InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
            ),
            DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("2.25.9"),
            ),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
            DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from(pi),
            ),
            DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(planar),
            ),
            DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from(frames)),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(vec![9u8; 32]),
            ),
        ])
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(&p)
        .unwrap();
        p
    };
    let huge = write("huge.dcm", "RGB", "4294967295", 65535, 0);
    let e = medret_data::dicom::decode_dicom_frame(&huge, 4294967294)
        .unwrap_err()
        .to_string();
    assert!(e.contains("huge.dcm") && e.contains("truncated"), "{e}");
    // 4 x 4 YBR_FULL_422: 32 bytes, exactly its 2 values per pixel; planar 1 is ignored.
    let odd = write("planar422.dcm", "YBR_FULL_422", "1", 4, 1);
    let img = medret_data::dicom::decode_dicom(&odd).unwrap();
    assert_eq!((img.channels, img.height, img.width), (3, 4, 4));
}
