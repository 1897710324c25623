//! NumPy's `.npy` format: a magic string, a version, a header that is a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (10, 3, 32, 32), }`), then the raw
//! little-endian data in C order. Enough of it to read what `numpy.save` writes for float
//! and integer arrays, and to write float32 and int64 arrays.
//!
//! The parser trusts nothing in the file: the header is checked key by key, and the data
//! must be exactly as long as the shape and dtype say before anything is allocated for it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";
/// The most dimensions numpy gives an array (`NPY_MAXDIMS` in numpy 2).
const MAX_DIMS: usize = 64;
const SUPPORTED: &str = "supported: float16/32/64, int8/16/32/64, uint8/16/32, little-endian";

/// The element types read, as numpy's `descr` codes name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Descr {
    F2,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    U1,
    U2,
    U4,
}

impl Descr {
    fn size(self) -> usize {
        match self {
            Descr::I1 | Descr::U1 => 1,
            Descr::F2 | Descr::I2 | Descr::U2 => 2,
            Descr::F4 | Descr::I4 | Descr::U4 => 4,
            Descr::F8 | Descr::I8 => 8,
        }
    }
}

/// What the header says the data holds.
#[derive(Debug)]
struct Header {
    descr: Descr,
    shape: Vec<usize>,
}

/// Reads an `.npy` file: floats become an f32 tensor, integers an i64 tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = crate::input::read(path)?;
    parse(&bytes).map_err(|msg| Error::file(path, msg))
}

/// Decodes the bytes of an `.npy` file: float16/32/64 become an f32 tensor, signed and
/// unsigned integers (up to uint32) an i64 tensor. Arrays of any rank, 0-d included, are
/// read; whether the rank fits is for the caller to say. The error is one line of text.
pub fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let (header_text, data) = split(bytes)?;
    let Header { descr, shape } = parse_header(header_text)?;
    // Both products are checked, so a shape of 10^12 elements is refused by the length
    // comparison below, not by an allocation.
    let needed = shape
        .iter()
        .try_fold(descr.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("the header's shape {} is too large to address", shape_text(&shape)))?;
    if data.len() != needed {
        return Err(format!(
            "the header's shape {} of {}-byte elements needs {needed} bytes of data, the file has {}",
            shape_text(&shape),
            descr.size(),
            data.len()
        ));
    }
    let t = match descr {
        Descr::F2 => floats(shape, words(data).map(|w| half::f16::from_le_bytes(w).to_f32())),
        Descr::F4 => floats(shape, words(data).map(f32::from_le_bytes)),
        Descr::F8 => floats(shape, words(data).map(|w| f64::from_le_bytes(w) as f32)),
        Descr::I1 => ints(shape, words(data).map(|w| i8::from_le_bytes(w) as i64)),
        Descr::I2 => ints(shape, words(data).map(|w| i16::from_le_bytes(w) as i64)),
        Descr::I4 => ints(shape, words(data).map(|w| i32::from_le_bytes(w) as i64)),
        Descr::I8 => ints(shape, words(data).map(i64::from_le_bytes)),
        Descr::U1 => ints(shape, data.iter().map(|&b| b as i64)),
        Descr::U2 => ints(shape, words(data).map(|w| u16::from_le_bytes(w) as i64)),
        Descr::U4 => ints(shape, words(data).map(|w| u32::from_le_bytes(w) as i64)),
    };
    t.map_err(|e| e.to_string())
}

fn floats(shape: Vec<usize>, values: impl Iterator<Item = f32>) -> Result<Tensor> {
    Tensor::from_vec(shape, values.collect::<Vec<f32>>())
}

fn ints(shape: Vec<usize>, values: impl Iterator<Item = i64>) -> Result<Tensor> {
    Tensor::from_vec(shape, values.collect::<Vec<i64>>())
}

/// The consecutive `N`-byte words of `data` (a trailing partial word is dropped; the caller
/// has checked there is none).
fn words<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    })
}

