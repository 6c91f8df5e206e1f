//! The `medret` binary end to end.

use std::path::Path;

mod common;
use common::{fails_with as fails, ok};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn synth_then_info_round_trips_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cxr");
    let o = out.to_str().unwrap();
    let w = json(&ok(&[
        "synth", "cxr", "--n", "50", "--size", "48", "--seed", "3", "--out", o, "--json",
    ]));
    assert_eq!(w["images"], 50);
    let s = json(&ok(&["data", "info", o, "--json", "--check-images"]));
    assert_eq!(s["format"], "nih");
    assert_eq!(s["images"], 50);
    let train = s["splits"]["train"]["images"].as_u64().unwrap();
    let test = s["splits"]["test"]["images"].as_u64().unwrap();
    assert_eq!(train + test, 50);
    assert_eq!(s["image_sizes"]["48x48 grey"], 50);
    assert_eq!(s["problems"].as_array().unwrap().len(), 0);
    // Label counts equal those in the CSV the generator wrote.
    let csv = std::fs::read_to_string(out.join("Data_Entry_2017.csv")).unwrap();
    let nodules = csv
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .nth(1)
                .unwrap()
                .split('|')
                .any(|x| x == "Nodule")
        })
        .count();
    let got = s["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "Nodule")
        .unwrap()[1]
        .as_u64()
        .unwrap();
    assert_eq!(got as usize, nodules);

    let f = tmp.path().join("fundus");
    let fo = f.to_str().unwrap();
    ok(&["synth", "fundus", "--n", "20", "--size", "48", "--out", fo]);
    let s = json(&ok(&["data", "info", fo, "--json"]));
    assert_eq!(s["format"], "eyepacs");
    assert_eq!(s["images"], 20);
    assert_eq!(s["eyes"]["left"], 10);
    let text = ok(&["data", "info", fo]);
    assert!(
        text.contains("grades:") && text.contains("problems: none"),
        "{text}"
    );
}

#[test]
fn bad_inputs_are_clear_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fails(
        &["data", "info", d.join("nothing").to_str().unwrap()],
        &["nothing", "no such file"],
    );
    fails(
        &["data", "info", d.to_str().unwrap()],
        &["cannot tell the format"],
    );
    std::fs::write(d.join("manifest.csv"), "path,labels,patient\nx.png,a,p\n").unwrap();
    fails(
        &["data", "info", d.to_str().unwrap()],
        &["manifest.csv", "missing column `patient_id`"],
    );
    std::fs::write(
        d.join("manifest.csv"),
        "path,labels,patient_id,split\nx.png,a,p,train\n",
    )
    .unwrap();
    fails(
        &["data", "info", d.to_str().unwrap()],
        &["manifest.csv, line 2", "x.png", "absent"],
    );
    // --skip-bad reads on and reports the row.
    let s = json(&ok(&[
        "data",
        "info",
        d.to_str().unwrap(),
        "--skip-bad",
        "--json",
    ]));
    assert_eq!(s["images"], 0);
    assert_eq!(s["skipped"].as_array().unwrap().len(), 1);
    std::fs::write(d.join("broken.npz"), b"PK\x03\x04 not really").unwrap();
    fails(
        &["data", "info", d.join("broken.npz").to_str().unwrap()],
        &["broken.npz", "NPZ"],
    );
    fails(
        &["data", "info", d.to_str().unwrap(), "--labels", "9"],
        &["--labels"],
    );
}

#[test]
fn demo_runs_the_whole_job_and_writes_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let text = ok(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--n",
        "60",
        "--size",
        "64",
        "--input",
        "32",
        "--epochs",
        "1",
        "--pretrain-epochs",
        "1",
    ]);
    // Every step ran, through the real commands.
    for step in [
        "medret synth cxr",
        "medret pretrain c2l",
        "medret train hash",
        "--init",
        "medret train metric",
        "medret index build",
        "medret search",
        "medret eval",
    ] {
        assert!(text.contains(step), "no `{step}` in:\n{text}");
    }
    let summary: Vec<&str> = text
        .split("== summary\n")
        .nth(1)
        .expect("a summary")
        .lines()
        .collect();
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert!(summary[0].starts_with("chest") && summary[0].contains("raw-pixel LSH"));
    assert!(summary[1].starts_with("fundus") && summary[1].contains("chance"));
    for f in [
        "report.html",
        "report.json",
        "archive.db",
        "cxr/Data_Entry_2017.csv",
        "fundus/trainLabels.csv",
        "c2l/backbone.safetensors",
        "cxr-hash/model.json",
        "fundus-metric/model.json",
        "explain-cxr/query.png",
        "explain-fundus/query-gradcam.png",
        "eval-cxr/report.html",
        "eval-fundus/report.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r = json(&std::fs::read_to_string(out.join("report.json")).unwrap());
    for (set, k) in [("cxr", "map@100"), ("fundus", "map@10")] {
        let m = r[set]["metrics"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m), "{set} {k} {m}");
        assert!(r[set]["chance"][k].as_f64().is_some());
    }
    assert!(r["total_seconds"].as_f64().unwrap() > 0.0);
    let index = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(index.contains("eval-cxr/report.html") && index.contains("eval-fundus/report.html"));
    // Each part names its method and shows its headline table and PR curve inline.
    for method in [
        "fusion hashing with C2L pretraining",
        "mirror attention with the fine triplet loss",
    ] {
        assert!(index.contains(method), "report.html does not name {method}");
    }
    assert_eq!(index.matches("<svg").count(), 2, "two PR curves");
    let chest = r["cxr"]["metrics"]["map@100"].as_f64().unwrap();
    assert!(
        index.contains(&format!("<b>{chest:.3}</b>")),
        "the chest table's mAP@100 {chest:.3} is not the report's"
    );
}

