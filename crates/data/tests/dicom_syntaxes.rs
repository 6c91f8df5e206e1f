//! Every transfer syntax and colour model a hospital sends, decoded by medret and compared
//! with an independent reference, never with medret itself.
//!
//! The originals are written by GDCM (`gdcmimg`) from pixel arrays generated here; the
//! compressed and converted variants are made by dcmtk (`dcmconv`, `dcmcrle`,
//! `dcmcjpeg`, `dcmcjpls`, `dcmdjpeg`, `dcmquant`, `dcmodify`) and GDCM (`gdcmconv`).
//! Lossless variants must give back the generated values exactly; lossy ones within a
//! bound; colour conversions are checked against the generated RGB and against dcmtk's
//! `dcm2pnm`. The tools come from Debian's `dcmtk` and `libgdcm-tools`; without them the
//! test says so and skips, unless `MEDRET_REQUIRE_DICOM_TOOLS` is set (`.ci/run` sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use medret_data::dicom::read_frame;

const W: usize = 64;
const H: usize = 48;

fn have_tools() -> bool {
    let tools = [
        "gdcmimg", "gdcmconv", "dcmconv", "dcmcrle", "dcmcjpeg", "dcmcjpls", "dcmdjpeg",
        "dcmquant", "dcmodify", "dcm2pnm",
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .map(|o| o.stdout.is_empty() && o.stderr.is_empty())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("MEDRET_REQUIRE_DICOM_TOOLS").is_none(),
        "MEDRET_REQUIRE_DICOM_TOOLS is set but these are missing: {missing:?}"
    );
    eprintln!(
        "dcmtk and libgdcm-tools are not installed (missing {missing:?}): the cross-toolkit DICOM test is skipped (.ci/run installs them)"
    );
    false
}