/// The header text and the data after it, once the magic, the version and the header
/// length are checked.
fn split(bytes: &[u8]) -> std::result::Result<(&str, &[u8]), String> {
    if !bytes.starts_with(MAGIC) {
        if MAGIC.starts_with(bytes) {
            return Err(format!("truncated: {} bytes, shorter than the 6-byte .npy magic", bytes.len()));
        }
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (Some(&major), Some(&minor)) = (bytes.get(6), bytes.get(7)) else {
        return Err("truncated: the file ends inside the .npy version".into());
    };
    // Version 1.0 gives the header length in 2 bytes, 2.0 and 3.0 (UTF-8 header) in 4.
    let length_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(format!(".npy version {major}.{minor} is not supported (1.0, 2.0 or 3.0)")),
    };
    let start = 8 + length_bytes;
    let field = bytes.get(8..start).ok_or("truncated: the file ends inside the .npy header length")?;
    let header_len = field.iter().rev().fold(0usize, |a, &b| (a << 8) | b as usize);
    let rest = bytes.get(start..).unwrap_or_default();
    if header_len > rest.len() {
        return Err(format!("the header length field says {header_len} bytes, but only {} follow it", rest.len()));
    }
    let (header, data) = rest.split_at(header_len);
    let text = std::str::from_utf8(header)
        .map_err(|e| format!("the .npy header is not UTF-8 text (bad byte at offset {})", e.valid_up_to()))?;
    Ok((text, data))
}

/// Parses the header's dict literal: exactly the keys `descr`, `fortran_order` and `shape`,
/// in any order, as `numpy.lib.format` requires.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let mut rest = text
        .trim_start()
        .strip_prefix('{')
        .ok_or_else(|| format!("the .npy header is not a dict literal (it starts {})", shown(text)))?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            rest = r;
            break;
        }
        if rest.is_empty() {
            return Err("the .npy header's dict is unterminated (no closing '}')".into());
        }
        let (key, r) = string_literal(rest).map_err(|e| format!("the .npy header has a bad key: {e}"))?;
        let r = r
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| format!("the .npy header has no ':' after the key {}", shown(key)))?
            .trim_start();
        rest = match key {
            "descr" => {
                let (value, r) = string_literal(r).map_err(|e| {
                    format!(
                        "the .npy header's 'descr' is not a dtype string ({e}; structured dtypes are not supported)"
                    )
                })?;
                once(&mut descr, parse_descr(value)?, key)?;
                r
            }
            "fortran_order" => {
                let (value, r) = boolean(r)?;
                once(&mut fortran_order, value, key)?;
                r
            }
            "shape" => {
                let (value, r) = tuple(r)?;
                once(&mut shape, value, key)?;
                r
            }
            other => return Err(format!("the .npy header has an unexpected key {}", shown(other))),
        };
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(if rest.is_empty() {
                "the .npy header's dict is unterminated (no closing '}')".into()
            } else {
                format!("the .npy header has {} where ',' or '}}' should follow '{key}'", shown(rest))
            });
        }
    }
    if !rest.trim().is_empty() {
        return Err(format!("the .npy header has text after its dict: {}", shown(rest.trim())));
    }
    let descr = descr.ok_or("the .npy header has no 'descr'")?;
    let fortran_order = fortran_order.ok_or("the .npy header has no 'fortran_order'")?;
    let shape = shape.ok_or("the .npy header has no 'shape'")?;
    if fortran_order {
        return Err("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into());
    }
    Ok(Header { descr, shape })
}

/// Fills a key's slot, refusing a key given twice.
fn once<T>(slot: &mut Option<T>, value: T, key: &str) -> std::result::Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("the .npy header gives '{key}' twice"));
    }
    Ok(())
}

/// The numpy type code: a byte-order character (`<` little-endian, `>` big-endian, `|` not
/// applicable, `=` native, taken as little-endian) and a kind and size (`f4`).
fn parse_descr(text: &str) -> std::result::Result<Descr, String> {
    let (order, code) = match text.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &text[1..]),
        _ => ('=', text),
    };
    let descr = match code {
        "f2" => Descr::F2,
        "f4" => Descr::F4,
        "f8" => Descr::F8,
        "i1" => Descr::I1,
        "i2" => Descr::I2,
        "i4" => Descr::I4,
        "i8" => Descr::I8,
        "u1" => Descr::U1,
        "u2" => Descr::U2,
        "u4" => Descr::U4,
        _ => return Err(format!("dtype {} is not supported ({SUPPORTED})", shown(text))),
    };
    match order {
        '>' if descr.size() > 1 => {
            Err(format!("dtype {} is big-endian, which is not supported ({SUPPORTED})", shown(text)))
        }
        '|' if descr.size() > 1 => {
            Err(format!("dtype {} has no byte order, which is not supported ({SUPPORTED})", shown(text)))
        }
        _ => Ok(descr),
    }
}

