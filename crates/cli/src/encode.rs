//! `medret encode`: a dataset's images through a trained model to packed codes (or
//! descriptors) and an ids file, in the same row order.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use medret_models::encoder::Encoder;
use medret_models::kernels::Precision;
use medret_search::ingest::select_split;
use medret_store::ModelKind;

use crate::engine_args::DataArg;
use crate::index::SplitArg;

#[derive(Args)]
pub struct EncodeArgs {
    /// A trained model folder (model.json, model.safetensors).
    #[arg(long = "model")]
    model_dir: PathBuf,
    #[command(flatten)]
    data: DataArg,
    /// Which split to encode.
    #[arg(long, value_enum, default_value = "all")]
    split: SplitArg,
    /// Output: uint8 .npy of N x bits/8 packed codes (bit i is bit i % 8 of byte i / 8,
    /// the index's order), or float32 N x d descriptors for a descriptor model.
    #[arg(long)]
    out: PathBuf,
    /// Output CSV with one row per image, same order: path,labels,patient_id,split.
    #[arg(long)]
    ids_out: PathBuf,
    /// A descriptor model trained with --binary-bits: write its packed binary codes.
    #[arg(long)]
    binary: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Compute device (cpu, gpu:N or part of an adapter's name in a GPU build; see `medret devices`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The convolutions' precision, f32 or bf16 (opt-in, CPU only: fast on CPUs with Intel
    /// AMX; codes agree with f32's on 99.5% of bits or more, docs/benchmarks.md).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[arg(long)]
    json: bool,
}

/// Sets the convolutions' precision for this process (`kernels::set_precision_for`), and
/// warns where bf16 will be emulated.
pub fn use_precision(p: Precision, device: &burn::prelude::Device) -> Result<()> {
    let emulated =
        medret_models::kernels::set_precision_for(p, device).map_err(anyhow::Error::msg)?;
    if emulated {
        tracing::warn!(
            "this CPU has no Intel AMX: bf16 products are emulated, slower than f32 \
             (the codes are the same as on a CPU with AMX, within rounding)"
        );
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn run(a: &EncodeArgs) -> Result<()> {
    let device = medret_models::device::parse_device(&a.device).map_err(anyhow::Error::msg)?;
    use_precision(a.precision, &device)?;
    let encoder = Encoder::open(&a.model_dir, &device)?;
    let ds = a.data.open()?;
    let records = select_split(&ds.records, a.split.split());
    anyhow::ensure!(
        !records.is_empty(),
        "{}: no images in the chosen split",
        a.data.path.display()
    );
    let started = std::time::Instant::now();
    let bar = crate::progress::bar(records.len() as u64, "encoding");
    let kind = medret_search::ingest::model_kind(&encoder, a.binary)?;
    let vectors =
        encoder.encode_records_as(&records, a.batch, a.binary, &|n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let width = kind.vector_bytes();
    let flat: Vec<u8> = vectors.concat();
    match kind {
        ModelKind::Codes { .. } => {
            medret_data::npy::write_u8_matrix(&a.out, records.len(), width, &flat)?;
        }
        ModelKind::Descriptors { dim, .. } => {
            let rows: Vec<Vec<f32>> = flat
                .chunks(dim * 4)
                .map(|r| {
                    r.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                })
                .collect();
            medret_data::npy::write_f32_matrix(&a.out, &rows)?;
        }
    }
    let mut ids = std::io::BufWriter::new(
        std::fs::File::create(&a.ids_out)
            .with_context(|| format!("cannot write {}", a.ids_out.display()))?,
    );
    writeln!(ids, "path,labels,patient_id,split")?;
    for r in &records {
        writeln!(
            ids,
            "{},{},{},{}",
            csv_field(&r.source.describe()),
            csv_field(&r.labels.join("|")),
            csv_field(&r.patient_id),
            r.split.map(|s| s.name()).unwrap_or("")
        )?;
    }
    ids.flush()
        .with_context(|| format!("cannot write {}", a.ids_out.display()))?;
    let rate = records.len() as f64 / seconds.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"images": records.len(), "out": a.out, "ids_out": a.ids_out, "seconds": seconds, "images_per_second": rate, "output": encoder.card.output})
        );
    } else {
        println!(
            "encoded {} images to {} ({:.1} images/s)",
            records.len(),
            a.out.display(),
            rate
        );
    }
    Ok(())
}
