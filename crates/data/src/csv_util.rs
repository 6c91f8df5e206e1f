//! CSV plumbing shared by the readers: every error carries the file and the 1-based line.

use std::path::Path;

use crate::error::{DataError, Result};

/// A CSV file opened for reading, with its header.
pub(crate) struct CsvFile {
    pub path: std::path::PathBuf,
    pub header: Vec<String>,
    reader: csv::Reader<std::fs::File>,
}

/// One data row and the line it came from.
pub(crate) struct CsvRow {
    pub line: u64,
    pub fields: csv::StringRecord,
}

impl CsvRow {
    pub fn get(&self, i: usize) -> &str {
        self.fields.get(i).unwrap_or("").trim()
    }
}

impl CsvFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        // Flexible: NIH copies end rows with a trailing comma; we check widths ourselves.
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
            .collect::<Vec<_>>();
        if header.iter().all(|h| h.is_empty()) {
            return Err(DataError::format(path, "empty CSV file (no header)"));
        }
        Ok(CsvFile {
            path: path.to_path_buf(),
            header,
            reader,
        })
    }

    /// Index of a required column.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.optional_column(name)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self.header.join(","),
            })
    }

    pub fn optional_column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// All data rows, each with its line number; a malformed row is an error naming its line.
    pub fn rows(&mut self) -> Result<Vec<CsvRow>> {
        let mut out = Vec::new();
        for rec in self.reader.records() {
            let fields = rec.map_err(|e| csv_error(&self.path, e))?;
            let line = fields.position().map(|p| p.line()).unwrap_or(0);
            if fields.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            out.push(CsvRow { line, fields });
        }
        Ok(out)
    }
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.into_kind() {
        csv::ErrorKind::Io(io) => DataError::io(path, io),
        csv::ErrorKind::Utf8 { err, .. } => DataError::row(path, line, format!("not UTF-8: {err}")),
        other => DataError::row(path, line, format!("{other:?}")),
    }
}

/// Reads a list file (one name a line), ignoring blank lines.
pub(crate) fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}
