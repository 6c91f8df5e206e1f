//! Replays the committed fuzz corpora (`fuzz/corpus/<target>`) and the inputs that once
//! crashed a target (`fuzz/regressions/<target>`) through the targets' bodies in
//! `medret_data::fuzzing`, on stable and without libFuzzer: none may panic.
//!
//! `cargo test -p medret-data --test fuzz_corpus -- --ignored write_seeds` rewrites the
//! hand-made seeds (`seed-*`) from which the corpora grew.

use medret_data::fuzzing;

use medret_data::fuzzing::{corpus_files as inputs, fuzz_dir, replay};

#[test]
fn dicom_corpus() {
    replay("dicom", fuzzing::dicom);
}

#[test]
fn image_corpus() {
    replay("image", fuzzing::image);
}

#[test]
fn npy_corpus() {
    replay("npy", fuzzing::npy);
}

#[test]
fn manifest_corpus() {
    replay("manifest", fuzzing::manifest);
}

/// The DICOM inputs fuzzing found (an element declaring 3.5 GB, BitsStored out of range,
/// a truncated RLE segment) are refused with an error naming the file.
#[test]
fn dicom_regressions_are_errors() {
    let files = inputs("regressions", "dicom", false);
    for p in &files {
        let e = medret_data::dicom::decode_dicom_bytes(p, &std::fs::read(p).unwrap())
            .expect_err(&p.display().to_string())
            .to_string();
        assert!(e.contains(&*p.to_string_lossy()), "{e}");
    }
    let big = files
        .iter()
        .find(|p| p.to_string_lossy().contains("declared-length"))
        .expect("the oversized-length regression");
    let e = medret_data::dicom::declared_size_bytes(big, &std::fs::read(big).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the file's"), "{e}");
}

/// The hand-made seeds are valid inputs, so that fuzzing starts from the deep paths.
#[test]
fn seeds_are_valid() {
    let seeds = |target: &str| {
        inputs("corpus", target, false).into_iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
    };
    let mut n = 0;
    for p in seeds("dicom") {
        let bytes = std::fs::read(&p).unwrap();
        let img = medret_data::dicom::decode_dicom_bytes(&p, &bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(img.width > 0 && img.height > 0);
        n += 1;
    }
    for p in seeds("image") {
        medret_data::decode::decode_bytes(&p, &std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    for p in seeds("npy") {
        let bytes = std::fs::read(&p).unwrap();
        let f32s = medret_data::npy::read_f32_matrix_bytes(&p, &bytes);
        let u8s = medret_data::npy::read_u8_matrix_bytes(&p, &bytes);
        assert!(f32s.is_ok() || u8s.is_ok(), "{}", p.display());
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds");
}

mod seeds {
    use std::path::Path;

    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// A small single-frame image in the given transfer syntax; `pixels` is the native
    /// pixel data, or the fragment of an encapsulated one.
    #[allow(clippy::too_many_arguments)]
    fn dicom(
        ts: &str,
        photometric: &str,
        samples: u16,
        bits: u16,
        (rows, cols): (u16, u16),
        extra: Vec<DataElement<InMemDicomObject>>,
        pixels: Vec<u8>,
        encapsulated: bool,
    ) -> Vec<u8> {
        let mut el = vec![
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
            ),
            DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2.3"),
            ),
            DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("P1")),
            DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("DX")),
            DataElement::new(tags::VIEW_POSITION, VR::CS, PrimitiveValue::from("PA")),
            DataElement::new(tags::IMAGE_LATERALITY, VR::CS, PrimitiveValue::from("L")),
            DataElement::new(
                tags::SAMPLES_PER_PIXEL,
                VR::US,
                PrimitiveValue::from(samples),
            ),
            DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from(photometric),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(bits - 1)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
        ];
        if samples == 3 {
            el.push(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        el.extend(extra);
        let vr = if bits == 16 { VR::OW } else { VR::OB };
        el.push(if encapsulated {
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![pixels])),
            )
        } else {
            DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::from(pixels))
        });
        let obj = InMemDicomObject::from_element_iter(el)
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
            .unwrap();
        let mut out = Vec::new();
        obj.write_all(&mut out).unwrap();
        out
    }

    fn ds(tag: dicom_core::Tag, v: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::DS, PrimitiveValue::from(v))
    }

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(img: image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn grey(w: u32, h: u32) -> image::DynamicImage {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([(x * 40 + y * 17) as u8])
        }))
    }

    #[test]
    #[ignore = "rewrites the committed seeds"]
    fn write_seeds() {
        let root = super::fuzz_dir().join("corpus");

        // Images: PNG in each colour type medret meets, baseline JPEG grey and colour.
        let d = root.join("image");
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(6, 4, |x, y| {
            image::Rgb([(x * 40) as u8, (y * 60) as u8, 128])
        }));
        write(&d, "seed-grey.png", &png(grey(5, 4)));
        write(&d, "seed-rgb.png", &png(rgb.clone()));
        write(
            &d,
            "seed-rgba.png",
            &png(image::DynamicImage::ImageRgba8(rgb.to_rgba8())),
        );
        write(
            &d,
            "seed-grey16.png",
            &png(image::DynamicImage::ImageLuma16(rgb.to_luma16())),
        );
        write(&d, "seed-grey.jpg", &jpeg(grey(8, 8)));
        write(&d, "seed-rgb.jpg", &jpeg(rgb.clone()));

        // DICOM: native 16- and 8-bit grey (rescale, window, MONOCHROME1), RGB, implicit
        // VR, no preamble, RLE Lossless and JPEG Baseline encapsulated.
        let d = root.join("dicom");
        let raw16: Vec<u8> = [50u16, 100, 300, 550, 600, 2000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let rescale = || {
            vec![
                ds(tags::RESCALE_SLOPE, "2"),
                ds(tags::RESCALE_INTERCEPT, "-100"),
            ]
        };
        let window = vec![
            ds(tags::WINDOW_CENTER, "500"),
            ds(tags::WINDOW_WIDTH, "1000"),
        ];
        let mono16 = dicom(
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            "MONOCHROME2",
            1,
            16,
            (2, 3),
            rescale(),
            raw16.clone(),
            false,
        );
        write(&d, "seed-mono16.dcm", &mono16);
        write(&d, "seed-mono16-nopreamble.dcm", &mono16[128..]);
        write(
            &d,
            "seed-mono16-window.dcm",
            &dicom(
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                "MONOCHROME1",
                1,
                16,
                (2, 3),
                [rescale(), window].concat(),
                raw16.clone(),
                false,
            ),
        );
        write(
            &d,
            "seed-mono16-implicit.dcm",
            &dicom(
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
                "MONOCHROME2",
                1,
                16,
                (2, 3),
                vec![],
                raw16,
                false,
            ),
        );
        let raw8 = vec![0u8, 40, 80, 120, 160, 200];
        write(
            &d,
            "seed-mono8.dcm",
            &dicom(
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                "MONOCHROME2",
                1,
                8,
                (2, 3),
                vec![],
                raw8.clone(),
                false,
            ),
        );
        write(
            &d,
            "seed-rgb8.dcm",
            &dicom(
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                "RGB",
                3,
                8,
                (2, 1),
                vec![],
                vec![255, 0, 0, 0, 128, 255],
                false,
            ),
        );
        // RLE Lossless (PS3.5 G): a 64-byte header (1 segment at offset 64), then one
        // PackBits literal run of the six bytes.
        let mut rle = Vec::new();
        rle.extend_from_slice(&1u32.to_le_bytes());
        rle.extend_from_slice(&64u32.to_le_bytes());
        rle.resize(64, 0);
        rle.push(5);
        rle.extend_from_slice(&raw8);
        write(
            &d,
            "seed-mono8-rle.dcm",
            &dicom(
                uids::RLE_LOSSLESS,
                "MONOCHROME2",
                1,
                8,
                (2, 3),
                vec![],
                rle,
                true,
            ),
        );
        write(
            &d,
            "seed-mono8-jpeg.dcm",
            &dicom(
                uids::JPEG_BASELINE8_BIT,
                "MONOCHROME2",
                1,
                8,
                (8, 8),
                vec![],
                jpeg(grey(8, 8)),
                true,
            ),
        );

        // .npy: float32 and uint8 matrices as medret writes them.
        let d = root.join("npy");
        std::fs::create_dir_all(&d).unwrap();
        medret_data::npy::write_f32_matrix(
            &d.join("seed-f32.npy"),
            &[vec![0.5, -1.0, 2.0], vec![3.0, 4.5, 1e-3]],
        )
        .unwrap();
        medret_data::npy::write_u8_matrix(&d.join("seed-u8.npy"), 2, 3, &[1, 2, 3, 4, 5, 6])
            .unwrap();

        // Manifests naming the files the target puts beside them.
        let d = root.join("manifest");
        write(
            &d,
            "seed-full.csv",
            b"path,labels,patient_id,split,view,eye,grade,masks,site\n\
              a.png,Effusion|Nodule,p1,train,PA,left,2,masks/a_MA.png,north\n\
              b.dcm,,p2,test,,OD,,,south\n\
              a.png,Nodule,p3,validation,AP,,0,,\n",
        );
        write(
            &d,
            "seed-min.csv",
            b"\xef\xbb\xbfpath,labels,patient_id,split\r\na.png,Other,p1,\r\n\"b.dcm\",\"Effusion\",\"p 2\",val\r\n",
        );
    }
}
