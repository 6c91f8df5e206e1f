//! Writing `.npy` matrices (float32, C order) for features and codes.

use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{DataError, Result};

/// Writes `rows` (all the same length) as a float32 `N x D` array, atomically.
pub fn write_f32_matrix(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let d = rows.first().map_or(0, Vec::len);
    if let Some(bad) = rows.iter().position(|r| r.len() != d) {
        return Err(DataError::format(
            path,
            format!("row {bad} has {} values, expected {d}", rows[bad].len()),
        ));
    }
    let tmp = path.with_extension("npy.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows.len() as u64, d as u64])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|e| DataError::io(path, e))?;
    for r in rows {
        w.extend(r.iter().copied())
            .map_err(|e| DataError::io(path, e))?;
    }
    w.finish().map_err(|e| DataError::io(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Writes `data` as a float32 array of `shape` (C order), atomically.
pub fn write_f32_array(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(DataError::format(
            path,
            format!("{} values for shape {shape:?}", data.len()),
        ));
    }
    let tmp = path.with_extension("npy.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|e| DataError::io(path, e))?;
    w.extend(data.iter().copied())
        .map_err(|e| DataError::io(path, e))?;
    w.finish().map_err(|e| DataError::io(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Opens a `.npy` in C (row-major) order. A Fortran-order file would be read with its
/// rows scrambled into columns, so it is refused with the fix named.
fn open_c_order<'a>(path: &Path, bytes: &'a [u8]) -> Result<npyz::NpyFile<&'a [u8]>> {
    // npyz allocates the header's declared length (up to 4 GiB in version 2) before
    // reading it: refuse a header longer than the file (found by fuzzing).
    let declared = match (bytes.get(6), bytes.get(8..12)) {
        (Some(1), Some(b)) => Some(10 + u64::from(u16::from_le_bytes([b[0], b[1]]))),
        (Some(_), Some(b)) => Some(12 + u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => None,
    };
    if declared.is_some_and(|n| n > bytes.len() as u64) {
        return Err(DataError::format(
            path,
            "not a .npy file: its header is longer than the file",
        ));
    }
    // npyz parses the header's Python literal with backtracking that takes seconds on
    // deeply nested brackets (found by fuzzing: 26 `[` hung it past 10 s). A matrix's
    // header is a flat dict with one shape tuple; a structured dtype (a list of fields)
    // is nothing medret reads. Refuse more than two levels of nesting before parsing.
    if let Some(n) = declared {
        let header = &bytes[bytes.len().min(10)..(n as usize).min(bytes.len())];
        let mut depth = 0i32;
        for &c in header {
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ => {}
            }
            if depth > 2 {
                return Err(DataError::format(
                    path,
                    "not a .npy file medret reads: its header nests brackets more than twice (a structured or malformed dtype)",
                ));
            }
        }
    }
    let npy = npyz::NpyFile::new(bytes)
        .map_err(|e| DataError::format(path, format!("not a .npy file: {e}")))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(DataError::format(
            path,
            "stored in Fortran (column-major) order; save it with numpy.ascontiguousarray(a) first",
        ));
    }
    Ok(npy)
}

/// Refuses a shape holding more values than the file has bytes for, before npyz reserves
/// room for them.
fn check_shape(path: &Path, npy: &npyz::NpyFile<&[u8]>, file_len: usize, size: u64) -> Result<()> {
    let values = npy.shape().iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    match values.and_then(|n| n.checked_mul(size)) {
        Some(n) if n <= file_len as u64 => Ok(()),
        _ => Err(DataError::format(
            path,
            format!("shape {:?} holds more values than the file", npy.shape()),
        )),
    }
}

/// Reads a float32 `N x D` `.npy` (for tests and later commands).
pub fn read_f32_matrix(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    read_f32_matrix_bytes(path, &bytes)
}

/// [`read_f32_matrix`] of a `.npy` held in memory; `path` only names it in errors.
pub fn read_f32_matrix_bytes(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let npy = open_c_order(path, bytes)?;
    check_shape(path, &npy, bytes.len(), 4)?;
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    let data = npy
        .into_vec::<f32>()
        .map_err(|e| DataError::format(path, format!("not float32: {e}")))?;
    Ok((shape, data))
}

/// Reads a 2-D uint8 `.npy` (packed binary codes, `N x bits/8`): the shape and the bytes.
pub fn read_u8_matrix(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    read_u8_matrix_bytes(path, &bytes)
}

/// [`read_u8_matrix`] of a `.npy` held in memory; `path` only names it in errors.
pub fn read_u8_matrix_bytes(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let npy = open_c_order(path, bytes)?;
    check_shape(path, &npy, bytes.len(), 1)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    if shape.len() != 2 {
        return Err(DataError::format(
            path,
            format!("expected a 2-D array (N x bytes), found shape {shape:?}"),
        ));
    }
    let data = npy
        .into_vec::<u8>()
        .map_err(|e| DataError::format(path, format!("not uint8: {e}")))?;
    Ok((shape, data))
}

/// Writes a 2-D uint8 `.npy`.
pub fn write_u8_matrix(path: &Path, rows: usize, cols: usize, data: &[u8]) -> Result<()> {
    if data.len() != rows * cols {
        return Err(DataError::format(
            path,
            format!("{} bytes for a {rows} x {cols} array", data.len()),
        ));
    }
    let mut out = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(&mut out)
            .begin_nd()
            .map_err(|e| DataError::io(path, e))?;
        w.extend(data.iter().copied())
            .map_err(|e| DataError::io(path, e))?;
        w.finish().map_err(|e| DataError::io(path, e))?;
    }
    std::fs::write(path, out).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written version 1.0 `.npy` header with `fortran_order` set as given.
    fn npy(fortran: bool, descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn fortran_order_is_refused_not_scrambled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("codes.npy");
        std::fs::write(&p, npy(false, "|u1", "(2, 3)", &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(
            read_u8_matrix(&p).unwrap(),
            (vec![2, 3], vec![1, 2, 3, 4, 5, 6])
        );
        std::fs::write(&p, npy(true, "|u1", "(2, 3)", &[1, 4, 2, 5, 3, 6])).unwrap();
        let e = read_u8_matrix(&p).unwrap_err().to_string();
        assert!(e.contains("codes.npy") && e.contains("Fortran"), "{e}");
        let f: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&p, npy(true, "<f4", "(1, 2)", &f)).unwrap();
        assert!(
            read_f32_matrix(&p)
                .unwrap_err()
                .to_string()
                .contains("Fortran")
        );
    }
}
