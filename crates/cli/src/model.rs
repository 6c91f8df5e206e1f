//! `medret model summary` and `medret features`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medret_data::{ImageSource, Record};
use medret_models::device::parse_device;
use medret_models::features::{pooled_features, torchvision_pipeline};
use medret_models::load_torchvision;
use medret_models::weights::read_header;

use medret_models::arch::Arch;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the layer table and parameter counts (as torchvision counts them).
    Summary {
        #[arg(long, default_value = "densenet121")]
        arch: Arch,
        /// Classifier outputs; 0 for the feature extractor alone. Default: the architecture's.
        #[arg(long)]
        classes: Option<usize>,
        /// Input channels (3 RGB, 1 grey).
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct FeaturesArgs {
    #[arg(long, default_value = "densenet121")]
    arch: Arch,
    /// Weights as safetensors with torchvision names (e.g. converted ImageNet or CheXNet).
    #[arg(long)]
    weights: PathBuf,
    /// A folder of images (PNG, JPEG, DICOM), read in sorted file-name order.
    #[arg(long)]
    images: PathBuf,
    /// Output .npy (float32, N x D).
    #[arg(long)]
    out: PathBuf,
    /// Network input side; an image already this size is not resized.
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// `cpu`, `gpu:N` or part of an adapter's name (`medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also print the file order as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_model(cmd: &ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Summary {
            arch,
            classes,
            in_channels,
            json,
        } => {
            let mut cfg = arch.base_config();
            if let Some(k) = classes {
                cfg.num_classes = (*k > 0).then_some(*k);
            }
            cfg.in_channels = *in_channels;
            let model = cfg.init(&burn::prelude::Device::flex());
            let s = medret_models::summary::summarise(&model);
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"config": cfg, "summary": s})
                    )?
                );
                return Ok(());
            }
            println!(
                "{:<50} {:<12} {:<20} {:>10}",
                "layer", "kind", "weight", "params"
            );
            for l in &s.layers {
                println!(
                    "{:<50} {:<12} {:<20} {:>10}",
                    l.name,
                    l.kind,
                    format!("{:?}", l.weight_shape),
                    l.params
                );
            }
            println!("feature dim            {}", cfg.feature_dim());
            println!("parameters             {}", s.parameters);
            println!("  feature extractor    {}", s.feature_extractor_parameters);
            println!("  classifier           {}", s.classifier_parameters);
            println!("BatchNorm buffers      {}", s.buffers);
            Ok(())
        }
    }
}

fn list_images(dir: &std::path::Path) -> Result<Vec<Record>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("png" | "jpg" | "jpeg" | "dcm")
            )
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no PNG, JPEG or DICOM images",
        dir.display()
    );
    Ok(files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let src = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
                ImageSource::Dicom { path: p, frame: 0 }
            } else {
                ImageSource::File(p)
            };
            Record::new(name, src)
        })
        .collect())
}

pub fn run_features(a: &FeaturesArgs) -> Result<()> {
    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let mut cfg = a.arch.base_config();
    // The classifier in the file decides the head; it is not used for features.
    let header = read_header(&a.weights)?;
    cfg.num_classes = header.get("classifier.weight").map(|(_, s)| s[0]);
    let mut model = cfg.init(&device);
    load_torchvision(&mut model, &cfg, &a.weights)?;
    let records = list_images(&a.images)?;
    let bar = crate::progress::bar(records.len() as u64, "features");
    let rows = pooled_features(
        &model,
        &records,
        &torchvision_pipeline(a.size),
        a.batch,
        &device,
        &|| bar.inc(1),
    )?;
    bar.finish_and_clear();
    medret_data::npy::write_f32_matrix(&a.out, &rows)?;
    if a.json {
        let order: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({"out": a.out, "rows": rows.len(), "dim": cfg.feature_dim(), "files": order})
        );
    } else {
        println!(
            "wrote {} x {} features to {}",
            rows.len(),
            cfg.feature_dim(),
            a.out.display()
        );
    }
    Ok(())
}
