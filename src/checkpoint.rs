//! Weights in safetensors files, under torchvision's `state_dict` names, so a model moves
//! between scratchnet and PyTorch (`safetensors.torch.save_file(model.state_dict(), ...)`
//! and `load_file`) without renaming.
//!
//! Saving writes every parameter and buffer (as f32, and the batch norms'
//! `num_batches_tracked` as i64) to a temporary file beside the target and renames it into
//! place, so an interrupted save never leaves a half-written checkpoint. The encoding is
//! written here rather than by the `safetensors` crate, whose writer puts the metadata in
//! hash order: the same weights always give the same bytes. Reading goes through the crate,
//! which validates the layout, and then through checks of our own. Loading is strict,
//! like `load_state_dict(strict=True)`: every tensor the model needs must be in the file with
//! its exact shape, and the file may hold nothing else, except that `num_batches_tracked`
//! may be missing. Floating-point tensors of other precisions (f64, f16, bf16) are converted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::SafeTensorError;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::output::write_atomically;
use crate::tensor::{DType, Tensor};

/// The largest JSON header read. The `safetensors` crate allows 100 MB, but its JSON parse
/// holds up to some 30 times the header's length for a hostile one (every number of a long
/// shape becomes a buffered JSON value), and no scratchnet model needs more than 140 KB.
const MAX_HEADER: usize = 4 << 20;
/// The most dimensions a tensor may have (as numpy), which also keeps messages that quote a
/// shape short.
const MAX_DIMS: usize = 64;

/// The safetensors name of a dtype.
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
    }
}

/// The little-endian bytes of a tensor's elements.
fn le_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => t.to_vec::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// The bytes of a safetensors file holding `tensors` (each in its own dtype) and `metadata`.
///
/// The same tensors give the same bytes: the metadata keys are sorted, and the tensors are
/// laid out by descending element size, then by name (the order the `safetensors` crate's
/// own writer uses for these dtypes, which keeps every tensor aligned to its element size).
/// The layout is an 8-byte little-endian header length, the JSON header padded with spaces
/// to a multiple of 8 bytes, then the tensors' data back to back.
pub fn encode(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    order.sort_by(|(a, ta), (b, tb)| tb.dtype().size_in_bytes().cmp(&ta.dtype().size_in_bytes()).then(a.cmp(b)));
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::argument("safetensors", format!("two tensors are named {}", w[0].0)));
    }
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut entries = Vec::with_capacity(order.len() + 1);
    if !metadata.is_empty() {
        let pairs: Vec<String> = metadata.iter().map(|(k, v)| format!("{}:{}", json(k), json(v))).collect();
        entries.push(format!("\"__metadata__\":{{{}}}", pairs.join(",")));
    }
    let mut data = Vec::new();
    for (name, t) in order {
        let start = data.len();
        data.extend(le_bytes(t)?);
        let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{start},{}]}}",
            json(name),
            dtype_name(t.dtype()),
            dims.join(","),
            data.len()
        ));
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Saves the model's state_dict to `path`: floating-point tensors as F32, integer buffers
/// (`num_batches_tracked`) as I64.
pub fn save(model: &dyn Model, path: &Path) -> Result<()> {
    // A model spread over devices saves as the one-device network it computes.
    let merged = model.merged()?;
    let model = merged.as_deref().unwrap_or(model);
    let as_saved = |t: &Tensor| if t.dtype() == DType::I64 { Ok(t.clone()) } else { t.to_dtype(DType::F32) };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for p in model.params() {
        tensors.push((p.name().to_string(), as_saved(&p.value)?));
    }
    for (name, t) in model.buffers() {
        tensors.push((name, as_saved(t)?));
    }
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("scratchnet_model".to_string(), model.name().to_string()),
    ]);
    let bytes =
        encode(&tensors, &metadata).map_err(|e| Error::file(path, format!("cannot encode the weights: {e}")))?;
    write_atomically(path, &bytes)
}

