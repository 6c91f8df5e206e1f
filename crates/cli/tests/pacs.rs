//! medret beside a real PACS: Orthanc with its DICOMweb plugin (Debian's `orthanc` and
//! `orthanc-dicomweb`), started here on a random loopback port with authentication on,
//! in a temporary folder. Phantoms written as DICOM in several transfer syntaxes are
//! stored into it by STOW-RS; `medret pacs sync` follows it (counts, UIDs, a second run,
//! new studies, a broken instance, kill -9 and rerun); the server searches by study UID
//! and writes a key object back; wrong credentials and a stopped PACS are clear errors
//! that leave the archive unchanged.
//!
//! Without Orthanc the test says so and skips, unless `MEDRET_REQUIRE_ORTHANC` is set
//! (`.ci/run` sets it and installs the packages).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, fails, ok, s};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use medret_pacs::dicomweb::Limits;
use medret_pacs::{Auth, DicomWeb};
use medret_store::CaseStore;
use serde_json::Value;

const USER: &str = "medret";
const PASSWORD: &str = "pacs-s3cret-9f2";
const PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

struct Orthanc {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Orthanc {
    /// Starts Orthanc on a free loopback port; `None` when it is not installed.
    fn start(dir: &Path) -> Option<Orthanc> {
        let installed =
            Command::new("Orthanc").arg("--version").output().is_ok() && Path::new(PLUGIN).exists();
        if !installed {
            assert!(
                std::env::var_os("MEDRET_REQUIRE_ORTHANC").is_none(),
                "MEDRET_REQUIRE_ORTHANC is set but Orthanc or its DICOMweb plugin is not installed"
            );
            eprintln!(
                "Orthanc is not installed: the PACS test is skipped (.ci/run installs orthanc and orthanc-dicomweb)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Self::start_on(dir, port))
    }

    fn start_on(dir: &Path, port: u16) -> Orthanc {
        let db = dir.join("orthanc-db");
        std::fs::create_dir_all(&db).unwrap();
        let config = dir.join("orthanc.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "Name": "medret-test",
                "StorageDirectory": db,
                "IndexDirectory": db,
                "HttpPort": port,
                "DicomServerEnabled": false,
                "RemoteAccessAllowed": false,
                "AuthenticationEnabled": true,
                "RegisteredUsers": { USER: PASSWORD },
                "Plugins": [PLUGIN],
                "DicomWeb": { "Enable": true, "Root": "/dicom-web/" },
            })
            .to_string(),
        )
        .unwrap();
        let child = Command::new("Orthanc")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("orthanc.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let o = Orthanc {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let t = Instant::now();
        loop {
            if o.client(Some(PASSWORD)).find_instances(None, &[]).is_ok() {
                return o;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "Orthanc did not start: {}",
                std::fs::read_to_string(dir.join("orthanc.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/dicom-web", self.port)
    }

    fn client(&self, password: Option<&str>) -> DicomWeb {
        let auth = password.map(|p| Auth::Basic {
            user: USER.into(),
            password: p.into(),
        });
        DicomWeb::new(
            &self.url(),
            auth,
            None,
            Limits {
                retries: 0,
                ..Limits::default()
            },
        )
        .unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.dir;
    }
}

/// One phantom as a DICOM file (8-bit grey CR, explicit VR little endian), with a
/// patient's name, id and birth date that must never leave the PACS through medret.
fn phantom_dicom(png: &Path, patient: usize, study: &str, series: &str, sop: &str) -> Vec<u8> {
    let img = image::open(png).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE),
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop)),
        DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(study),
        ),
        DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(series),
        ),
        DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from("20260315")),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("CR")),
        DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from(format!("Zed^Quinby{patient}")),
        ),
        DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from(format!("MRN77{patient:03}")),
        ),
        DataElement::new(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            PrimitiveValue::from("19610704"),
        ),
        DataElement::new(tags::VIEW_POSITION, VR::CS, PrimitiveValue::from("PA")),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(h as u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(w as u16)),
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
            PrimitiveValue::from(img.into_raw()),
        ),
    ]);
    let mut out = Vec::new();
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_all(&mut out)
        .unwrap();
    out
}

/// Recompresses a DICOM file with a dcmtk tool (`None`: kept as is).
fn transcode(dir: &Path, bytes: Vec<u8>, tool: Option<(&str, &[&str])>) -> Vec<u8> {
    let Some((cmd, opts)) = tool else {
        return bytes;
    };
    let (a, b) = (dir.join("in.dcm"), dir.join("out.dcm"));
    std::fs::write(&a, &bytes).unwrap();
    let mut args: Vec<&str> = opts.to_vec();
    args.extend([s(&a), s(&b)]);
    let o = Command::new(cmd).args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(&b).unwrap()
}

