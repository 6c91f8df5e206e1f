//! `medret ablate`: every variant of a method's switches, trained and evaluated per seed
//! (and code length), then one table (mean ± sd over seeds, and the paired bootstrap
//! interval of each variant's difference to the full method) as markdown, JSON and HTML.
//!
//! Each run is a folder under `OUT/runs/`; a run whose `eval/report.json` exists is done
//! and is not redone, a run with checkpoints and no model resumes from them, so an
//! interrupted ablation continues where it stopped.

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
    let c2l = match (a.method, &a.c2l) {
        (AblateMethod::Fundus, _) => None,
        (_, Some(p)) => Some(p.clone()),
        (_, None) => {
            let dir = a.out.join("c2l");
            let backbone = dir.join("backbone.safetensors");
            if !backbone.is_file() {
                let mut args = s(&["pretrain", "c2l", "--data"]);
                args.extend([data.clone(), "--arch".into(), a.arch.clone()]);
                args.extend([
                    "--size".into(),
                    size.to_string(),
                    "--epochs".into(),
                    pretrain.to_string(),
                ]);
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
                if !report.is_file() {
                    if !dir.join("model.json").is_file() {
                        let mut args = match a.method {
                            AblateMethod::Cxr => s(&["train", "hash", "--bits"])
                                .into_iter()
                                .chain([b.unwrap_or(48).to_string()])
                                .chain(s(&["--batch-size", "32", "--lr", "3e-3"]))
                                .collect::<Vec<_>>(),
                            AblateMethod::Fundus => {
                                s(&["train", "metric", "--batch-size", "20", "--lr", "1e-3"])
                            }
                        };
                        args.extend([
                            "--data".into(),
                            data.clone(),
                            "--arch".into(),
                            a.arch.clone(),
                        ]);
                        args.extend([
                            "--size".into(),
                            size.to_string(),
                            "--epochs".into(),
                            epochs.to_string(),
                        ]);
                        args.extend([
                            "--seed".into(),
                            seed.to_string(),
                            "--out".into(),
                            dir.display().to_string(),
                        ]);
                        args.extend(v.flags.iter().cloned());
                        if has_checkpoints(&dir)? {
                            args.push("--resume".into());
                        }
                        println!("== {name}: training");
                        crate::demo::medret(&args)?;
                    }
                    println!("== {name}: evaluating");
                    crate::demo::medret(&[
                        "eval".into(),
                        "--model".into(),
                        dir.display().to_string(),
                        "--data".into(),
                        data.clone(),
                        "-k".into(),
                        "10,100".into(),
                        "--gallery".into(),
                        "0".into(),
                        "--resamples".into(),
                        "200".into(),
                        "--out".into(),
                        dir.join("eval").display().to_string(),
                    ])?;
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