/// A quoted Python string (no escapes: numpy's keys and type codes have none) and the text
/// after it.
fn string_literal(text: &str) -> std::result::Result<(&str, &str), String> {
    let quote = match text.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => return Err(format!("expected a quoted string, found {}", shown(text))),
    };
    let body = &text[1..];
    let end = body.find(quote).ok_or_else(|| format!("unterminated string {}", shown(text)))?;
    Ok((&body[..end], &body[end + 1..]))
}

fn boolean(text: &str) -> std::result::Result<(bool, &str), String> {
    if let Some(r) = text.strip_prefix("True") {
        Ok((true, r))
    } else if let Some(r) = text.strip_prefix("False") {
        Ok((false, r))
    } else {
        Err(format!("the .npy header's 'fortran_order' is {}, not True or False", shown(text)))
    }
}

/// A tuple of non-negative integers, `()`, `(3,)` or `(2, 3)` (a Python 2 `3L` too), and
/// the text after it.
fn tuple(text: &str) -> std::result::Result<(Vec<usize>, &str), String> {
    let mut rest =
        text.strip_prefix('(').ok_or_else(|| format!("the .npy header's 'shape' is {}, not a tuple", shown(text)))?;
    let mut dims = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(')') {
            return Ok((dims, r));
        }
        let end = rest.find([',', ')']).ok_or("the .npy header's 'shape' tuple is unterminated (no ')')")?;
        let token = rest[..end].trim();
        let digits = token.strip_suffix('L').unwrap_or(token);
        let dim = match digits.parse::<usize>() {
            Ok(d) if digits.bytes().all(|b| b.is_ascii_digit()) => d,
            _ if digits.strip_prefix('-').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) => {
                return Err(format!("the .npy header's shape has a negative dimension {}", shown(token)));
            }
            _ if token.is_empty() => return Err("the .npy header's shape has an empty dimension".into()),
            _ => return Err(format!("the .npy header's shape has a dimension {}, not a whole number", shown(token))),
        };
        if dims.len() == MAX_DIMS {
            return Err(format!("the .npy header's shape has more than {MAX_DIMS} dimensions"));
        }
        dims.push(dim);
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        }
    }
}

/// `(2, 3)`, `(3,)` or `()`, as Python writes a shape.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Text from the file, quoted, cut at 40 characters, on one line.
fn shown(text: &str) -> String {
    format!("'{}'", crate::error::one_line(text, 40))
}