fn uid(parts: &[usize]) -> String {
    format!(
        "1.2.826.0.1.3680043.10.1174.{}",
        parts
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(".")
    )
}

/// `studies` studies of `per_study` instances each, numbered from `first_study`, in
/// rotating transfer syntaxes; returns the files and their SOP Instance UIDs.
fn studies(
    dir: &Path,
    pngs: &[PathBuf],
    first_study: usize,
    studies: usize,
    per_study: usize,
) -> Vec<(Vec<u8>, String, String)> {
    let syntaxes: [Option<(&str, &[&str])>; 4] = [
        None,
        Some(("dcmcrle", &[])),
        Some(("dcmcjpeg", &["+el"])),
        Some(("dcmcjpls", &[])),
    ];
    let mut out = Vec::new();
    for st in first_study..first_study + studies {
        for i in 0..per_study {
            let n = st * per_study + i;
            let (study, series, sop) = (uid(&[st]), uid(&[st, 1]), uid(&[st, 1, i + 1]));
            let file = phantom_dicom(&pngs[n % pngs.len()], st % 5, &study, &series, &sop);
            out.push((transcode(dir, file, syntaxes[n % 4]), study, sop));
        }
    }
    out
}

fn stow(client: &DicomWeb, files: &[(Vec<u8>, String, String)]) {
    let f: Vec<Vec<u8>> = files.iter().map(|(b, _, _)| b.clone()).collect();
    client.store(&f).unwrap();
}

