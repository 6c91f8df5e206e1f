//! Readers on small fixtures built in code: parsed values are checked, and every bad input
//! gives an error naming the file, the row and the problem.

use std::path::Path;

use medret_data::decode::load_image;
use medret_data::labels::NihLabelSet;
use medret_data::{DataError, Eye, Format, ReadOptions, Split, open_dataset};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn png_grey(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

const NIH_HEADER: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n";

fn nih_fixture(dir: &Path) {
    write(
        &dir.join("Data_Entry_2017_v2020.csv"),
        &format!(
            "{NIH_HEADER}\
             00000001_000.png,Cardiomegaly|Emphysema,0,1,57,M,PA,2682,2749,0.143,0.143,\n\
             00000001_001.png,No Finding,1,1,58,M,AP,2500,2048,0.168,0.168,\n\
             00000002_000.png,Hernia,0,2,81,F,PA,2048,2500,0.171,0.171,\n"
        ),
    );
    png_grey(&dir.join("images/00000001_000.png"), 4, 3, |x, y| {
        (x * 10 + y) as u8
    });
    // One image stored as RGBA, as a few NIH images are.
    std::fs::create_dir_all(dir.join("images")).unwrap();
    image::RgbaImage::from_pixel(4, 3, image::Rgba([100, 100, 100, 255]))
        .save(dir.join("images/00000001_001.png"))
        .unwrap();
    png_grey(&dir.join("images/00000002_000.png"), 4, 3, |_, _| 0);
    write(
        &dir.join("train_val_list.txt"),
        "00000001_000.png\n00000001_001.png\n",
    );
    write(&dir.join("test_list.txt"), "00000002_000.png\n");
    write(
        &dir.join("BBox_List_2017.csv"),
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Cardiomegaly,1.5,0,2,2.25\n00000001_000.png,Infiltrate,0,1,1,1\n",
    );
}

#[test]
fn nih_reader_parses_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    nih_fixture(tmp.path());
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Nih);
    assert_eq!(ds.label_names.len(), 15);
    assert_eq!(ds.label_names[14], "No Finding");
    let r = &ds.records[0];
    assert_eq!(r.id, "00000001_000.png");
    assert_eq!(r.labels, ["Cardiomegaly", "Emphysema"]);
    assert_eq!(r.patient_id, "1");
    assert_eq!(r.view.as_deref(), Some("PA"));
    assert_eq!(r.split, Some(Split::Train));
    assert_eq!(r.meta["age"], "57");
    assert_eq!(r.meta["sex"], "M");
    assert_eq!(r.meta["original_width"], "2682");
    assert_eq!(r.meta["original_height"], "2749");
    assert_eq!(r.meta["pixel_spacing_y"], "0.143");
    assert_eq!(r.boxes.len(), 2);
    assert_eq!(
        (r.boxes[0].label.as_str(), r.boxes[0].x, r.boxes[0].h),
        ("Cardiomegaly", 1.5, 2.25)
    );
    assert_eq!(r.boxes[1].label, "Infiltration");
    let v = ds.label_vector(r);
    assert_eq!(v[1], 1.0);
    assert_eq!(v[10], 1.0);
    assert_eq!(v.iter().sum::<f32>(), 2.0);
    assert_eq!(ds.records[2].split, Some(Split::Test));
    let img = load_image(&r.source).unwrap();
    assert_eq!((img.channels, img.height, img.width), (1, 3, 4));
    assert!((img.get(0, 2, 3) - 32.0 / 255.0).abs() < 1e-6);
    let rgba = load_image(&ds.records[1].source).unwrap();
    assert_eq!(rgba.channels, 3, "RGBA is converted to RGB");
    assert!((rgba.get(0, 0, 0) - 100.0 / 255.0).abs() < 1e-6);
}

#[test]
fn nih_eight_label_set_drops_images_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    nih_fixture(tmp.path());
    let opts = ReadOptions {
        nih_labels: Some(NihLabelSet::ChestXray8),
        ..Default::default()
    };
    let ds = open_dataset(tmp.path(), None, &opts).unwrap();
    assert_eq!(ds.label_names.len(), 9);
    // Emphysema is not in ChestX-ray8; Hernia-only image 3 drops out.
    assert_eq!(ds.records[0].labels, ["Cardiomegaly"]);
    assert_eq!(ds.records.len(), 2);
    assert_eq!(ds.skipped.len(), 1);
    assert!(ds.skipped[0].contains("line 4"), "{}", ds.skipped[0]);
}

fn err_of(dir: &Path, opts: &ReadOptions) -> DataError {
    open_dataset(dir, None, opts).unwrap_err()
}

