//! Per-step and per-epoch logs: `log/steps.csv`, `log/epochs.csv` (one column per
//! validation metric) and `log/epochs.jsonl` (one JSON object per epoch).
//!
//! On resume, rows of epochs that were not checkpointed are dropped first, so the logs
//! describe exactly the run that the checkpoints hold.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Metrics;
use crate::error::{Result, io_err};

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based global step.
    pub step: usize,
    pub lr: f64,
    /// Mean loss over the batch.
    pub loss: f64,
    /// Global gradient norm before clipping (NaN when not computed for this step).
    pub grad_norm: f64,
    pub samples: usize,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// Steps taken so far.
    pub steps: usize,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
    /// Validation metrics.
    pub metrics: Metrics,
    /// True when this epoch is the best so far.
    pub best: bool,
}

pub struct MetricsLog {
    dir: PathBuf,
    steps: File,
    epoch_columns: Option<Vec<String>>,
}

const STEP_HEADER: &str = "epoch,step,lr,loss,grad_norm,samples,ms";

impl MetricsLog {
    /// Opens the logs in `dir`, keeping only rows of epochs before `resume_epoch`.
    pub fn open(dir: &Path, resume_epoch: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let steps_path = dir.join("steps.csv");
        keep_rows(&steps_path, resume_epoch, Some(STEP_HEADER))?;
        keep_rows(&dir.join("epochs.csv"), resume_epoch, None)?;
        keep_rows(&dir.join("epochs.jsonl"), resume_epoch, None)?;
        let mut steps = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&steps_path)
            .map_err(io_err(&steps_path))?;
        if steps.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            writeln!(steps, "{STEP_HEADER}").map_err(io_err(&steps_path))?;
        }
        let epoch_columns = read_header(&dir.join("epochs.csv"))?;
        Ok(MetricsLog {
            dir: dir.to_path_buf(),
            steps,
            epoch_columns,
        })
    }

    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        writeln!(
            self.steps,
            "{},{},{:.6e},{:.6},{:.6},{},{:.1}",
            r.epoch, r.step, r.lr, r.loss, r.grad_norm, r.samples, r.ms
        )
        .map_err(io_err(self.dir.join("steps.csv")))
    }

    pub fn epoch(&mut self, r: &EpochRecord) -> Result<()> {
        let path = self.dir.join("epochs.csv");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let metric_names: Vec<String> = r.metrics.keys().cloned().collect();
        let columns = self.epoch_columns.get_or_insert_with(|| {
            let mut c = vec![
                "epoch".to_string(),
                "steps".into(),
                "train_loss".into(),
                "lr".into(),
                "seconds".into(),
                "best".into(),
            ];
            c.extend(metric_names.iter().map(|m| format!("val_{m}")));
            c
        });
        if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            writeln!(f, "{}", columns.join(",")).map_err(io_err(&path))?;
        }
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "epoch" => r.epoch.to_string(),
                "steps" => r.steps.to_string(),
                "train_loss" => format!("{:.6}", r.train_loss),
                "lr" => format!("{:.6e}", r.lr),
                "seconds" => format!("{:.2}", r.seconds),
                "best" => r.best.to_string(),
                m => r
                    .metrics
                    .get(m.trim_start_matches("val_"))
                    .map(|v| format!("{v:.6}"))
                    .unwrap_or_default(),
            })
            .collect();
        writeln!(f, "{}", cells.join(",")).map_err(io_err(&path))?;
        self.steps
            .flush()
            .map_err(io_err(self.dir.join("steps.csv")))?;

        let jpath = self.dir.join("epochs.jsonl");
        let mut j = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jpath)
            .map_err(io_err(&jpath))?;
        writeln!(
            j,
            "{}",
            serde_json::to_string(r).expect("epoch records serialise")
        )
        .map_err(io_err(&jpath))
    }
}

fn read_header(path: &Path) -> Result<Option<Vec<String>>> {
    match File::open(path) {
        Ok(f) => {
            let mut first = String::new();
            BufReader::new(f)
                .read_line(&mut first)
                .map_err(io_err(path))?;
            let first = first.trim();
            Ok((!first.is_empty()).then(|| first.split(',').map(String::from).collect()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Keeps the header and the rows whose epoch (first CSV cell, or the `epoch` field of a
/// JSON line) is below `epoch`. A fresh run (`epoch == 0`) starts from empty files.
fn keep_rows(path: &Path, epoch: usize, header: Option<&str>) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let row_epoch = if line.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                .map(|e| e as usize)
        } else {
            line.split(',').next().and_then(|c| c.parse::<usize>().ok())
        };
        match row_epoch {
            Some(e) if e < epoch => {
                out.push_str(line);
                out.push('\n');
            }
            None if i == 0 && epoch > 0 && header.is_none_or(|h| h == line) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    std::fs::write(path, out).map_err(io_err(path))
}
