//! Weights in safetensors files, under torchvision's `state_dict` names, so a model moves
//! between scratchnet and PyTorch (`safetensors.torch.save_file(model.state_dict(), ...)`
//! and `load_file`) without renaming.
//!
//! Saving writes every parameter and buffer (as f32, and the batch norms'
//! `num_batches_tracked` as i64) to a temporary file beside the target and renames it into
//! place, so an interrupted save never leaves a half-written checkpoint. Loading is strict,
//! like `load_state_dict(strict=True)`: every tensor the model needs must be in the file with
//! its exact shape, and the file may hold nothing else, except that `num_batches_tracked`
//! may be missing. Floating-point tensors of other precisions (f64, f16, bf16) are converted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::output::write_atomically;
use crate::tensor::{DType, Tensor};

/// A host tensor as safetensors sees it.
struct HostView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn host_view(t: &Tensor) -> Result<HostView> {
    let (dtype, bytes) = match t.dtype() {
        DType::I64 => (Dtype::I64, bytemuck::cast_slice(&t.to_vec::<i64>()?).to_vec()),
        _ => {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec::<f32>()?;
            (Dtype::F32, bytemuck::cast_slice(&v).to_vec())
        }
    };
    Ok(HostView { dtype, shape: t.dims().to_vec(), bytes })
}

/// Saves the model's state_dict to `path`.
pub fn save(model: &dyn Model, path: &Path) -> Result<()> {
    let mut views: Vec<(String, HostView)> = Vec::new();
    for p in model.params() {
        views.push((p.name().to_string(), host_view(&p.value)?));
    }
    for (name, t) in model.buffers() {
        views.push((name, host_view(t)?));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("scratchnet_model".to_string(), model.name().to_string()),
    ]);
    let bytes = safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot encode the weights: {e}")))?;
    write_atomically(path, &bytes)
}

/// Decodes little-endian `data` of `dtype` into a tensor of `shape` (f32 for floats, i64).
fn tensor_from_view(path: &Path, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<Tensor> {
    fn words<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        data.chunks_exact(N).map(|c| {
            let mut w = [0u8; N];
            w.copy_from_slice(c);
            w
        })
    }
    let floats = |v: Vec<f32>| Tensor::from_vec(shape, v);
    let t = match dtype {
        Dtype::F32 => floats(words::<4>(data).map(f32::from_le_bytes).collect()),
        Dtype::F64 => floats(words::<8>(data).map(|w| f64::from_le_bytes(w) as f32).collect()),
        Dtype::F16 => floats(words::<2>(data).map(|w| half::f16::from_le_bytes(w).to_f32()).collect()),
        Dtype::BF16 => floats(words::<2>(data).map(|w| half::bf16::from_le_bytes(w).to_f32()).collect()),
        Dtype::I64 => Tensor::from_vec(shape, words::<8>(data).map(i64::from_le_bytes).collect::<Vec<i64>>()),
        other => {
            return Err(Error::file(
                path,
                format!("{name}: dtype {other:?} is not supported (f32, f64, f16, bf16, i64)"),
            ));
        }
    };
    t.map_err(|_| Error::file(path, format!("{name}: the data does not fit its shape {shape:?} and dtype {dtype:?}")))
}

/// Loads weights from `path` into `model`, placing each on the device its parameter lives on.
pub fn load(model: &mut dyn Model, path: &Path) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file =
        SafeTensors::deserialize(&bytes).map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
    let mut in_file: HashMap<String, Tensor> = HashMap::new();
    for (name, view) in file.tensors() {
        let t = tensor_from_view(path, &name, view.dtype(), view.shape(), view.data())?;
        in_file.insert(name, t);
    }
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
                    return Err(Error::file(path, format!("{name} should hold integers, the file has {}", t.dtype())));
                }
                t
            } else {
                if !t.dtype().is_float() {
                    return Err(Error::file(path, format!("{name} should hold floats, the file has {}", t.dtype())));
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
                "holds {extra}, which {model_name} does not have ({} unexpected tensors; is the file for another model?)",
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