#[test]
fn nih_bad_inputs_name_file_line_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    nih_fixture(d);
    let entry = d.join("Data_Entry_2017_v2020.csv");
    let good = std::fs::read_to_string(&entry).unwrap();

    write(&entry, &good.replace("Hernia", "Heartburn"));
    let e = err_of(d, &ReadOptions::default());
    assert!(matches!(e, DataError::UnknownLabel { line: 4, .. }), "{e}");
    assert!(
        e.to_string().contains("Data_Entry_2017_v2020.csv, line 4")
            && e.to_string().contains("Heartburn"),
        "{e}"
    );

    write(&entry, &good.replace("Patient Gender", "Sex"));
    let e = err_of(d, &ReadOptions::default());
    assert!(
        matches!(&e, DataError::MissingColumn { column, .. } if column == "Patient Gender"),
        "{e}"
    );

    write(&entry, &good.replace(",57,", ",fifty,"));
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(
        e.contains("line 2") && e.contains("Patient Age") && e.contains("fifty"),
        "{e}"
    );

    write(&entry, &good.replace("0.143,0.143,\n", "0.143\n"));
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(
        e.contains("line 2") && e.contains("expected 11 fields, found 10"),
        "{e}"
    );

    write(&entry, &good);
    std::fs::remove_file(d.join("images/00000002_000.png")).unwrap();
    let e = err_of(d, &ReadOptions::default());
    assert!(
        matches!(&e, DataError::MissingImage { line: 4, image, .. } if image.ends_with("00000002_000.png")),
        "{e}"
    );
    // With skip_bad the rest is read and the bad row is reported.
    let ds = open_dataset(
        d,
        None,
        &ReadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.records.len(), 2);
    assert_eq!(ds.skipped.len(), 1);
    assert!(ds.skipped[0].contains("absent"));

    png_grey(&d.join("images/00000002_000.png"), 4, 3, |_, _| 0);
    let boxes = d.join("BBox_List_2017.csv");
    let good_boxes = std::fs::read_to_string(&boxes).unwrap();
    write(
        &boxes,
        &format!("{good_boxes}00009999_000.png,Mass,1,1,1,1\n"),
    );
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(
        e.contains("BBox_List_2017.csv, line 4") && e.contains("unknown image `00009999_000.png`"),
        "{e}"
    );
    let ds = open_dataset(
        d,
        None,
        &ReadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.records.len(), 3);
    assert_eq!(ds.records[0].boxes.len(), 2, "good boxes still attach");
    assert!(
        ds.skipped.iter().any(|s| s.contains("unknown image")),
        "{:?}",
        ds.skipped
    );
    write(&boxes, &good_boxes);
    write(
        &d.join("test_list.txt"),
        "00000002_000.png\n00000001_000.png\n",
    );
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(
        e.contains("test_list.txt, line 2") && e.contains("both"),
        "{e}"
    );
}

#[test]
fn unreadable_image_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    nih_fixture(tmp.path());
    let bad = tmp.path().join("images/00000002_000.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let ds = open_dataset(tmp.path(), None, &ReadOptions::default()).unwrap();
    let e = load_image(&ds.records[2].source).unwrap_err();
    assert!(matches!(e, DataError::Image { .. }));
    assert!(e.to_string().contains("00000002_000.png"), "{e}");
    let s = medret_data::summarise(&ds, true);
    assert_eq!(s.problems.len(), 1);
    assert!(s.problems[0].contains("00000002_000.png"));
    assert_eq!(s.image_sizes.values().sum::<usize>(), 2);
}

