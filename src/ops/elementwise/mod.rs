//! Element-wise ops: ReLU, addition (the residual shortcut), and in-place accumulation
//! (how the autograd tape sums the gradients of a value used more than once).

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{Element, Float, Tensor};

/// Elements handed to one rayon task: large enough that scheduling costs nothing.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("two tensors of one shape, {}", a.shape()),
            format!("{} and {}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// `f` applied to each element, in parallel chunks.
fn map<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Result<Vec<T>> {
    let mut y = filled(x.len(), T::ZERO)?;
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x)));
    Ok(y)
}

/// `f` applied to each pair of elements of two equally long slices, in parallel chunks.
fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Result<Vec<T>> {
    let mut y = filled(a.len(), T::ZERO)?;
    y.par_chunks_mut(PAR_CHUNK).zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK))).for_each(|(y, (a, b))| {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = f(a, b);
        }
    });
    Ok(y)
}

/// A binary op on two tensors of one shape, dtype and device.
fn binary<F: BinaryFn>(op: &'static str, a: &Tensor, b: &Tensor, names: [&str; 2], f: F) -> Result<Tensor> {
    same_shape(op, a, b)?;
    let (dtype, device) = common_dtype(op, &[(names[0], a), (names[1], b)])?;
    if let Some(gpu) = gpu_f32(op, dtype, device)? {
        let y = gpu.alloc(dtype, a.numel())?;
        gpu.launch(
            KernelCall::vec4(F::KERNEL, a.numel())
                .buf(&y)
                .buf(a.gpu_buffer()?)
                .buf(b.gpu_buffer()?)
                .i64(to_i64(a.numel())),
        )?;
        return Ok(Tensor::from_gpu(a.shape().clone(), y));
    }
    with_float_type!(dtype, op, |T| {
        let y = zip_map(host::<T>(a)?, host::<T>(b)?, |x, y| f.apply(x, y))?;
        Ok(Tensor::from_cpu(a.shape().clone(), y))
    })
}

/// A binary element function usable at every float type (closures cannot be generic).
trait BinaryFn: Sync {
    /// The kernel in kernels/elementwise.cu that computes the same function.
    const KERNEL: &'static str;
    fn apply<T: Float>(&self, a: T, b: T) -> T;
}

struct Add;
impl BinaryFn for Add {
    const KERNEL: &'static str = "add_f32";
    fn apply<T: Float>(&self, a: T, b: T) -> T {
        a + b
    }
}

struct Mul;
impl BinaryFn for Mul {
    const KERNEL: &'static str = "mul_f32";
    fn apply<T: Float>(&self, a: T, b: T) -> T {
        a * b
    }
}

/// ReLU's gradient: `dy` where the output `y` was positive (or NaN), else 0.
struct ReluGrad;
impl BinaryFn for ReluGrad {
    const KERNEL: &'static str = "relu_bwd_f32";
    fn apply<T: Float>(&self, dy: T, y: T) -> T {
        if y > T::ZERO || y.is_nan() { dy } else { T::ZERO }
    }
}

/// A tensor of one value, made where it will live: on a GPU by a fill kernel, so that it can
/// be part of a captured graph (a copy from the host could not).
pub fn full(
    shape: impl Into<crate::tensor::Shape>,
    value: f64,
    dtype: crate::tensor::DType,
    device: crate::device::Device,
) -> Result<Tensor> {
    let shape = shape.into();
    if let Some(gpu) = gpu_f32("full", dtype, device)? {
        let n = shape.numel();
        let y = gpu.alloc(dtype, n)?;
        gpu.launch(KernelCall::vec4("fill_f32", n).buf(&y).f32(value as f32).i64(to_i64(n)))?;
        return Ok(Tensor::from_gpu(shape, y));
    }
    Tensor::full(shape, value, dtype).to_device(device)
}

/// `max(x, 0)`. NaN passes through, as in `torch.relu`.
pub fn relu_forward(x: &Tensor) -> Result<Tensor> {
    if let Some(gpu) = gpu_f32("relu", x.dtype(), x.device())? {
        let y = gpu.alloc(x.dtype(), x.numel())?;
        gpu.launch(KernelCall::vec4("relu_fwd_f32", x.numel()).buf(&y).buf(x.gpu_buffer()?).i64(to_i64(x.numel())))?;
        return Ok(Tensor::from_gpu(x.shape().clone(), y));
    }
    with_float_type!(x.dtype(), "relu", |T| {
        let y = map(host::<T>(x)?, |x: T| if x > T::ZERO || x.is_nan() { x } else { T::ZERO })?;
        Ok(Tensor::from_cpu(x.shape().clone(), y))
    })
}

/// `dy` where the output was positive (or NaN), else 0. Reading the output instead of the
/// input lets the input be freed; the two agree because `y > 0` exactly where `x > 0`.
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("relu backward", dy, y, ["output gradient", "output"], ReluGrad)
}

/// `a + b` for two tensors of one shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, ["left", "right"], Add)
}

/// `a ⊙ b`, the element-wise product (used by dropout's mask).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, ["left", "right"], Mul)
}