/// The bytes of a version-1.0 `.npy` file of `shape` whose elements are `data`, of numpy
/// type `descr` (`<f4`, `<i8`).
fn encode(shape: &[usize], descr: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}", shape_text(shape));
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
    use crate::tensor::DType;

    /// A version-1.0 file with `header` (padded as numpy pads it) and `data`.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut header = header.to_string();
        let total = 10 + header.len() + 1;
        header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
        header.push('\n');
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

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
        let labels = parse(&encode_i64(&[2], &[-1, i64::MAX])).unwrap();
        assert_eq!(labels.to_vec::<i64>().unwrap(), vec![-1, i64::MAX]);
    }

    #[test]
    fn reads_what_numpy_writes_for_each_supported_dtype() {
        // np.save of np.array([3, 1, 4], dtype=np.int32), version 1.0.
        let data: Vec<u8> = [3i32, 1, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse(&file("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", &data)).unwrap();
        assert_eq!((t.dtype(), t.to_vec::<i64>().unwrap()), (DType::I64, vec![3, 1, 4]));
        let u8s = parse(&file("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", &[200, 7])).unwrap();
        assert_eq!(u8s.to_vec::<i64>().unwrap(), vec![200, 7]);
        let i8s = parse(&file("{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", &[0xff, 7])).unwrap();
        assert_eq!(i8s.to_vec::<i64>().unwrap(), vec![-1, 7]);
        let u16s = parse(&file("{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }", &[0xff, 0xff])).unwrap();
        assert_eq!(u16s.to_vec::<i64>().unwrap(), vec![65535]);
        let u32s = parse(&file("{'descr': '<u4', 'fortran_order': False, 'shape': (1,), }", &[0xff; 4])).unwrap();
        assert_eq!(u32s.to_vec::<i64>().unwrap(), vec![u32::MAX as i64]);
        let halves =
            parse(&file("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", &[0x00, 0x3c, 0x00, 0xc0]));
        let halves = halves.unwrap();
        assert_eq!((halves.dtype(), halves.to_vec::<f32>().unwrap()), (DType::F32, vec![1.0, -2.0]));
        let doubles =
            parse(&file("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }", &0.25f64.to_le_bytes()));
        assert_eq!(doubles.unwrap().to_vec::<f32>().unwrap(), vec![0.25]);
        // Keys in another order, double quotes and a Python 2 long.
        let t = parse(&file("{\"shape\": (1L,), \"fortran_order\": False, \"descr\": \"<f4\"}", &2.5f32.to_le_bytes()));
        assert_eq!(t.unwrap().to_vec::<f32>().unwrap(), vec![2.5]);
    }

    #[test]
    fn zero_and_one_dimensional_arrays_parse() {
        let scalar = parse(&file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &7.0f32.to_le_bytes()));
        let scalar = scalar.unwrap();
        assert_eq!((scalar.dims(), scalar.to_vec::<f32>().unwrap()), (&[][..], vec![7.0]));
        let empty = parse(&file("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", &[])).unwrap();
        assert_eq!(empty.dims(), &[0, 5]);
    }

    #[test]
    fn malformed_files_are_named_errors() {
        let err = |bytes: &[u8]| parse(bytes).unwrap_err();
        assert!(err(b"hello world").contains("not a .npy file"));
        assert!(err(b"\x93NUM").contains("truncated: 4 bytes, shorter than the 6-byte .npy magic"));
        assert!(err(b"\x93NUMPY\x01").contains("ends inside the .npy version"));
        assert!(err(b"\x93NUMPY\x01\x00\x05").contains("ends inside the .npy header length"));
        assert!(err(b"\x93NUMPY\x02\x00\x05\x00\x00").contains("ends inside the .npy header length"));
        assert!(err(b"\x93NUMPY\x04\x00\x05\x00").contains("version 4.0 is not supported"));
        assert!(err(b"\x93NUMPY\x01\x00\xff\xff{}").contains("says 65535 bytes, but only 2 follow it"));
        let mut bytes = encode_f32(&[2, 2], &[1.0; 4]);
        bytes.truncate(bytes.len() - 3);
        assert!(err(&bytes).contains("shape (2, 2) of 4-byte elements needs 16 bytes of data, the file has 13"));
        let mut fortran = encode_f32(&[1], &[0.0]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(err(&fortran).contains("Fortran-ordered"));
        let big_endian =
            encode_f32(&[1], &[0.0]).iter().map(|&b| if b == b'<' { b'>' } else { b }).collect::<Vec<u8>>();
        assert!(err(&big_endian).contains("dtype '>f4' is big-endian"));
        let header = |h: &str| err(&file(h, &[0; 8]));
        assert!(
            header("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }")
                .contains("dtype '<c8' is not supported (supported: float16")
        );
        assert!(header("{'descr': '<f4', 'shape': (1,), }").contains("no 'fortran_order'"));
        assert!(header("{'descr': '<f4', 'fortran_order': False, }").contains("no 'shape'"));
        assert!(header("{'fortran_order': False, 'shape': (2,), }").contains("no 'descr'"));
        assert!(header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)").contains("unterminated"));
        assert!(
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }").contains("negative dimension '-1'")
        );
        assert!(
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }")
                .contains("dimension 'x', not a whole number")
        );
        assert!(
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}").contains("unexpected key 'x'")
        );
        assert!(
            header("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}").contains("'descr' twice")
        );
        assert!(
            header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}").contains("structured dtypes")
        );
        assert!(header("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}").contains("not True or False"));
        let lying = file("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }", &[0; 960]);
        assert!(err(&lying).contains("needs 4000000000000 bytes of data, the file has 960"));
        let overflowing = file("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", &[]);
        assert!(err(&overflowing).contains("too large to address"));
        let mut not_text = file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
        not_text[12] = 0xff;
        assert!(err(&not_text).contains("not UTF-8 text"));
    }
}