/// Decodes the bytes of a safetensors file into its tensors, in the order of their data,
/// each in its own dtype (F32, F64, F16, BF16 or I64; other dtypes are refused). The
/// `safetensors` crate checks the layout: the header length, the JSON, and data offsets that
/// tile the data exactly (no gaps, overlaps or bytes past the end). The error is one line.
pub fn read_tensors(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let follow = bytes.len().saturating_sub(8) as u64;
    if let Some(n) = header_length(bytes).filter(|&n| n > MAX_HEADER as u64 && n <= follow) {
        return Err(format!(
            "the header is {n} bytes; scratchnet reads headers of up to {} MiB (densenet201's is 140 KB)",
            MAX_HEADER >> 20
        ));
    }
    let (header_len, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {}", layout_error(bytes, e)))?;
    let data = bytes.get(8 + header_len..).unwrap_or_default();
    let mut out = Vec::new();
    for name in header.offset_keys() {
        let Some(info) = header.info(&name) else { continue };
        let (start, end) = info.data_offsets;
        let data =
            data.get(start..end).ok_or_else(|| format!("{}'s data_offsets are outside the file", shown(&name)))?;
        if info.shape.len() > MAX_DIMS {
            return Err(format!("{} has {} dimensions; at most {MAX_DIMS} are read", shown(&name), info.shape.len()));
        }
        let shape = info.shape.clone();
        let t = match info.dtype {
            Dtype::F32 => Tensor::from_vec(shape, words(data).map(f32::from_le_bytes).collect::<Vec<_>>()),
            Dtype::F64 => Tensor::from_vec(shape, words(data).map(f64::from_le_bytes).collect::<Vec<_>>()),
            Dtype::F16 => Tensor::from_vec(shape, words(data).map(half::f16::from_le_bytes).collect::<Vec<_>>()),
            Dtype::BF16 => Tensor::from_vec(shape, words(data).map(half::bf16::from_le_bytes).collect::<Vec<_>>()),
            Dtype::I64 => Tensor::from_vec(shape, words(data).map(i64::from_le_bytes).collect::<Vec<_>>()),
            other => {
                return Err(format!(
                    "{} has dtype {other}, which is not read (weights are F32, F64, F16 or BF16, counters I64)",
                    shown(&name)
                ));
            }
        };
        out.push((name, t.map_err(|e| e.to_string())?));
    }
    Ok(out)
}

/// The consecutive `N`-byte words of `data`.
fn words<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    })
}

/// The header length a safetensors file starts with, if it is long enough to hold one.
fn header_length(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8).map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
}

/// What is wrong with the layout of a file the `safetensors` crate refused, in words.
fn layout_error(bytes: &[u8], e: SafeTensorError) -> String {
    let follow = bytes.len().saturating_sub(8);
    let header_len = header_length(bytes);
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("{} bytes is shorter than the 8-byte header length it starts with", bytes.len())
        }
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => match header_len {
            Some(n) if n > follow as u64 => {
                format!("the header length field says {n} bytes, but only {follow} follow it")
            }
            _ => shown(&e.to_string()),
        },
        SafeTensorError::InvalidHeader(e) => format!("the header is not UTF-8 text ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("the header is not safetensors JSON: {}", shown(&e.to_string()))
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "the data_offsets of {} leave a gap or an overlap (each tensor's data must start where the previous one's ends, the first at 0)",
            shown(&name)
        ),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data_offsets span a different number of bytes than its shape and dtype need".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors' data_offsets do not end where the file ends (the data must be covered exactly)".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape is too large to address".into(),
        other => shown(&other.to_string()),
    }
}

/// Text from the file or the safetensors crate, cut at 160 characters, on one line.
fn shown(text: &str) -> String {
    crate::error::one_line(text, 160)
}