#[test]
fn sheet_command_writes_a_png_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("f");
    ok(&[
        "synth",
        "fundus",
        "--n",
        "8",
        "--size",
        "48",
        "--out",
        d.to_str().unwrap(),
    ]);
    let png = tmp.path().join("s.png");
    ok(&[
        "data",
        "sheet",
        d.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--n",
        "8",
        "--cols",
        "4",
        "--tile",
        "32",
        "--masks",
    ]);
    let img = image::open(Path::new(&png)).unwrap();
    // 4 columns of 32 px; 2 rows of 32 px plus a two-line caption (24 px).
    assert_eq!((img.width(), img.height()), (128, 2 * (32 + 24)));
}

/// A two-frame, 16-bit DICOM file with a rescale and a window, written with the `dicom`
/// crates: values `10 * (frame * 6 + i)` for the 2 x 3 pixels of each frame.
fn two_frame_dicom(path: &Path) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let px: Vec<u16> = (0..12).map(|i| 10 * i).collect();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.7"),
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ),
        DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("2")),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(3u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, PrimitiveValue::from("-50")),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from("2")),
        DataElement::new(tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from("150")),
        DataElement::new(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from("101")),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())),
    ]);
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

#[test]
fn data_export_writes_a_frame_as_medret_decodes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dcm = tmp.path().join("two.dcm");
    two_frame_dicom(&dcm);
    let d = dcm.to_str().unwrap();
    let npy = tmp.path().join("raw.npy");
    let out = ok(&[
        "data",
        "export",
        d,
        "--raw",
        "--frame",
        "2",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(out.contains("2 of 2 frames"), "{out}");
    let (shape, v) = medret_data::npy::read_f32_matrix(&npy).unwrap();
    assert_eq!(shape, [2, 3]);
    // Frame 2 holds 60..110 step 10; modality: 2 x - 50.
    assert_eq!(v, [70.0, 90.0, 110.0, 130.0, 150.0, 170.0]);

    // The display pipeline: the window (centre 150, width 101) by PS3.3 C.11.2.1.2.1:
    // 0 at or below 99.5, 1 above 199.5, (x - 149.5) / 100 + 0.5 between.
    let shown = tmp.path().join("shown.npy");
    ok(&[
        "data",
        "export",
        d,
        "--frame",
        "2",
        "--out",
        shown.to_str().unwrap(),
    ]);
    let (_, v) = medret_data::npy::read_f32_matrix(&shown).unwrap();
    let want = [0.0, 0.0, 0.105, 0.305, 0.505, 0.705];
    for (g, w) in v.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{v:?} vs {want:?}");
    }
    let png = tmp.path().join("shown.png");
    ok(&["data", "export", d, "--out", png.to_str().unwrap()]);
    let img = image::open(&png).unwrap();
    assert!(matches!(img, image::DynamicImage::ImageLuma16(_)));

    // The frame count shows in `data info`.
    let s = json(&ok(&["data", "info", d, "--json"]));
    assert_eq!(s["frames"]["2"], 1, "{s}");
    assert_eq!(
        s["transfer_syntaxes"]["Explicit VR Little Endian (1.2.840.10008.1.2.1)"], 1,
        "{s}"
    );

    let n = npy.to_str().unwrap();
    fails(
        &["data", "export", d, "--raw", "--frame", "3", "--out", n],
        &["two.dcm", "frame 3", "2 frames"],
    );
    fails(
        &["data", "export", d, "--raw", "--out", png.to_str().unwrap()],
        &[".npy"],
    );
    fails(
        &["data", "export", png.to_str().unwrap(), "--raw", "--out", n],
        &["shown.png", "--raw applies to DICOM"],
    );
}

/// `docs/index.md` links every page of `docs/`, so a new page cannot go unlisted.
#[test]
fn the_docs_index_lists_every_page() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let index = std::fs::read_to_string(docs.join("index.md")).unwrap();
    let mut pages = 0;
    for e in std::fs::read_dir(&docs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && name != "index.md" {
            assert!(
                index.contains(&format!("]({name})")),
                "docs/index.md does not link {name}"
            );
            pages += 1;
        }
    }
    assert!(pages >= 10, "{pages} pages");
}

/// docs/cli.md is generated from the clap definitions; a flag added, renamed or
/// re-documented without regenerating it fails here.
#[test]
fn the_cli_reference_in_docs_is_current() {
    let generated = ok(&["cli-reference"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    if generated != stored {
        let line = generated
            .lines()
            .zip(stored.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(stored.lines().count()));
        panic!(
            "docs/cli.md is stale (first difference at line {}); regenerate it with\n    cargo run -q -- cli-reference > docs/cli.md",
            line + 1
        );
    }
    // The reference covers every command, the hidden generator excepted.
    for command in [
        "## `medret demo`",
        "## `medret train hash`",
        "## `medret serve`",
        "## `medret pacs sync`",
    ] {
        assert!(generated.contains(command), "{command} missing");
    }
    assert!(!generated.contains("cli-reference"));
}

/// Output into a pipe whose reader has gone (`medret ... | head`) ends the process
/// quietly, by SIGPIPE as `cat` does, never with a panic.
#[cfg(unix)]
#[test]
fn a_closed_pipe_stops_output_without_a_panic() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    // A pipe whose read end is closed before the process starts: its first write fails.
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just opened by pipe(2) and are owned here alone.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let child = Command::new(env!("CARGO_BIN_EXE_medret"))
        .arg("cli-reference")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
