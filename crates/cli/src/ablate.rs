//! `medret ablate`: every variant of a method's switches, trained and evaluated per seed
//! (and code length), then one table (mean ± sd over seeds, and the paired bootstrap
//! interval of each variant's difference to the full method) as markdown, JSON and HTML.
//!
//! Each run is a folder under `OUT/runs/`, named by variant, code length and seed, with
//! the settings that determine it (the training and evaluation arguments, the dataset,
//! `--quick`, the C2L backbone's fingerprint) recorded in its `settings.json`. A run
//! whose settings equal the requested ones and whose `eval/report.json` exists is done and
//! is not redone; one with checkpoints and no model resumes from them, so an interrupted
//! ablation continues where it stopped. A run folder recorded with other settings (a
//! `--quick` run, other epochs or size, another dataset), or with none, is not reused:
//! the log says so, the folder is cleared and the run trained afresh. `OUT/c2l` is
//! treated the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use medret_eval::ablation::{RunResult, html, markdown, table};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum AblateMethod {
    /// The chest method: global only, local only, fusion, without quantization, without
    /// bit balance, C2L init; per code length.
    Cxr,
    /// The fundus method: backbone + triplet, + mirror attention, + fine triplet, both.
    Fundus,
}

#[derive(Args)]
pub struct AblateArgs {
    #[arg(long, value_enum)]
    method: AblateMethod,
    /// Dataset folder or file (its training split trains, its test split is scored
    /// against the training split).
    #[arg(long)]
    data: PathBuf,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Code lengths (chest only).
    #[arg(long, value_delimiter = ',', default_value = "16,32,48,64")]
    bits: Vec<usize>,
    /// Backbone of every variant.
    #[arg(long, default_value = "densenet-tiny")]
    arch: String,
    /// Input side in pixels.
    #[arg(long, default_value_t = 96)]
    size: usize,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// C2L backbone for the chest `c2l-init` variant; without it, C2L is pretrained once
    /// on the data (labels unused) into OUT/c2l.
    #[arg(long)]
    c2l: Option<PathBuf>,
    /// C2L pretraining epochs when --c2l is not given.
    #[arg(long, default_value_t = 20)]
    pretrain_epochs: usize,
    /// A smoke run: 1 seed, 16 bits, 2 epochs, 1 pretraining epoch, at 48 px.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    out: PathBuf,
}

