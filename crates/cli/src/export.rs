//! `medret data export`: one image as medret decodes it, for checking an archive's files
//! against another viewer or toolkit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct ExportArgs {
    /// A DICOM, PNG or JPEG file.
    pub file: PathBuf,
    /// DICOM only: the frame's values after the modality LUT (grey) or colour conversion
    /// and palette (RGB), before any VOI window or scaling, as float32 `.npy`
    /// (H x W, or H x W x 3). Without it: the image after medret's display pipeline,
    /// in [0, 1].
    #[arg(long)]
    pub raw: bool,
    /// The frame of a multi-frame DICOM file, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub frame: u32,
    /// Output: `.npy` (float32) or `.png` (16 bits per sample; not with --raw).
    #[arg(long)]
    pub out: PathBuf,
}

enum Out {
    Npy,
    Png,
}

fn out_kind(out: &Path) -> Result<Out> {
    match out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("npy") => Ok(Out::Npy),
        Some("png") => Ok(Out::Png),
        _ => bail!("{}: --out must end in .npy or .png", out.display()),
    }
}

pub fn run(a: &ExportArgs) -> Result<()> {
    let kind = out_kind(&a.out)?;
    let is_dicom = medret_data::decode::is_dicom_path(&a.file);
    if a.raw {
        if !is_dicom {
            bail!(
                "{}: --raw applies to DICOM files (a PNG or JPEG has no modality values)",
                a.file.display()
            );
        }
        if matches!(kind, Out::Png) {
            bail!("--raw writes float32 values: use an .npy output");
        }
        let f = medret_data::dicom::read_frame(&a.file, a.frame - 1)?;
        let shape: Vec<usize> = if f.samples == 1 {
            vec![f.rows, f.cols]
        } else {
            vec![f.rows, f.cols, 3]
        };
        medret_data::npy::write_f32_array(&a.out, &shape, &f.data)?;
        println!(
            "wrote {} ({}, {} of {} frame{})",
            a.out.display(),
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" x "),
            a.frame,
            f.frames,
            if f.frames == 1 { "" } else { "s" }
        );
        return Ok(());
    }
    let img = if is_dicom {
        medret_data::dicom::decode_dicom_frame(&a.file, a.frame - 1)?
    } else {
        if a.frame != 1 {
            bail!("{}: --frame applies to DICOM files", a.file.display());
        }
        medret_data::decode::decode_file(&a.file)?
    };
    match kind {
        Out::Npy => {
            let mut shape = vec![img.height, img.width];
            if img.channels > 1 {
                shape.push(img.channels);
            }
            medret_data::npy::write_f32_array(&a.out, &shape, &img.to_hwc())?;
        }
        Out::Png => img
            .to_dynamic16()
            .save(&a.out)
            .with_context(|| format!("cannot write {}", a.out.display()))?,
    }
    println!(
        "wrote {} ({} x {}, {} channel{})",
        a.out.display(),
        img.height,
        img.width,
        img.channels,
        if img.channels == 1 { "" } else { "s" }
    );
    Ok(())
}