/// `acc += x`, in place.
pub fn add_assign(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    same_shape("add_assign", acc, x)?;
    let (dtype, device) = common_dtype("add_assign", &[("accumulator", acc), ("addend", x)])?;
    if let Some(gpu) = gpu_f32("add_assign", dtype, device)? {
        let n = x.numel();
        let xb = x.gpu_buffer()?;
        let accb = acc.gpu_buffer_mut()?;
        return gpu.launch(KernelCall::vec4("add_assign_f32", n).buf(accb).buf(xb).i64(to_i64(n)));
    }
    with_float_type!(dtype, "add_assign", |T| {
        let xs = host::<T>(x)?;
        let acc = acc.as_mut_slice::<T>()?;
        acc.par_chunks_mut(PAR_CHUNK)
            .zip(xs.par_chunks(PAR_CHUNK))
            .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, &x)| *a += x));
        Ok(())
    })
}

/// `t *= s`, in place.
pub fn scale_in_place(t: &mut Tensor, s: f64) -> Result<()> {
    let (dtype, device) = (t.dtype(), t.device());
    if let Some(gpu) = gpu_f32("scale", dtype, device)? {
        let n = t.numel();
        let tb = t.gpu_buffer_mut()?;
        return gpu.launch(KernelCall::vec4("scale_f32", n).buf(tb).f32(s as f32).i64(to_i64(n)));
    }
    with_float_type!(dtype, "scale", |T| {
        let s = T::from_f64(s);
        t.as_mut_slice::<T>()?.par_chunks_mut(PAR_CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= s));
        Ok(())
    })
}

/// How many values of the tensors are NaN or infinite, all of them on one device. On a GPU
/// one kernel per tensor adds into one counter, and only the counter comes back to the host.
pub fn count_non_finite(ts: &[&Tensor]) -> Result<u64> {
    const OP: &str = "count non-finite";
    let Some(first) = ts.first() else { return Ok(0) };
    if let Some(gpu) = gpu_f32(OP, first.dtype(), first.device())? {
        let count = gpu.zeros(crate::tensor::DType::F32, 1)?;
        for t in ts {
            common_dtype(OP, &[("first tensor", first), ("tensor", t)])?;
            let n = t.numel();
            gpu.launch(
                KernelCall::elementwise("count_non_finite_f32", n).buf(&count).buf(t.gpu_buffer()?).i64(to_i64(n)),
            )?;
        }
        let mut bytes = [0u8; 4];
        gpu.download(&count, &mut bytes)?;
        return Ok(u64::from(u32::from_le_bytes(bytes)));
    }
    let mut bad = 0u64;
    for t in ts {
        common_dtype(OP, &[("first tensor", first), ("tensor", t)])?;
        bad += with_float_type!(t.dtype(), OP, |T| {
            Ok(host::<T>(t)?.par_iter().filter(|v| !v.to_f64().is_finite()).count() as u64)
        })?;
    }
    Ok(bad)
}

/// Σ a·b over all elements, accumulated in f64 (the gradient checks use it to turn any
/// output into a scalar).
pub fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    same_shape("dot", a, b)?;
    common_dtype("dot", &[("left", a), ("right", b)])?;
    // Copied to the host and summed in f64 on any device: this is a checking tool.
    let (xa, xb) = (a.to_f64_vec()?, b.to_f64_vec()?);
    Ok(xa.iter().zip(&xb).map(|(a, b)| a * b).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_add_mul_by_hand() {
        let x = Tensor::from_vec([4], vec![-1.0f32, 0.0, 2.0, -3.5]).unwrap();
        let y = relu_forward(&x).unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 0.0, 2.0, 0.0]);
        let dy = Tensor::from_vec([4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(relu_backward(&dy, &y).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 0.0, 3.0, 0.0]);
        assert_eq!(add(&x, &dy).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 2.0, 5.0, 0.5]);
        assert_eq!(mul(&x, &dy).unwrap().to_vec::<f32>().unwrap(), vec![-1.0, 0.0, 6.0, -14.0]);
        assert_eq!(dot(&x, &dy).unwrap(), -9.0);
        let mut acc = x.clone();
        add_assign(&mut acc, &dy).unwrap();
        assert_eq!(acc.to_vec::<f32>().unwrap(), vec![0.0, 2.0, 5.0, 0.5]);
        assert_eq!(x.to_vec::<f32>().unwrap()[0], -1.0, "the clone's source is untouched");
    }

    #[test]
    fn relu_passes_nan_like_pytorch() {
        let x = Tensor::from_vec([2], vec![f32::NAN, -1.0]).unwrap();
        let y = relu_forward(&x).unwrap().to_vec::<f32>().unwrap();
        assert!(y[0].is_nan() && y[1] == 0.0);
    }

    #[test]
    fn mismatched_shapes_and_dtypes_are_errors() {
        let a = Tensor::zeros([2, 3], crate::DType::F32);
        let b = Tensor::zeros([3, 2], crate::DType::F32);
        let c = Tensor::zeros([2, 3], crate::DType::F64);
        assert_eq!(
            add(&a, &b).unwrap_err().to_string(),
            "add: expected two tensors of one shape, [2, 3], got [2, 3] and [3, 2]"
        );
        assert!(add(&a, &c).unwrap_err().to_string().contains("left is f32 but right is f64"));
        let labels = Tensor::from_vec([1], vec![1i64]).unwrap();
        assert!(relu_forward(&labels).unwrap_err().to_string().contains("dtype i64"));
    }
}