fn run(dir: &Path, cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `values` (little endian, `bytes` each) and makes a DICOM file of them with
/// gdcmimg; `extra` are gdcmimg options.
fn gdcm_original(dir: &Path, name: &str, raw: &[u8], extra: &[&str]) -> PathBuf {
    let raw_name = format!("{name}.raw");
    std::fs::write(dir.join(&raw_name), raw).unwrap();
    let out = format!("{name}.dcm");
    let mut args = vec!["-i", &raw_name, "-o", &out];
    args.extend_from_slice(extra);
    run(dir, "gdcmimg", &args);
    dir.join(out)
}

fn le16(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect()
}

fn le32(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
}

/// A grey phantom with edges and gradients, in `[0, levels)`.
fn grey(levels: i64, phase: i64) -> Vec<i64> {
    (0..H as i64)
        .flat_map(|y| {
            (0..W as i64).map(move |x| {
                let disc = (x - 32).pow(2) + (y - 24).pow(2) < 15 * 15;
                let v = (x * 37 + y * 53 + phase * 500) % levels;
                if disc {
                    (levels - 1 - v / 2).max(0)
                } else {
                    v / 3
                }
            })
        })
        .collect()
}

/// A smooth RGB image (8-bit, interleaved): lossy codecs are exercised on what they are
/// meant for, not on noise.
fn rgb() -> Vec<i64> {
    (0..H as i64)
        .flat_map(|y| {
            (0..W as i64)
                .flat_map(move |x| [(x * 4) % 256, (y * 5 + 20) % 256, ((x + y) * 2 + 30) % 256])
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Tol {
    Exact,
    MaxAbs(f64),
    /// Root-mean-square error as a fraction of the range of the true values.
    Rms(f64),
}

struct Case {
    name: String,
    file: PathBuf,
    frame: u32,
    samples: usize,
    truth: Vec<f64>,
    tol: Tol,
}

/// The errors of a decoded frame against its truth: (max abs, rms / range).
fn errors(got: &[f32], truth: &[f64]) -> (f64, f64) {
    let (lo, hi) = truth
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let range = (hi - lo).max(1.0);
    let mut max = 0f64;
    let mut sq = 0f64;
    for (&g, &t) in got.iter().zip(truth) {
        let e = if g.is_finite() {
            (f64::from(g) - t).abs()
        } else {
            f64::INFINITY
        };
        max = max.max(e);
        sq += e * e;
    }
    (max, (sq / truth.len() as f64).sqrt() / range)
}

/// dcm2pnm's rendering of `file` as 8-bit ASCII PGM or PPM: the reference decoder for
/// colour models and palettes. Returns values (interleaved for PPM) and samples per pixel.
fn dcm2pnm(dir: &Path, file: &Path, opts: &[&str]) -> (Vec<f64>, usize) {
    let out = dir.join("ref.pnm");
    let mut args: Vec<&str> = opts.to_vec();
    if !opts.contains(&"+opw") {
        args.push("+opb");
    }
    args.extend([file.to_str().unwrap(), out.to_str().unwrap()]);
    run(dir, "dcm2pnm", &args);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut tokens = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(str::to_string);
    let magic = tokens.next().unwrap();
    let samples = if magic == "P3" { 3 } else { 1 };
    let (w, h, _max): (usize, usize, usize) = (
        tokens.next().unwrap().parse().unwrap(),
        tokens.next().unwrap().parse().unwrap(),
        tokens.next().unwrap().parse().unwrap(),
    );
    let v: Vec<f64> = tokens.map(|t| t.parse().unwrap()).collect();
    assert_eq!(v.len(), w * h * samples, "dcm2pnm output size");
    (v, samples)
}

/// The samples of a native (uncompressed, little-endian) file a reference decoder wrote,
/// read straight from its bytes: 8-bit, or 16-bit unsigned.
fn native_values(file: &Path, bits: u16) -> Vec<f64> {
    let bytes = dicom_object::open_file(file)
        .unwrap()
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    match bits {
        8 => bytes.iter().map(|&b| f64::from(b)).collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_syntax_and_colour_model_matches_an_independent_decoder() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases: Vec<Case> = Vec::new();
    let f64s = |v: &[i64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let size = format!("{W},{H}");
    let variant = |src: &Path, out: &str, cmd: &str, opts: &[&str]| -> PathBuf {
        let o = d.join(out);
        let mut args: Vec<&str> = opts.to_vec();
        args.extend([s(src), s(&o)]);
        run(d, cmd, &args);
        o
    };

    // 16-bit container, 12 bits stored, unsigned: every lossless syntax gives it back.
    let g12 = grey(4096, 0);
    let m16 = gdcm_original(
        d,
        "m16",
        &le16(&g12),
        &[
            "--size", &size, "--depth", "16", "--pf", "16,12,11", "--sign", "0",
        ],
    );
    let t12 = f64s(&g12);
    let mut mono = |name: &str, file: PathBuf, tol: Tol| {
        cases.push(Case {
            name: name.into(),
            file,
            frame: 0,
            samples: 1,
            truth: t12.clone(),
            tol,
        });
    };
    mono("explicit VR LE (gdcmimg)", m16.clone(), Tol::Exact);
    mono(
        "implicit VR LE",
        variant(&m16, "m16_ile.dcm", "dcmconv", &["+ti"]),
        Tol::Exact,
    );
    mono(
        "explicit VR BE",
        variant(&m16, "m16_be.dcm", "dcmconv", &["+tb"]),
        Tol::Exact,
    );
    mono(
        "deflated",
        variant(&m16, "m16_deflate.dcm", "dcmconv", &["+td"]),
        Tol::Exact,
    );
    mono(
        "no File Meta header (implicit LE)",
        variant(&m16, "m16_nometa.dcm", "dcmconv", &["-F", "+ti"]),
        Tol::Exact,
    );
    mono(
        "RLE Lossless",
        variant(&m16, "m16_rle.dcm", "dcmcrle", &[]),
        Tol::Exact,
    );
    mono(
        "JPEG Lossless process 14 (SV6)",
        variant(&m16, "m16_jpll.dcm", "dcmcjpeg", &["+el"]),
        Tol::Exact,
    );
    mono(
        "JPEG Lossless SV1",
        variant(&m16, "m16_jpsv1.dcm", "dcmcjpeg", &["+e1"]),
        Tol::Exact,
    );
    let jpext = variant(&m16, "m16_jpext.dcm", "dcmcjpeg", &["+ee"]);
    mono(
        "JPEG Extended 12-bit (q 90), against the original",
        jpext.clone(),
        Tol::Rms(0.005),
    );
    mono(
        "JPEG-LS Lossless",
        variant(&m16, "m16_jls.dcm", "dcmcjpls", &[]),
        Tol::Exact,
    );
    let jlsnear = variant(&m16, "m16_jlsnear.dcm", "dcmcjpls", &["+en"]);
    mono(
        "JPEG-LS Near-Lossless (NEAR 2), against the original",
        jlsnear.clone(),
        Tol::MaxAbs(2.0),
    );
    mono(
        "JPEG 2000 Lossless",
        variant(&m16, "m16_j2k.dcm", "gdcmconv", &["-K"]),
        Tol::Exact,
    );
    let j2klossy = variant(
        &m16,
        "m16_j2klossy.dcm",
        "gdcmconv",
        &["-K", "-Y", "-q", "80"],
    );
    mono(
        "JPEG 2000 (lossy), against the original",
        j2klossy.clone(),
        Tol::Rms(0.01),
    );
    // Lossy streams, also against the toolkits' own decoders of the same stream.
    for (name, file, tool, opts, tol) in [
        (
            "JPEG Extended 12-bit, against dcmdjpeg",
            &jpext,
            "dcmdjpeg",
            &[][..],
            Tol::MaxAbs(1.0),
        ),
        (
            "JPEG-LS Near-Lossless, against dcmdjpls",
            &jlsnear,
            "dcmdjpls",
            &[][..],
            Tol::Exact,
        ),
        (
            "JPEG 2000 (lossy), against gdcmconv",
            &j2klossy,
            "gdcmconv",
            &["-w"][..],
            Tol::MaxAbs(1.0),
        ),
    ] {
        let reference = variant(file, &format!("ref_{tool}_{}.dcm", cases.len()), tool, opts);
        cases.push(Case {
            name: name.into(),
            file: file.clone(),
            frame: 0,
            samples: 1,
            truth: native_values(&reference, 16),
            tol,
        });
    }

    // 8-bit grey: JPEG Baseline.
    let g8 = grey(256, 1);
    let m8 = gdcm_original(
        d,
        "m8",
        &g8.iter().map(|&x| x as u8).collect::<Vec<_>>(),
        &["--size", &size, "--depth", "8"],
    );
    let m8jpb = variant(&m8, "m8_jpb.dcm", "dcmcjpeg", &["+eb"]);
    let m8ref = variant(&m8jpb, "m8_jpb_ref.dcm", "dcmdjpeg", &[]);
    cases.push(Case {
        name: "JPEG Baseline 8-bit grey (q 90), against the original".into(),
        file: m8jpb.clone(),
        frame: 0,
        samples: 1,
        truth: f64s(&g8),
        tol: Tol::Rms(0.02),
    });
    cases.push(Case {
        name: "JPEG Baseline 8-bit grey, against dcmdjpeg".into(),
        file: m8jpb,
        frame: 0,
        samples: 1,
        truth: native_values(&m8ref, 8),
        tol: Tol::MaxAbs(1.0),
    });

    // Signed 16-bit, MONOCHROME1, with a modality rescale: the raw export is the rescaled
    // value, whatever the syntax.
    let signed: Vec<i64> = grey(4096, 2).iter().map(|&x| x - 2048).collect();
    let s16 = gdcm_original(
        d,
        "s16",
        &le16(&signed),
        &[
            "--size",
            &size,
            "--depth",
            "16",
            "--sign",
            "1",
            "--pi",
            "MONOCHROME1",
        ],
    );
    run(
        d,
        "dcmodify",
        &[
            "-nb",
            "-i",
            "(0028,1052)=-1024",
            "-i",
            "(0028,1053)=0.5",
            "-i",
            "(0028,1054)=HU",
            s(&s16),
        ],
    );
    let rescaled: Vec<f64> = signed.iter().map(|&x| x as f64 * 0.5 - 1024.0).collect();
    for (name, file) in [
        ("signed MONOCHROME1 rescaled, explicit LE", s16.clone()),
        (
            "signed, explicit VR BE",
            variant(&s16, "s16_be.dcm", "dcmconv", &["+tb"]),
        ),
        ("signed, RLE", variant(&s16, "s16_rle.dcm", "dcmcrle", &[])),
        (
            "signed, JPEG Lossless",
            variant(&s16, "s16_jpll.dcm", "dcmcjpeg", &["+el"]),
        ),
        (
            "signed, JPEG 2000 Lossless",
            variant(&s16, "s16_j2k.dcm", "gdcmconv", &["-K"]),
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            file,
            frame: 0,
            samples: 1,
            truth: rescaled.clone(),
            tol: Tol::Exact,
        });
    }

    // 32-bit pixels, unsigned and signed (values beyond 16 bits, within f32's exact range).
    let big: Vec<i64> = g12.iter().map(|&x| x * 1000 + 7).collect();
    let m32 = gdcm_original(d, "m32", &le32(&big), &["--size", &size, "--depth", "32"]);
    let neg: Vec<i64> = big.iter().map(|&x| x - 2_000_000).collect();
    let s32 = gdcm_original(
        d,
        "s32",
        &le32(&neg),
        &["--size", &size, "--depth", "32", "--sign", "1"],
    );
    for (name, file, truth) in [
        ("32-bit unsigned, explicit LE", m32.clone(), f64s(&big)),
        (
            "32-bit unsigned, explicit VR BE",
            variant(&m32, "m32_be.dcm", "dcmconv", &["+tb"]),
            f64s(&big),
        ),
        ("32-bit signed, explicit LE", s32.clone(), f64s(&neg)),
        (
            "32-bit unsigned, RLE (four segments a sample)",
            variant(&m32, "m32_rle.dcm", "dcmcrle", &[]),
            f64s(&big),
        ),
        (
            "32-bit signed, RLE",
            variant(&s32, "s32_rle.dcm", "dcmcrle", &[]),
            f64s(&neg),
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            file,
            frame: 0,
            samples: 1,
            truth,
            tol: Tol::Exact,
        });
    }

    // 1-bit pixels: an 8-bit file turned into a packed one (LSB first, PS3.5 8.1.1).
    let bits: Vec<i64> = g8.iter().map(|&x| i64::from(x > 100)).collect();
    let packed: Vec<u8> = bits
        .chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &v)| b | ((v as u8) << i))
        })
        .collect();
    std::fs::write(d.join("m1.raw"), &packed).unwrap();
    let m1 = variant(&m8, "m1.dcm", "dcmconv", &[]);
    run(
        d,
        "dcmodify",
        &[
            "-nb",
            "-m",
            "(0028,0100)=1",
            "-m",
            "(0028,0101)=1",
            "-m",
            "(0028,0102)=0",
            "-mf",
            "(7fe0,0010)=m1.raw",
            s(&m1),
        ],
    );
    cases.push(Case {
        name: "1-bit".into(),
        file: m1.clone(),
        frame: 0,
        samples: 1,
        truth: f64s(&bits),
        tol: Tol::Exact,
    });
    // dcm2pnm agrees that these are the bits (dark 0, bright 1 under a min-max window).
    let (ref1, _) = dcm2pnm(d, &m1, &["+Wm"]);
    assert_eq!(
        ref1.iter()
            .map(|&x| i64::from(x > 127.0))
            .collect::<Vec<_>>(),
        bits,
        "dcm2pnm reads the 1-bit fixture differently"
    );

    // Multi-frame: three frames, each compared, in native and compressed syntaxes.
    let frames: Vec<Vec<i64>> = (0..3).map(|f| grey(4096, 3 + f)).collect();
    let mf = gdcm_original(
        d,
        "mf",
        &le16(&frames.concat()),
        &[
            "--size",
            &format!("{W},{H},3"),
            "--depth",
            "16",
            "--pf",
            "16,12,11",
        ],
    );
    for (name, file) in [
        ("3 frames, explicit LE", mf.clone()),
        (
            "3 frames, explicit VR BE",
            variant(&mf, "mf_be.dcm", "dcmconv", &["+tb"]),
        ),
        ("3 frames, RLE", variant(&mf, "mf_rle.dcm", "dcmcrle", &[])),
        (
            "3 frames, JPEG Lossless",
            variant(&mf, "mf_jpll.dcm", "dcmcjpeg", &["+el"]),
        ),
        (
            "3 frames, JPEG-LS",
            variant(&mf, "mf_jls.dcm", "dcmcjpls", &[]),
        ),
        (
            "3 frames, JPEG 2000 Lossless",
            variant(&mf, "mf_j2k.dcm", "gdcmconv", &["-K"]),
        ),
    ] {
        for (f, truth) in frames.iter().enumerate() {
            cases.push(Case {
                name: format!("{name}, frame {}", f + 1),
                file: file.clone(),
                frame: f as u32,
                samples: 1,
                truth: f64s(truth),
                tol: Tol::Exact,
            });
        }
    }

    // Colour: RGB interleaved and planar, YBR_FULL, YBR_FULL_422, YBR_RCT and YBR_ICT,
    // palette colour, through the syntaxes that carry them.
    let c = rgb();
    let rgb_bytes: Vec<u8> = c.iter().map(|&x| x as u8).collect();
    let rgb_opts = [
        "--size",
        size.as_str(),
        "--depth",
        "8",
        "--spp",
        "3",
        "--pi",
        "RGB",
    ];
    let rgb0 = gdcm_original(d, "rgb", &rgb_bytes, &rgb_opts);
    let planar: Vec<u8> = (0..3)
        .flat_map(|k| {
            rgb_bytes
                .iter()
                .skip(k)
                .step_by(3)
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let mut planar_opts = rgb_opts.to_vec();
    planar_opts.extend(["--pc", "1"]);
    let rgb1 = gdcm_original(d, "rgb_pc1", &planar, &planar_opts);
    let ybr = variant(&rgb0, "rgb_ybr.dcm", "gdcmconv", &["-P", "YBR_FULL"]);
    let j2k = variant(&rgb0, "rgb_j2k.dcm", "gdcmconv", &["-K"]);
    let rct = variant(&j2k, "rgb_rct.dcm", "dcmconv", &[]);
    run(
        d,
        "dcmodify",
        &["-nb", "-m", "(0028,0004)=YBR_RCT", s(&rct)],
    );
    let j2k_lossy = variant(
        &rgb0,
        "rgb_j2klossy.dcm",
        "gdcmconv",
        &["-K", "-Y", "-q", "80"],
    );
    let ict = variant(&j2k_lossy, "rgb_ict.dcm", "dcmconv", &[]);
    run(
        d,
        "dcmodify",
        &["-nb", "-m", "(0028,0004)=YBR_ICT", s(&ict)],
    );
    let truth = f64s(&c);
    for (name, file, tol) in [
        ("RGB, planar configuration 0", rgb0.clone(), Tol::Exact),
        ("RGB, planar configuration 1", rgb1, Tol::Exact),
        (
            "RGB, RLE",
            variant(&rgb0, "rgb_rle.dcm", "dcmcrle", &[]),
            Tol::Exact,
        ),
        (
            "RGB, JPEG Lossless",
            variant(&rgb0, "rgb_jpll.dcm", "dcmcjpeg", &["+el"]),
            Tol::Exact,
        ),
        (
            "RGB, JPEG-LS Lossless",
            variant(&rgb0, "rgb_jls.dcm", "dcmcjpls", &[]),
            Tol::Exact,
        ),
        ("RGB, JPEG 2000 Lossless", j2k, Tol::Exact),
        ("YBR_RCT, JPEG 2000 Lossless", rct, Tol::Exact),
        ("YBR_ICT, JPEG 2000", ict, Tol::Rms(0.01)),
        // GDCM's conversion rounds; the equations give the RGB back within one level.
        (
            "YBR_FULL (gdcmconv), explicit LE",
            ybr.clone(),
            Tol::MaxAbs(1.0),
        ),
        (
            "YBR_FULL, RLE",
            variant(&ybr, "ybr_rle.dcm", "dcmcrle", &[]),
            Tol::MaxAbs(1.0),
        ),
        (
            "YBR_FULL_422, JPEG Baseline (q 90)",
            variant(&rgb0, "rgb_jpb.dcm", "dcmcjpeg", &["+eb"]),
            Tol::Rms(0.01),
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            file,
            frame: 0,
            samples: 3,
            truth: truth.clone(),
            tol,
        });
    }
    // The JPEG Baseline file's YCbCr, decompressed by dcmtk without colour conversion
    // (YBR_FULL, native), and the same chroma written as native YBR_FULL_422: both
    // against dcm2pnm's RGB of the same file.
    let jpb = d.join("rgb_jpb.dcm");
    let ybr_native = variant(&jpb, "ybr_native.dcm", "dcmdjpeg", &["+cn"]);
    let (ref_ybr, _) = dcm2pnm(d, &ybr_native, &[]);
    cases.push(Case {
        name: "YBR_FULL from dcmdjpeg, against dcm2pnm".into(),
        file: ybr_native.clone(),
        frame: 0,
        samples: 3,
        truth: ref_ybr,
        // dcmtk's fixed-point conversion differs from the equations by up to two levels.
        tol: Tol::MaxAbs(2.0),
    });
    // dcmdjpeg's YCbCr samples (chroma already shared by each pair of pixels), taken
    // two luma and one chroma pair at a time.
    let px = dicom_object::open_file(&ybr_native)
        .unwrap()
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    {
        let mut sub = Vec::with_capacity(W * H * 2);
        for row in px.chunks_exact(W * 3) {
            for pair in row.chunks_exact(6) {
                sub.extend_from_slice(&[pair[0], pair[3], pair[1], pair[2]]);
            }
        }
        let f422 = gdcm_original(
            d,
            "ybr422",
            &sub,
            &[
                "--size",
                &size,
                "--depth",
                "8",
                "--spp",
                "3",
                "--pi",
                "YBR_FULL_422",
            ],
        );
        let (ref422, _) = dcm2pnm(d, &f422, &[]);
        cases.push(Case {
            name: "YBR_FULL_422 native, against dcm2pnm".into(),
            file: f422,
            frame: 0,
            samples: 3,
            truth: ref422,
            tol: Tol::MaxAbs(2.0),
        });
    }
    // The lossy colour streams against the toolkits' decoders (which convert to RGB).
    let ict_ref = variant(
        &d.join("rgb_ict.dcm"),
        "rgb_ict_ref.dcm",
        "gdcmconv",
        &["-w"],
    );
    let jpb_ref = native_values(&variant(&jpb, "rgb_jpb_ref.dcm", "dcmdjpeg", &[]), 8);
    for (name, file, truth) in [
        (
            "YBR_ICT, JPEG 2000, against gdcmconv",
            d.join("rgb_ict.dcm"),
            native_values(&ict_ref, 8),
        ),
        (
            "YBR_FULL_422, JPEG Baseline, against dcmdjpeg",
            jpb.clone(),
            jpb_ref,
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            file,
            frame: 0,
            samples: 3,
            truth,
            // dcmtk's fixed-point YCbCr conversion and IDCT differ from the standard's
            // equations by up to two levels.
            tol: Tol::MaxAbs(2.0),
        });
    }
    let palette = variant(&rgb0, "palette.dcm", "dcmquant", &[]);
    let (ref_pal, _) = dcm2pnm(d, &palette, &[]);
    cases.push(Case {
        name: "PALETTE COLOR (dcmquant), against dcm2pnm".into(),
        file: palette,
        frame: 0,
        samples: 3,
        truth: ref_pal,
        tol: Tol::Exact,
    });

    let mut failures = Vec::new();
    println!(
        "{:<48} {:>10} {:>10}  tolerance",
        "case", "max |err|", "rms/range"
    );
    for case in &cases {
        match read_frame(&case.file, case.frame) {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(f) if f.samples != case.samples || f.rows != H || f.cols != W => {
                failures.push(format!(
                    "{}: {}x{}x{} instead of {W}x{H}x{}",
                    case.name, f.cols, f.rows, f.samples, case.samples
                ))
            }
            Ok(f) => {
                let (max, rms) = errors(&f.data, &case.truth);
                println!("{:<48} {max:>10.3} {rms:>10.5}  {:?}", case.name, case.tol);
                let ok = match case.tol {
                    Tol::Exact => max == 0.0,
                    Tol::MaxAbs(t) => max <= t,
                    Tol::Rms(t) => rms <= t,
                };
                if !ok {
                    failures.push(format!(
                        "{}: max error {max}, rms/range {rms:.5} beyond {:?}",
                        case.name, case.tol
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The display pipeline (modality rescale, VOI window with each VOI LUT function, min-max
/// without one, MONOCHROME1 inversion) against dcm2pnm's rendering of the same files.
#[test]
fn the_display_pipeline_matches_dcm2pnm() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let size = format!("{W},{H}");
    let g12 = grey(4096, 5);
    let signed: Vec<i64> = g12.iter().map(|&x| x - 2048).collect();
    let mut failures = Vec::new();
    let cases: [(&str, &str, &[&str], &[&str]); 5] = [
        (
            "MONOCHROME2, window",
            "MONOCHROME2",
            &["(0028,1050)=1800", "(0028,1051)=1500"],
            &["+Wi", "1"],
        ),
        (
            "MONOCHROME2, rescale and window in modality units",
            "MONOCHROME2",
            &[
                "(0028,1052)=-1024",
                "(0028,1053)=2",
                "(0028,1050)=400",
                "(0028,1051)=2000",
            ],
            &["+Wi", "1"],
        ),
        (
            "MONOCHROME1, window",
            "MONOCHROME1",
            &["(0028,1050)=100", "(0028,1051)=3000"],
            &["+Wi", "1"],
        ),
        (
            "MONOCHROME2, SIGMOID window",
            "MONOCHROME2",
            &["(0028,1050)=0", "(0028,1051)=2000", "(0028,1056)=SIGMOID"],
            &["+Wi", "1"],
        ),
        (
            "MONOCHROME1, no window (min-max)",
            "MONOCHROME1",
            &[],
            &["+Wm"],
        ),
    ];
    for (i, (name, pi, tags, opts)) in cases.iter().enumerate() {
        let f = gdcm_original(
            d,
            &format!("disp{i}"),
            &le16(&signed),
            &["--size", &size, "--depth", "16", "--sign", "1", "--pi", pi],
        );
        if !tags.is_empty() {
            let mut args = vec!["-nb"];
            for t in *tags {
                args.extend(["-i", t]);
            }
            args.push(s(&f));
            run(d, "dcmodify", &args);
        }
        let mut opts = opts.to_vec();
        opts.push("+opw");
        let (reference, _) = dcm2pnm(d, &f, &opts);
        let ours = read_frame(&f, 0).unwrap().display();
        let got: Vec<f32> = ours.data.iter().map(|&x| x * 65535.0).collect();
        let (max, _) = errors(&got, &reference);
        println!("{name:<52} max |err| {max:>8.1} of 65535");
        // dcmtk rounds its output to 16 bits; nothing more may differ.
        if max > 2.0 {
            failures.push(format!("{name}: {max}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// A pixel stream cut short, in a native and in compressed syntaxes, is an error that
/// names the file, the transfer syntax and what is wrong, never a panic or a partly grey
/// image; so is a deflated data set that would inflate beyond the cap.
/// A 4096 x 4096 radiograph that is mostly collimator border compresses far better than
/// 32:1 under RLE; the `dicom` crates' adapter refuses such frames of 16 MiB or more, so
/// medret decodes RLE itself. dcmtk encodes it; the values must come back exactly.
#[test]
fn a_large_highly_compressed_rle_frame_decodes_exactly() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let n = 4096usize;
    // An 8-bit exposed field of 256 x 256 in a zero border (one segment: dcmtk encodes
    // each row on its own, so a 16-bit frame cannot reach the adapter's limit).
    let values: Vec<i64> = (0..n * n)
        .map(|i| {
            let (y, x) = ((i / n) as i64, (i % n) as i64);
            if (1920..2176).contains(&y) && (1920..2176).contains(&x) {
                (x * 37 + y * 53) % 256
            } else {
                0
            }
        })
        .collect();
    let size = format!("{n},{n}");
    let original = gdcm_original(
        d,
        "big",
        &values.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
        &["--size", &size, "--depth", "8"],
    );
    let rle = d.join("big_rle.dcm");
    run(d, "dcmcrle", &[s(&original), s(&rle)]);
    // The adapter's test: the whole fragment against a 32nd of one segment's n² bytes.
    let ratio = (n * n) as f64 / std::fs::metadata(&rle).unwrap().len() as f64;
    assert!(
        ratio > 32.0,
        "the fixture compresses only {ratio:.1}:1 a segment"
    );
    let f = read_frame(&rle, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((f.rows, f.cols, f.samples), (n, n, 1));
    let wrong = f
        .data
        .iter()
        .zip(&values)
        .filter(|&(&g, &t)| f64::from(g) != t as f64)
        .count();
    assert_eq!(wrong, 0, "{wrong} of {} pixels differ", n * n);
}

#[test]
fn truncated_and_oversized_pixel_data_are_clear_errors() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let size = format!("{W},{H}");
    let m16 = gdcm_original(
        d,
        "m16",
        &le16(&grey(4096, 0)),
        &["--size", &size, "--depth", "16", "--pf", "16,12,11"],
    );
    let mut files = vec![("Explicit VR Little Endian", m16.clone())];
    for (syntax, tool, opts) in [
        ("RLE Lossless", "dcmcrle", &[][..]),
        ("JPEG Lossless", "dcmcjpeg", &["+el"][..]),
        ("JPEG Baseline", "dcmcjpeg", &["+eb", "+be"][..]),
        ("JPEG Extended", "dcmcjpeg", &["+ee"][..]),
        ("JPEG-LS Lossless", "dcmcjpls", &[][..]),
        ("JPEG 2000 Lossless", "gdcmconv", &["-K"][..]),
    ] {
        let out = d.join(format!("{tool}{}.dcm", files.len()));
        let mut args = opts.to_vec();
        args.extend([s(&m16), s(&out)]);
        run(d, tool, &args);
        files.push((syntax, out));
    }
    for (syntax, file) in files {
        // Cut the pixel data (or its only fragment) to a third, as a broken transfer
        // would, and write the file back with a consistent structure.
        let mut obj = dicom_object::open_file(&file).unwrap();
        let el = obj
            .element(dicom_dictionary_std::tags::PIXEL_DATA)
            .unwrap()
            .clone();
        let value = match el.value() {
            dicom_core::value::Value::PixelSequence(seq) => {
                let f = &seq.fragments()[0];
                dicom_core::value::Value::PixelSequence(
                    dicom_core::value::PixelFragmentSequence::new(
                        vec![],
                        vec![f[..(f.len() / 3) & !1].to_vec()],
                    ),
                )
            }
            other => {
                let b = other.to_bytes().unwrap();
                dicom_core::value::Value::Primitive(dicom_core::PrimitiveValue::U8(
                    b[..b.len() / 3].to_vec().into(),
                ))
            }
        };
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::PIXEL_DATA,
            dicom_core::VR::OB,
            value,
        ));
        let cut = d.join(format!(
            "cut-{}",
            file.file_name().unwrap().to_string_lossy()
        ));
        obj.write_to_file(&cut).unwrap();
        let e = match read_frame(&cut, 0) {
            Ok(f) => panic!(
                "{syntax}: a truncated stream decoded to {}x{}",
                f.cols, f.rows
            ),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&*cut.to_string_lossy()) && e.contains(syntax),
            "{syntax}: {e}"
        );
        println!("{syntax}: {e}");
    }

    // A deflated data set of a few hundred kilobytes that inflates to 600 MiB.
    let mut meta = Vec::new();
    dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax(dicom_dictionary_std::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
        .media_storage_sop_instance_uid("2.25.1")
        .build()
        .unwrap()
        .write(&mut meta)
        .unwrap();
    let mut body = Vec::new();
    {
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(&mut body, flate2::Compression::best());
        let len: u32 = 600 << 20;
        z.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0])
            .unwrap();
        z.write_all(&len.to_le_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..600 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    file.extend_from_slice(&meta);
    file.extend_from_slice(&body);
    let bomb = d.join("bomb.dcm");
    std::fs::write(&bomb, &file).unwrap();
    assert!(file.len() < 2 << 20, "{} bytes", file.len());
    let e = medret_data::dicom::read_dicom_record(&bomb)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bomb.dcm") && e.contains("inflates to more than"),
        "{e}"
    );
}