fn sync_json(args: &[&str]) -> Value {
    let mut all = vec!["pacs", "sync", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

/// Every case of `model` in a SQLite store: key, vector and study metadata, by key.
fn archive_state(store: &Path, model: &str) -> Vec<(String, Vec<u8>, Value)> {
    let mut st = medret_store::SqliteStore::open(store).unwrap();
    let mut out: Vec<(String, Vec<u8>, Value)> = st
        .vectors(model)
        .unwrap()
        .into_iter()
        .map(|(id, v)| {
            let c = st.case(id).unwrap().unwrap();
            (c.key, v, c.study)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn post_search(base: &str, fields: &[(&str, &str)], image: Option<&[u8]>) -> (u16, Value) {
    let boundary = "medretpacstest";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .bytes(),
        );
    }
    if let Some(img) = image {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.dcm\"\r\nContent-Type: application/dicom\r\n\r\n").bytes());
        body.extend_from_slice(img);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut res = agent
        .post(&format!("{base}/api/v1/search"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&body[..])
        .unwrap();
    let status = res.status().as_u16();
    let v: Value =
        serde_json::from_slice(&res.body_mut().read_to_vec().unwrap()).unwrap_or(Value::Null);
    (status, v)
}

#[test]
fn an_archive_beside_orthanc() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let Some(mut orthanc) = Orthanc::start(&t.join("pacs")) else {
        return;
    };
    let pacs = orthanc.client(Some(PASSWORD));
    let auth = t.join("pacs.auth");
    std::fs::write(&auth, format!("{USER}:{PASSWORD}\n")).unwrap();
    let bad_auth = t.join("bad.auth");
    std::fs::write(&bad_auth, format!("{USER}:not-the-password\n")).unwrap();

    // A model trained on phantoms; the PACS holds other phantoms of the same kind.
    let data = t.join("cxr");
    common::synth("cxr", &data, 120, 64, 11);
    let model = t.join("model");
    common::train_hash(&data, &model, "1", &[]);
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(data.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pngs.sort();

    let work = t.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let first = studies(&work, &pngs, 0, 3, 4);
    stow(&pacs, &first);

    let store = t.join("pacs.db");
    let url = orthanc.url();
    let base = [
        "--url",
        &url,
        "--auth-file",
        s(&auth),
        "--store",
        s(&store),
        "--model",
        "cr",
    ];
    let mut with_model = base.to_vec();
    with_model.extend(["--model-dir", s(&model)]);
    let r = sync_json(&with_model);
    assert_eq!(
        (r["found"].as_u64(), r["new"].as_u64()),
        (Some(12), Some(12)),
        "{r}"
    );
    assert!(r["failed"].as_array().unwrap().is_empty(), "{r}");
    let state = archive_state(&store, "cr");
    let keys: Vec<&str> = state.iter().map(|c| c.0.as_str()).collect();
    let mut want: Vec<&str> = first.iter().map(|f| f.2.as_str()).collect();
    want.sort();
    assert_eq!(keys, want);
    for (key, _, study) in &state {
        assert_eq!(study["meta"]["sop_uid"], key.as_str());
        assert_eq!(study["meta"]["source"], "pacs");
        assert!(
            study["meta"]["study_uid"]
                .as_str()
                .unwrap()
                .starts_with("1.2.826.0.1.3680043.10.1174.")
        );
    }

    // Again: nothing new, nothing fetched twice.
    let r = sync_json(&base);
    assert_eq!(r["new"], 0, "{r}");
    assert_eq!(r["skipped"]["already in the archive"], 12, "{r}");
    assert_eq!(archive_state(&store, "cr"), state);

    // New studies, a broken instance (pixel data cut short) and a non-image: only the
    // new images are ingested; the broken one is reported, the rest go on.
    let second = studies(&work, &pngs, 3, 2, 3);
    stow(&pacs, &second);
    // Keep the file parseable: the pixel data element's length must match what is left.
    let mut obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(
            &phantom_dicom(&pngs[0], 9, &uid(&[90]), &uid(&[90, 1]), &uid(&[90, 1, 1]))[..],
        )
        .unwrap();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![7u8; 100]),
    ));
    let mut broken = Vec::new();
    obj.write_all(&mut broken).unwrap();
    pacs.store(&[broken]).unwrap();
    let r = sync_json(&base);
    assert_eq!(r["found"], 12 + 6 + 1, "{r}");
    assert_eq!(r["new"], 6, "{r}");
    assert_eq!(r["skipped"]["already in the archive"], 12, "{r}");
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert!(
        failed[0].as_str().unwrap().contains(&uid(&[90, 1, 1])),
        "{r}"
    );

    // Killed mid-sync, rerun until done: the archive equals an uninterrupted sync's.
    let third = studies(&work, &pngs, 5, 5, 6);
    stow(&pacs, &third);
    let mut cmd = vec!["pacs", "sync"];
    cmd.extend_from_slice(&base);
    // Each run is killed as soon as its first new image lands in the image folder.
    let images = PathBuf::from(format!("{}.images", s(&store)));
    let done_files = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut kills = 0;
    let mut partial_seen = false;
    for _ in 0..3 {
        let before = done_files(&images);
        let mut child = Command::new(env!("CARGO_BIN_EXE_medret"))
            .args(&cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if done_files(&images) > before || t0.elapsed() > Duration::from_secs(60) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if finished {
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        let n = archive_state(&store, "cr").len();
        partial_seen |= n > 12 + 6 && n < 12 + 6 + 30;
    }
    // The rerun finishes the job; one more finds nothing to do.
    let r = sync_json(&base);
    assert!(r["new"].as_u64().unwrap() > 0, "{r}");
    let r = sync_json(&base);
    assert_eq!(r["new"], 0, "{r}");
    assert!(
        kills >= 1 && partial_seen,
        "the sync was never interrupted halfway ({kills} kills)"
    );
    let interrupted = archive_state(&store, "cr");
    assert_eq!(interrupted.len(), 12 + 6 + 30);
    let fresh = t.join("fresh.db");
    let mut fresh_args = with_model.clone();
    let i = fresh_args.iter().position(|a| *a == s(&store)).unwrap();
    fresh_args[i] = s(&fresh);
    sync_json(&fresh_args);
    assert_eq!(
        archive_state(&fresh, "cr"),
        interrupted,
        "an interrupted sync built another archive"
    );
    ok(&["index", "check", "--store", s(&store)]);

    // Search by study UID through the server: the same hits as the instance uploaded.
    let query = &third[0];
    let log = t.join("serve.log");
    let srv = Server::start_logged(
        s(&store),
        &[
            "--pacs",
            &url,
            "--pacs-auth-file",
            s(&auth),
            "--viewer-url",
            "https://viewer.example/ohif?StudyInstanceUIDs={study}",
        ],
        &[],
        Some(&log),
    );
    let (st, by_uid) = post_search(
        &srv.base,
        &[
            ("model", "cr"),
            ("study_uid", &query.1),
            ("sop_uid", &query.2),
            ("k", "8"),
            ("explain", "false"),
        ],
        None,
    );
    assert_eq!(st, 200, "{by_uid}");
    let (st, by_image) = post_search(
        &srv.base,
        &[("model", "cr"), ("k", "8"), ("explain", "false")],
        Some(&query.0),
    );
    assert_eq!(st, 200, "{by_image}");
    let ranking = |v: &Value| -> Vec<(String, f64)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["case_id"].as_str().unwrap().to_string(),
                    r["distance"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(ranking(&by_uid), ranking(&by_image));
    assert_eq!(by_uid["query"]["sop_uid"], query.2.as_str());
    let first_hit = &by_uid["results"][0];
    let link = first_hit["viewer_url"].as_str().unwrap();
    assert!(
        link.starts_with(
            "https://viewer.example/ohif?StudyInstanceUIDs=1.2.826.0.1.3680043.10.1174."
        ),
        "{link}"
    );

    // The results as a key object in the query's study, read back from Orthanc.
    let (st, with_kos) = post_search(
        &srv.base,
        &[
            ("model", "cr"),
            ("study_uid", &query.1),
            ("sop_uid", &query.2),
            ("k", "5"),
            ("explain", "false"),
            ("export", "kos"),
        ],
        None,
    );
    assert_eq!(st, 200, "{with_kos}");
    let kos_uid = with_kos["kos"]["sop_uid"].as_str().unwrap().to_string();
    let in_study = pacs.find_instances(Some(&query.1), &[]).unwrap();
    let kos = in_study
        .iter()
        .find(|i| i.sop == kos_uid)
        .expect("the key object is in the query's study");
    assert_eq!(kos.modality, "KO");
    assert_eq!(kos.sop_class, uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE);
    let file = pacs.retrieve(kos).unwrap();
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(&file[..])
        .unwrap();
    let mut referenced = Vec::new();
    let mut remark = String::new();
    for item in obj
        .element(tags::CONTENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
    {
        match item
            .element(tags::VALUE_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
        {
            "IMAGE" => {
                let r = &item
                    .element(tags::REFERENCED_SOP_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap()[0];
                referenced.push(
                    r.element(tags::REFERENCED_SOP_INSTANCE_UID)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            "TEXT" => {
                remark = item
                    .element(tags::TEXT_VALUE)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            }
            _ => {}
        }
    }
    let mut want: Vec<String> = vec![query.2.clone()];
    want.extend(
        with_kos["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["case_id"].as_str().unwrap().to_string())
            .filter(|k| *k != query.2),
    );
    assert_eq!(referenced, want);
    assert!(remark.contains("not a diagnosis"), "{remark}");
    assert_eq!(
        obj.element(tags::PATIENT_ID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim(),
        "MRN77000"
    );

    // The CLI does the same.
    let out: Value = serde_json::from_str(&ok(&[
        "search",
        "--store",
        s(&store),
        "--model",
        "cr",
        "--pacs",
        &url,
        "--auth-file",
        s(&auth),
        "--study",
        &query.1,
        "--sop",
        &query.2,
        "-k",
        "5",
        "--kos",
        "--json",
    ]))
    .unwrap();
    assert_eq!(ranking(&out)[..], ranking(&with_kos)[..]);
    assert_eq!(out["kos"]["references"], want.len());

    // medret keeps no name, birth date or patient id from the PACS.
    let db = std::fs::read(&store).unwrap();
    for secret in ["Quinby", "19610704", "MRN77"] {
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the store"
        );
    }
    let served = std::fs::read_to_string(&log).unwrap();
    assert!(
        !served.contains(PASSWORD) && !served.contains("Quinby"),
        "{served}"
    );

    // Wrong credentials, then a stopped PACS: clear errors, the archive unchanged.
    let before = archive_state(&store, "cr");
    let mut wrong = base.to_vec();
    wrong[3] = s(&bad_auth);
    let e = fails(&[&["pacs", "sync"][..], &wrong].concat());
    assert!(
        e.contains("refused the credentials") && !e.contains("not-the-password"),
        "{e}"
    );
    orthanc.stop();
    let e = fails(&[&["pacs", "sync"][..], &base].concat());
    assert!(
        e.contains("cannot reach the PACS") && !e.contains(PASSWORD),
        "{e}"
    );
    assert_eq!(archive_state(&store, "cr"), before);
    let (st, v) = post_search(
        &srv.base,
        &[
            ("model", "cr"),
            ("study_uid", &query.1),
            ("explain", "false"),
        ],
        None,
    );
    assert_eq!(st, 504, "{v}");
    ok(&["index", "check", "--store", s(&store)]);
}