/// Loads weights from `path` into `model`, placing each on the device its parameter lives on.
pub fn load(model: &mut dyn Model, path: &Path) -> Result<()> {
    let bytes = crate::input::read(path)?;
    let mut in_file: HashMap<String, Tensor> =
        read_tensors(&bytes).map_err(|msg| Error::file(path, msg))?.into_iter().collect();
    drop(bytes);
    let model_name = model.name().to_string();
    let classes = model.num_classes();
    let hint = |name: &str| -> String {
        // A classifier of another width is the usual reason: say which flag fixes it.
        if ["fc.", "fc8.", "classifier."].iter().any(|p| name.starts_with(p)) {
            format!(" (the model was built with {classes} classes: set --num-classes to match the file)")
        } else {
            String::new()
        }
    };
    let take =
        |in_file: &mut HashMap<String, Tensor>, name: &str, want: &Tensor, optional: bool| -> Result<Option<Tensor>> {
            let Some(t) = in_file.remove(name) else {
                if optional {
                    return Ok(None);
                }
                return Err(Error::file(
                    path,
                    format!("has no tensor {name}, which {model_name} needs (is the file for another model?)"),
                ));
            };
            if t.shape() != want.shape() {
                return Err(Error::file(
                    path,
                    format!(
                        "{name} has shape {} in the file but {model_name} needs {}{}",
                        t.shape(),
                        want.shape(),
                        hint(name)
                    ),
                ));
            }
            let t = if want.dtype() == DType::I64 {
                if t.dtype() != DType::I64 {
                    let dtype = dtype_name(t.dtype());
                    return Err(Error::file(path, format!("{name} should hold integers (I64), the file has {dtype}")));
                }
                t
            } else {
                if !t.dtype().is_float() {
                    let dtype = dtype_name(t.dtype());
                    let msg = format!("{name} should hold floats (F32, F64, F16 or BF16), the file has {dtype}");
                    return Err(Error::file(path, msg));
                }
                t.to_dtype(want.dtype())?
            };
            Ok(Some(t.to_device(want.device())?))
        };
    // Check everything before changing anything, so a bad file leaves the model as it was.
    let mut new_params = Vec::new();
    for p in model.params() {
        new_params.push(take(&mut in_file, p.name(), &p.value, false)?);
    }
    let mut new_buffers = Vec::new();
    for (name, t) in model.buffers() {
        new_buffers.push(take(&mut in_file, &name, t, name.ends_with("num_batches_tracked"))?);
    }
    if let Some(extra) = in_file.keys().min() {
        return Err(Error::file(
            path,
            format!(
                "holds {}, which {model_name} does not have ({} unexpected tensors; is the file for another model?)",
                shown(extra),
                in_file.len()
            ),
        ));
    }
    for (p, t) in model.params_mut().into_iter().zip(new_params) {
        if let Some(t) = t {
            p.value = t;
            p.grad = None;
        }
    }
    for ((_, b), t) in model.buffers_mut().into_iter().zip(new_buffers) {
        if let Some(t) = t {
            *b = t;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;
    use std::fs;

    use safetensors::tensor::View;

    use super::*;

    /// A tensor as the `safetensors` crate's writer takes it.
    struct Raw(Dtype, Vec<usize>, Vec<u8>);

    impl View for &Raw {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    #[test]
    fn the_encoding_is_the_one_the_safetensors_crate_writes() {
        let tensors = vec![
            ("b.weight".to_string(), Tensor::from_vec([3], vec![1.0f32, -2.0, 0.5]).unwrap()),
            ("a.count".to_string(), Tensor::from_vec([], vec![7i64]).unwrap()),
            ("a.weight".to_string(), Tensor::from_vec([1, 2], vec![3.0f32, 4.0]).unwrap()),
        ];
        let ours = encode(&tensors, &BTreeMap::from([("format".to_string(), "pt".to_string())])).unwrap();
        let raw: Vec<(String, Raw)> = tensors
            .iter()
            .map(|(n, t)| {
                let dtype = if t.dtype() == DType::I64 { Dtype::I64 } else { Dtype::F32 };
                (n.clone(), Raw(dtype, t.dims().to_vec(), le_bytes(t).unwrap()))
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let theirs = safetensors::tensor::serialize(raw.iter().map(|(n, r)| (n.as_str(), r)), Some(metadata)).unwrap();
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        assert_eq!(ours, theirs);
        // The i64 first, then the f32s by name, each starting where the previous ends.
        let back = read_tensors(&ours).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.count", "a.weight", "b.weight"]);
        assert_eq!(back[2].1.to_vec::<f32>().unwrap(), vec![1.0, -2.0, 0.5]);
        assert_eq!(back[0].1.to_vec::<i64>().unwrap(), vec![7]);
        assert!(encode(&[tensors[0].clone(), tensors[0].clone()], &BTreeMap::new()).is_err());
    }

    #[test]
    fn saving_is_deterministic_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("scratchnet-checkpoint-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let model = crate::models::build("resnet20", 10, 4).unwrap();
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let path = dir.join(format!("w{i}.safetensors"));
                save(model.as_ref(), &path).unwrap();
                fs::read(&path).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]), "two saves of one model differ");
        let file = SafeTensors::deserialize(&files[0]).unwrap();
        let metadata = SafeTensors::read_metadata(&files[0]).unwrap().1.metadata().clone().unwrap();
        assert_eq!(metadata.get("scratchnet_model").map(String::as_str), Some("resnet20"));
        assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(file.len(), model.params().len() + model.buffers().len());
        let mut other = crate::models::build("resnet20", 10, 5).unwrap();
        load(other.as_mut(), &dir.join("w0.safetensors")).unwrap();
        for (a, b) in model.params().iter().zip(other.params()) {
            assert_eq!(a.value.to_vec::<f32>().unwrap(), b.value.to_vec::<f32>().unwrap(), "{}", a.name());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
