//! Replays the committed corpora of the `model_card`, `fields` and `form` fuzz targets
//! (`fuzz/corpus/<target>`, and `fuzz/regressions/<target>` when it exists) through their
//! bodies in `medret_server::fuzzing`, on stable and without libFuzzer: none may panic.
//!
//! `cargo test -p medret-server --test fuzz_corpus -- --ignored write_seeds` rewrites the
//! hand-made seeds (`seed-*`) from which the corpora grew.

use std::path::Path;

use medret_server::fuzzing;

use medret_data::fuzzing::{fuzz_dir, replay};

#[test]
fn model_card_corpus() {
    replay("model_card", fuzzing::model_card);
}

#[test]
fn fields_corpus() {
    replay("fields", fuzzing::fields);
}

#[test]
fn form_corpus() {
    replay("form", fuzzing::form);
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("corpus").join(target).join(name))
        .unwrap_or_else(|e| panic!("{target}/{name}: {e}"))
}

/// The seeds reach the deep paths: the cards are accepted (checksum included), so that
/// the fuzzer starts from valid cards.
#[test]
fn seeds_are_valid() {
    for name in ["seed-fusion-hash.json", "seed-fundus-metric.json"] {
        let text = String::from_utf8(seed("model_card", name)).unwrap();
        medret_models::model_card::ModelCard::parse(Path::new(name), &text, true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let region = String::from_utf8(seed("fields", "seed-region")).unwrap();
    medret_search::query::Region::parse(&region).unwrap();
    let code = String::from_utf8(seed("fields", "seed-code-48")).unwrap();
    assert_eq!(
        medret_search::query::parse_hex_code(&code, 6)
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        fuzzing::form_outcome(&seed("form", "seed-search")),
        Some((true, true, 1))
    );
    // The ingest seed names an eye and a grade of 1 but no radius: both forms accept it.
    assert_eq!(
        fuzzing::form_outcome(&seed("form", "seed-ingest")),
        Some((true, true, 1))
    );
    // A broken boundary is not a form.
    assert_eq!(fuzzing::form_outcome(b"--other\r\n"), None);
}

mod seeds {
    use std::path::Path;

    use medret_data::transform::{Normalize, TransformConfig};
    use medret_models::arch::Arch;
    use medret_models::cxr_hash::FusionHashConfig;
    use medret_models::fundus_metric::{Attention, FundusMetricConfig};
    use medret_models::model_card::{Method, ModelCard, Output};
    use medret_server::fuzzing::FORM_BOUNDARY;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn card(method: Method, output: Output, classes: Vec<String>, size: usize) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), b"weights").unwrap();
        ModelCard::new(
            method,
            output,
            classes,
            TransformConfig {
                size,
                normalize: Some(Normalize::imagenet()),
                ..TransformConfig::default()
            },
            serde_json::json!({"epochs": 12, "lr": 0.001}),
            "fingerprint".into(),
            7,
        )
        .write(tmp.path())
        .unwrap();
        std::fs::read(tmp.path().join("model.json")).unwrap()
    }

    fn part(name: &str, value: &str) -> String {
        format!(
            "--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
    }

    fn form(fields: &[(&str, &str)], image: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = fields
            .iter()
            .flat_map(|(k, v)| part(k, v).into_bytes())
            .collect();
        out.extend(
            format!(
                "--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        out.extend(image);
        out.extend(format!("\r\n--{FORM_BOUNDARY}--\r\n").bytes());
        out
    }

    #[test]
    #[ignore = "rewrites fuzz/corpus/{model_card,fields,form}/seed-*"]
    fn write_seeds() {
        let corpus = super::fuzz_dir().join("corpus");
        let cards = corpus.join("model_card");
        let hash = FusionHashConfig::new(Arch::DenseNetTiny, 1, 3, 48);
        write(
            &cards,
            "seed-fusion-hash.json",
            &card(
                Method::CxrFusionHash(hash),
                Output::Codes { bits: 48 },
                vec!["Normal".into(), "Effusion".into(), "Nodule".into()],
                64,
            ),
        );
        let mut fundus = FundusMetricConfig::new(Arch::DenseNetTiny, Attention::Mirror);
        fundus.classes = Some(5);
        fundus.binary_bits = Some(64);
        let dim = fundus.descriptor_dim();
        write(
            &cards,
            "seed-fundus-metric.json",
            &card(
                Method::FundusMetric(fundus),
                Output::Descriptors { dim },
                (0..5).map(|g| format!("grade {g}")).collect(),
                32,
            ),
        );

        let fields = corpus.join("fields");
        write(&fields, "seed-region", b"0.1,0.2,0.5,0.6");
        write(&fields, "seed-code-48", b"0x00ff10a0c3e7");
        write(&fields, "seed-opaque", b"c00112233445566778899aabbccddeeff");

        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::new_luma8(12, 10)
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let png = png.into_inner();
        let forms = corpus.join("form");
        write(
            &forms,
            "seed-search",
            &form(
                &[
                    ("model", "chest"),
                    ("k", "10"),
                    ("radius", "3"),
                    ("offset", "0"),
                    ("explain", "false"),
                    ("region", "0.1,0.1,0.5,0.5"),
                    ("label", "Effusion"),
                    ("grade", "2"),
                ],
                &png,
            ),
        );
        write(
            &forms,
            "seed-ingest",
            &form(
                &[
                    ("model", "chest"),
                    ("case_id", "c1"),
                    ("labels", "Effusion|Nodule"),
                    ("grade", "1"),
                    ("view", "PA"),
                    ("eye", "left"),
                    ("split", "train"),
                    ("patient_id", "p1"),
                ],
                &png,
            ),
        );
    }
}
