//! NumPy's `.npy` format: a magic string, a version, a header that is a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (10, 3, 32, 32), }`), then the raw
//! little-endian data in C order. Enough of it to read what `numpy.save` writes for float
//! and integer arrays, and to write float32 arrays.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types read: float32/float64 (to f32) and int32/int64 (to i64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Descr {
    F4,
    F8,
    I4,
    I8,
}

/// Reads an `.npy` file: floats become an f32 tensor, integers an i64 tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    parse(&bytes).map_err(|msg| Error::file(path, msg))
}

fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy version {v} is not supported (1, 2 or 3)")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = match dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?.trim_matches(['\'', '"']) {
        "<f4" | "=f4" => Descr::F4,
        "<f8" | "=f8" => Descr::F8,
        "<i4" | "=i4" => Descr::I4,
        "<i8" | "=i8" => Descr::I8,
        other => {
            return Err(format!("dtype '{other}' is not supported (float32, float64, int32, int64, little-endian)"));
        }
    };
    if dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")? != "False" {
        return Err("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape_text}")))
        .collect::<std::result::Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("the shape is too large")?;
    let data = &bytes[start + header_len..];
    let size = match descr {
        Descr::F4 | Descr::I4 => 4,
        Descr::F8 | Descr::I8 => 8,
    };
    let needed = count.checked_mul(size).ok_or("the shape is too large")?;
    if data.len() != needed {
        return Err(format!("shape {shape:?} needs {needed} bytes of data, the file has {}", data.len()));
    }
    let t = match descr {
        Descr::F4 => Tensor::from_vec(
            shape,
            data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
        ),
        Descr::F8 => Tensor::from_vec(
            shape,
            data.chunks_exact(8).map(|c| f64::from_le_bytes(le8(c)) as f32).collect::<Vec<f32>>(),
        ),
        Descr::I4 => Tensor::from_vec(
            shape,
            data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect::<Vec<i64>>(),
        ),
        Descr::I8 => {
            Tensor::from_vec(shape, data.chunks_exact(8).map(|c| i64::from_le_bytes(le8(c))).collect::<Vec<i64>>())
        }
    };
    t.map_err(|e| e.to_string())
}

fn le8(c: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(c);
    w
}

/// The text of the value of `key` in the header's dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// The bytes of a version-1.0 `.npy` file of `shape` whose elements are `data`, of numpy
/// type `descr` (`<f4`, `<i8`).
fn encode(shape: &[usize], descr: &str, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The data starts at a multiple of 64 bytes; the header ends with a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The bytes of a `.npy` file holding `values` as float32 of `shape`.
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    encode(shape, "<f4", bytemuck::cast_slice(values))
}

/// The bytes of a `.npy` file holding `values` as int64 of `shape` (labels).
pub fn encode_i64(shape: &[usize], values: &[i64]) -> Vec<u8> {
    encode(shape, "<i8", bytemuck::cast_slice(values))
}

/// Writes an f32 tensor to `path` as `.npy`, atomically.
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let values = t.to_dtype(crate::tensor::DType::F32)?.to_vec::<f32>()?;
    crate::output::write_atomically(path, &encode_f32(t.dims(), &values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let bytes = encode_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let t = parse(&bytes).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let one = parse(&encode_f32(&[3], &[1.0, 2.0, 3.0])).unwrap();
        assert_eq!(one.dims(), &[3]);
    }

    #[test]
    fn reads_what_numpy_writes_for_integers() {
        // np.save of np.array([3, 1, 4], dtype=np.int32), version 1.0.
        let mut header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }".to_string();
        let total = 10 + header.len() + 1;
        header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
        header.push('\n');
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in [3i32, 1, 4] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let t = parse(&bytes).unwrap();
        assert_eq!(t.to_vec::<i64>().unwrap(), vec![3, 1, 4]);
    }

    #[test]
    fn malformed_files_are_named_errors() {
        assert!(parse(b"hello world").unwrap_err().contains("not a .npy file"));
        let mut bytes = encode_f32(&[2, 2], &[1.0; 4]);
        bytes.truncate(bytes.len() - 3);
        assert!(parse(&bytes).unwrap_err().contains("needs 16 bytes of data, the file has 13"));
        let mut fortran = encode_f32(&[1], &[0.0]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse(&fortran).unwrap_err().contains("Fortran-ordered"));
        let big_endian =
            encode_f32(&[1], &[0.0]).iter().map(|&b| if b == b'<' { b'>' } else { b }).collect::<Vec<u8>>();
        assert!(parse(&big_endian).unwrap_err().contains("'>f4' is not supported"));
    }
}