#[test]
fn eyepacs_reader_parses_names_grades_and_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        &d.join("trainLabels.csv"),
        "image,level\n10_left,0\n10_right,3\n",
    );
    write(
        &d.join("retinopathy_solution.csv"),
        "image,level,Usage\n13_left,4,Private\n",
    );
    std::fs::create_dir_all(d.join("train")).unwrap();
    for n in ["10_left", "10_right", "13_left"] {
        image::RgbImage::from_pixel(8, 6, image::Rgb([200, 80, 30]))
            .save(d.join(format!("train/{n}.jpeg")))
            .unwrap();
    }
    let ds = open_dataset(d, None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Eyepacs);
    assert_eq!(ds.label_names, ["DR0", "DR1", "DR2", "DR3", "DR4"]);
    let r = &ds.records[1];
    assert_eq!(
        (r.patient_id.as_str(), r.eye, r.grade, r.split),
        ("10", Some(Eye::Right), Some(3), Some(Split::Train))
    );
    assert_eq!(r.labels, ["DR3"]);
    let t = &ds.records[2];
    assert_eq!(
        (t.grade, t.split, t.meta["usage"].as_str()),
        (Some(4), Some(Split::Test), "Private")
    );
    let img = load_image(&r.source).unwrap();
    assert_eq!((img.channels, img.height, img.width), (3, 6, 8));
    assert!(
        (img.get(0, 3, 4) - 200.0 / 255.0).abs() < 0.03,
        "JPEG is lossy, but not that lossy"
    );

    write(
        &d.join("trainLabels.csv"),
        "image,level\n10_left,0\n10_middle,3\n",
    );
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(
        e.contains("trainLabels.csv, line 3") && e.contains("10_middle"),
        "{e}"
    );
    write(&d.join("trainLabels.csv"), "image,level\n10_left,5\n");
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(e.contains("line 2") && e.contains("DR grade `5`"), "{e}");
    write(&d.join("trainLabels.csv"), "image,grade\n10_left,1\n");
    let e = err_of(d, &ReadOptions::default());
    assert!(
        matches!(&e, DataError::MissingColumn { column, .. } if column == "level"),
        "{e}"
    );
    write(&d.join("trainLabels.csv"), "image,level\n99_left,1\n");
    let e = err_of(d, &ReadOptions::default());
    assert!(matches!(e, DataError::MissingImage { line: 2, .. }), "{e}");
}

fn manifest_fixture(d: &Path) {
    write(
        &d.join("manifest.csv"),
        "path,labels,patient_id,split,grade,masks,site\n\
         images/a.png,DR2,p1,train,2,masks/a_MA.png;masks/a_OD.png,north\n\
         images/b.png,,p2,test,,,south\n\
         images/c.png,DR0|extra,p3,val,0,,north\n",
    );
    for n in ["a", "b", "c"] {
        png_grey(&d.join(format!("images/{n}.png")), 5, 5, |_, _| 9);
    }
    png_grey(&d.join("masks/a_MA.png"), 5, 5, |_, _| 0);
    png_grey(&d.join("masks/a_OD.png"), 5, 5, |_, _| 0);
}

#[test]
fn manifest_reader_keeps_extra_columns_and_unlabelled_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest_fixture(d);
    let ds = open_dataset(d, None, &ReadOptions::default()).unwrap();
    assert_eq!(ds.format, Format::Manifest);
    assert_eq!(ds.label_names, ["DR0", "DR2", "extra"]);
    let a = &ds.records[0];
    assert_eq!(
        (a.grade, a.split, a.patient_id.as_str()),
        (Some(2), Some(Split::Train), "p1")
    );
    assert_eq!(a.masks.len(), 2);
    assert_eq!(a.masks[0].lesion.as_deref(), Some("MA"));
    assert_eq!(a.masks[1].lesion.as_deref(), Some("OD"));
    assert_eq!(a.meta["site"], "north");
    assert!(ds.records[1].is_unlabelled());
    assert_eq!(ds.records[2].labels, ["DR0", "extra"]);
    assert_eq!(ds.records[2].split, Some(Split::Val));
    let s = medret_data::summarise(&ds, false);
    assert_eq!(s.unlabelled, 1);
    assert_eq!(
        s.labels,
        vec![
            ("DR0".to_string(), 1),
            ("DR2".to_string(), 1),
            ("extra".to_string(), 1)
        ]
    );
}

#[test]
fn manifest_bad_inputs_name_file_line_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest_fixture(d);
    let m = d.join("manifest.csv");
    let good = std::fs::read_to_string(&m).unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("p2,test,,", "p2,testing,,", "unknown split `testing`"),
        (",2,masks", ",two,masks", "DR grade `two`"),
        ("a_OD.png", "a_XX.png", "mask"),
        ("images/c.png", "images/missing.png", "absent"),
        (",p3,", ",,", "empty `patient_id`"),
    ];
    for (from, to, what) in cases {
        write(&m, &good.replace(from, to));
        let e = err_of(d, &ReadOptions::default()).to_string();
        assert!(
            e.contains("manifest.csv, line") && e.contains(what),
            "{from} -> {to}: {e}"
        );
    }
    write(&m, &good.replace("patient_id", "patient"));
    let e = err_of(d, &ReadOptions::default());
    assert!(
        matches!(&e, DataError::MissingColumn { column, .. } if column == "patient_id"),
        "{e}"
    );
    write(&m, &good);
    let opts = ReadOptions {
        label_vocabulary: Some(vec!["DR0".into(), "DR2".into()]),
        ..Default::default()
    };
    let e = err_of(d, &opts);
    assert!(
        matches!(&e, DataError::UnknownLabel { line: 4, label, .. } if label == "extra"),
        "{e}"
    );
    // Header only, and an empty file.
    write(&m, "path,labels,patient_id,split\n");
    assert_eq!(
        open_dataset(d, None, &ReadOptions::default())
            .unwrap()
            .records
            .len(),
        0
    );
    write(&m, "");
    let e = err_of(d, &ReadOptions::default()).to_string();
    assert!(e.contains("manifest.csv"), "{e}");
}