struct Variant {
    name: &'static str,
    flags: Vec<String>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn variants(method: AblateMethod, c2l: Option<&Path>) -> Vec<Variant> {
    match method {
        AblateMethod::Cxr => {
            let mut v = vec![
                Variant {
                    name: "fusion (full)",
                    flags: vec![],
                },
                Variant {
                    name: "global only",
                    flags: s(&["--branches", "global"]),
                },
                Variant {
                    name: "local only",
                    flags: s(&["--branches", "local"]),
                },
                Variant {
                    name: "no quantization",
                    flags: s(&["--alpha", "0"]),
                },
                Variant {
                    name: "no bit balance",
                    flags: s(&["--beta", "0"]),
                },
            ];
            if let Some(p) = c2l {
                v.push(Variant {
                    name: "fusion, C2L init",
                    flags: vec!["--init".into(), p.display().to_string()],
                });
            }
            v
        }
        AblateMethod::Fundus => vec![
            Variant {
                name: "mirror + fine triplet (full)",
                flags: s(&["--attention", "mirror", "--loss", "fine-triplet"]),
            },
            Variant {
                name: "backbone + triplet",
                flags: s(&["--attention", "none", "--loss", "triplet"]),
            },
            Variant {
                name: "mirror + triplet",
                flags: s(&["--attention", "mirror", "--loss", "triplet"]),
            },
            // Without mirror halves there is no relevance degree: this is circle loss.
            Variant {
                name: "backbone + fine triplet",
                flags: s(&["--attention", "none", "--loss", "fine-triplet"]),
            },
        ],
    }
}

/// The name of the file in a run folder that records the run's settings.
const SETTINGS: &str = "settings.json";

/// FNV-1a, 64 bits: a stable fingerprint of a file's bytes (a C2L backbone), so a run
/// initialised from it is redone when the backbone changes under the same path.
fn fingerprint(p: &Path) -> Result<String> {
    let bytes =
        std::fs::read(p).with_context(|| format!("cannot read {} to fingerprint", p.display()))?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{} bytes, fnv1a64 {h:016x}", bytes.len()))
}

/// Makes `dir` hold a run of `settings`: keeps it when its recorded settings are equal,
/// otherwise (other settings, none recorded, unreadable) says so, clears it and records
/// `settings`, so what follows trains afresh.
fn claim(dir: &Path, name: &str, settings: &serde_json::Value) -> Result<()> {
    let file = dir.join(SETTINGS);
    if dir.exists() {
        let recorded = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        match recorded {
            Some(r) if &r == settings => return Ok(()),
            Some(_) => println!(
                "== {name}: {} was run with other settings than those asked (recorded in {}); training it afresh",
                dir.display(),
                file.display()
            ),
            None => println!(
                "== {name}: {} records no settings it was run with; training it afresh",
                dir.display()
            ),
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Written whole or not at all: a kill here leaves no half-written record.
    let tmp = dir.join(format!("{SETTINGS}.partial"));
    std::fs::write(&tmp, serde_json::to_string_pretty(settings)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Whether the run in `dir` has a complete checkpoint to resume from, by the training
/// engine's own rule: a run killed while writing its first checkpoint leaves only a
/// partial one, which `--resume` would refuse.
fn has_checkpoints(dir: &Path) -> Result<bool> {
    Ok(medret_train::checkpoint::latest(&dir.join("checkpoints"))?.is_some())
}

pub fn run(a: &AblateArgs) -> Result<()> {
    let (seeds, bits, epochs, size, pretrain) = if a.quick {
        (1, vec![16], 2, 48, 1)
    } else {
        (a.seeds, a.bits.clone(), a.epochs, a.size, a.pretrain_epochs)
    };
    if seeds == 0 || bits.is_empty() {
        bail!("--seeds and --bits need at least one value");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let data = a.data.display().to_string();
    // The dataset as recorded in the settings: the same folder however it is spelled.
    let data_key = std::fs::canonicalize(&a.data)
        .unwrap_or_else(|_| a.data.clone())
        .display()
        .to_string();
    let c2l = match (a.method, &a.c2l) {
        (AblateMethod::Fundus, _) => None,
        (_, Some(p)) => Some(p.clone()),
        (_, None) => {
            let dir = a.out.join("c2l");
            let backbone = dir.join("backbone.safetensors");
            let mut args = s(&["pretrain", "c2l", "--arch"]);
            args.extend([a.arch.clone(), "--size".into(), size.to_string()]);
            args.extend(["--epochs".into(), pretrain.to_string()]);
            claim(
                &dir,
                "c2l",
                &serde_json::json!({"quick": a.quick, "data": data_key, "pretrain": args}),
            )?;
            if !backbone.is_file() {
                args.extend(["--data".into(), data.clone()]);
                args.extend(["--out".into(), dir.display().to_string()]);
                if has_checkpoints(&dir)? {
                    args.push("--resume".into());
                }
                println!("== C2L pretraining for the c2l-init variant");
                crate::demo::medret(&args)?;
            }
            Some(backbone)
        }
    };
    let vs = variants(a.method, c2l.as_deref());
    let c2l_print = c2l.as_deref().map(fingerprint).transpose()?;
    let bit_list: Vec<Option<usize>> = match a.method {
        AblateMethod::Cxr => bits.iter().map(|b| Some(*b)).collect(),
        AblateMethod::Fundus => vec![None],
    };
    let mut results = Vec::new();
    for b in &bit_list {
        for v in &vs {
            for seed in 0..seeds {
                let name = format!(
                    "{}{}-s{seed}",
                    slug(v.name),
                    b.map_or(String::new(), |b| format!("-{b}b"))
                );
                let dir = a.out.join("runs").join(&name);
                let report = dir.join("eval/report.json");
                // Everything that determines the run but its folder and the dataset's
                // spelling: the training and evaluation arguments.
                let mut train = match a.method {
                    AblateMethod::Cxr => s(&["train", "hash", "--bits"])
                        .into_iter()
                        .chain([b.unwrap_or(48).to_string()])
                        .chain(s(&["--batch-size", "32", "--lr", "3e-3"]))
                        .collect::<Vec<_>>(),
                    AblateMethod::Fundus => {
                        s(&["train", "metric", "--batch-size", "20", "--lr", "1e-3"])
                    }
                };
                train.extend(["--arch".into(), a.arch.clone()]);
                train.extend([
                    "--size".into(),
                    size.to_string(),
                    "--epochs".into(),
                    epochs.to_string(),
                ]);
                train.extend(["--seed".into(), seed.to_string()]);
                train.extend(v.flags.iter().cloned());
                let eval = s(&[
                    "eval",
                    "-k",
                    "10,100",
                    "--gallery",
                    "0",
                    "--resamples",
                    "200",
                ]);
                let init = v
                    .flags
                    .iter()
                    .any(|f| f == "--init")
                    .then(|| c2l_print.clone())
                    .flatten();
                claim(
                    &dir,
                    &name,
                    &serde_json::json!({
                        "quick": a.quick,
                        "data": data_key,
                        "train": train,
                        "eval": eval,
                        "init": init,
                    }),
                )?;
                if !report.is_file() {
                    if !dir.join("model.json").is_file() {
                        let mut args = train.clone();
                        args.extend(["--data".into(), data.clone()]);
                        args.extend(["--out".into(), dir.display().to_string()]);
                        if has_checkpoints(&dir)? {
                            args.push("--resume".into());
                        }
                        println!("== {name}: training");
                        crate::demo::medret(&args)?;
                    }
                    println!("== {name}: evaluating");
                    let mut args = eval.clone();
                    args.extend(["--model".into(), dir.display().to_string()]);
                    args.extend(["--data".into(), data.clone()]);
                    args.extend(["--out".into(), dir.join("eval").display().to_string()]);
                    crate::demo::medret(&args)?;
                } else {
                    println!("== {name}: done before, kept");
                }
                let r: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(&report)
                        .with_context(|| format!("cannot read {}", report.display()))?,
                )
                .with_context(|| format!("{}: not JSON", report.display()))?;
                results.push(RunResult {
                    variant: v.name.to_string(),
                    bits: *b,
                    seed,
                    metrics: serde_json::from_value(r["metrics"].clone())
                        .with_context(|| format!("{}: no metrics", report.display()))?,
                    per_query: serde_json::from_value(r["per_query"].clone())
                        .with_context(|| format!("{}: no per-query values", report.display()))?,
                });
            }
        }
    }
    let metrics: Vec<String> = match a.method {
        AblateMethod::Cxr => s(&["map@100", "p@10", "p@h<=2"]),
        AblateMethod::Fundus => s(&["map@10", "ndcg@10", "p@10", "map@100"]),
    };
    let full = vs[0].name;
    let rows = table(&results, full, &metrics, 1000, 0);
    let title = format!(
        "medret ablation: {} on {data} ({} {}px, {epochs} epochs, {seeds} seed(s))",
        match a.method {
            AblateMethod::Cxr => "chest fusion hashing",
            AblateMethod::Fundus => "fundus mirror attention + fine triplet",
        },
        a.arch,
        size
    );
    let md = format!("# {title}\n\n{}", markdown(&rows, &metrics, full));
    let write = |name: &str, text: &str| -> Result<()> {
        let p = a.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write("ablation.md", &md)?;
    write(
        "ablation.json",
        &serde_json::to_string_pretty(
            &serde_json::json!({"title": title, "full": full, "rows": rows}),
        )?,
    )?;
    write("ablation.html", &html(&rows, &metrics, full, &title))?;
    println!("\n{md}");
    println!("tables: {}/ablation.{{md,json,html}}", a.out.display());
    Ok(())
}