#[test]
fn summary_flags_patients_in_two_splits_and_duplicate_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest_fixture(d);
    write(
        &d.join("manifest.csv"),
        "path,labels,patient_id,split\nimages/a.png,x,p1,train\nimages/b.png,x,p1,test\nimages/b.png,x,p1,test\n",
    );
    let s = medret_data::summarise(
        &open_dataset(d, None, &ReadOptions::default()).unwrap(),
        false,
    );
    assert_eq!(s.patients, 1);
    assert_eq!(s.splits["train"].patients, 1);
    assert!(
        s.problems
            .iter()
            .any(|p| p.contains("not patient-disjoint")),
        "{:?}",
        s.problems
    );
    assert!(
        s.problems.iter().any(|p| p.contains("listed 2 times")),
        "{:?}",
        s.problems
    );
}

mod medmnist {
    use super::*;
    use npyz::WriterBuilder;

    fn write_array<T: npyz::AutoSerialize + Copy>(
        w: &mut npyz::npz::NpzWriter<std::io::BufWriter<std::fs::File>>,
        name: &str,
        shape: &[u64],
        data: &[T],
    ) {
        let mut a = w
            .array::<T>(name, Default::default())
            .unwrap()
            .default_dtype()
            .shape(shape)
            .begin_nd()
            .unwrap();
        a.extend(data.iter().copied()).unwrap();
        a.finish().unwrap();
    }

    #[test]
    fn chestmnist_multilabel_and_retinamnist_grades() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("chestmnist.npz");
        let mut w = npyz::npz::NpzWriter::create(&p).unwrap();
        let px: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        write_array(&mut w, "train_images", &[2, 3, 3], &px);
        let mut labels = vec![0u8; 28];
        labels[1] = 1; // Cardiomegaly
        labels[5] = 1; // Nodule
        write_array(&mut w, "train_labels", &[2, 14], &labels);
        drop(w);
        let ds = open_dataset(&p, None, &ReadOptions::default()).unwrap();
        assert_eq!(ds.format, Format::Medmnist);
        assert_eq!(ds.records.len(), 2);
        assert_eq!(ds.records[0].labels, ["Cardiomegaly", "Nodule"]);
        assert_eq!(ds.records[1].labels, ["No Finding"]);
        let img = load_image(&ds.records[1].source).unwrap();
        assert_eq!((img.channels, img.height, img.width), (1, 3, 3));
        assert!(
            (img.get(0, 0, 1) - 100.0 / 255.0).abs() < 1e-6,
            "second image starts at value 90"
        );

        let p = tmp.path().join("retinamnist.npz");
        let mut w = npyz::npz::NpzWriter::create(&p).unwrap();
        write_array(&mut w, "test_images", &[2, 2, 2, 3], &[7u8; 24]);
        write_array(&mut w, "test_labels", &[2, 1], &[3i64, 0]);
        drop(w);
        let ds = open_dataset(&p, None, &ReadOptions::default()).unwrap();
        assert_eq!(ds.records[0].grade, Some(3));
        assert_eq!(ds.records[0].split, Some(Split::Test));
        assert_eq!(load_image(&ds.records[0].source).unwrap().channels, 3);

        // Truncated file: clear error naming it.
        let bytes = std::fs::read(&p).unwrap();
        let cut = tmp.path().join("cut.npz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = open_dataset(&cut, None, &ReadOptions::default()).unwrap_err();
        assert!(matches!(e, DataError::Npz { .. }), "{e}");
        assert!(e.to_string().contains("cut.npz"), "{e}");

        // Grade out of range and a missing labels array.
        let p = tmp.path().join("retinamnist_bad.npz");
        let mut w = npyz::npz::NpzWriter::create(&p).unwrap();
        write_array(&mut w, "test_images", &[1, 2, 2], &[0u8; 4]);
        write_array(&mut w, "test_labels", &[1, 1], &[7i64]);
        write_array(&mut w, "val_images", &[1, 2, 2], &[0u8; 4]);
        drop(w);
        let e = open_dataset(&p, None, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("val_labels") && e.contains("missing"), "{e}");
    }
}
