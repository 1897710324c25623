//! The tensor: a shape, and contiguous row-major storage on one device.
//!
//! Storage sits behind an `Arc`, so cloning a tensor is cheap and shares the memory: the
//! autograd tape keeps activations alive this way without copying them. Writing through
//! [`Tensor::as_mut_slice`] or [`Tensor::gpu_buffer_mut`] copies first if the memory is
//! shared (copy-on-write), so a clone never changes under its owner's feet.

mod dtype;
mod shape;

use std::sync::{Arc, Weak};

pub use dtype::{DType, Element, Float};
pub use shape::Shape;

use crate::device::{CpuStorage, Device, GpuBuffer, Storage};
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Storage>,
}

impl Tensor {
    /// Wraps a host vector; its length must equal the number of elements of `shape`.
    pub fn from_vec<T: Element>(shape: impl Into<Shape>, data: Vec<T>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for shape {shape}", shape.numel()),
                format!("{} values", data.len()),
            ));
        }
        Ok(Tensor::from_storage(shape, Storage::Cpu(T::into_storage(data))))
    }

    /// Wraps storage whose length is already known to fit the shape (ops use this).
    pub(crate) fn from_storage(shape: Shape, storage: Storage) -> Tensor {
        debug_assert_eq!(shape.numel(), storage.len(), "storage length for {shape}");
        Tensor { shape, storage: Arc::new(storage) }
    }

    /// A tensor over a device buffer computed by an op whose output shape is known.
    pub(crate) fn from_gpu(shape: impl Into<Shape>, buf: GpuBuffer) -> Tensor {
        Tensor::from_storage(shape.into(), Storage::Gpu(buf))
    }

    /// A host tensor made from a vector computed by an op whose output shape is known.
    pub(crate) fn from_cpu<T: Element>(shape: impl Into<Shape>, data: Vec<T>) -> Tensor {
        Tensor::from_storage(shape.into(), Storage::Cpu(T::into_storage(data)))
    }

    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor::from_cpu(Shape::scalar(), vec![v])
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        Tensor::from_storage(shape, Storage::Cpu(CpuStorage::zeros(dtype, n)))
    }

    pub fn zeros_like(t: &Tensor) -> Tensor {
        Tensor::zeros(t.shape.clone(), t.dtype())
    }

    /// Every element set to `value` (converted to `dtype`).
    pub fn full(shape: impl Into<Shape>, value: f64, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        Tensor::from_f64_values(shape, dtype, (0..n).map(|_| value))
    }

    /// Normally distributed values with the given mean and standard deviation, from a seed.
    pub fn randn(shape: impl Into<Shape>, mean: f64, std: f64, dtype: DType, seed: u64) -> Tensor {
        let shape = shape.into();
        let mut rng = Rng::new(seed);
        let n = shape.numel();
        Tensor::from_f64_values(shape, dtype, (0..n).map(|_| mean + std * rng.normal()))
    }

    /// Uniformly distributed values in `[lo, hi)`, from a seed.
    pub fn uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
        let shape = shape.into();
        let mut rng = Rng::new(seed);
        let n = shape.numel();
        Tensor::from_f64_values(shape, dtype, (0..n).map(|_| lo + (hi - lo) * rng.uniform()))
    }

    fn from_f64_values(shape: Shape, dtype: DType, values: impl Iterator<Item = f64>) -> Tensor {
        fn collect<T: Element>(values: impl Iterator<Item = f64>) -> CpuStorage {
            T::into_storage(values.map(T::from_f64).collect())
        }
        let storage = match dtype {
            DType::F32 => collect::<f32>(values),
            DType::F64 => collect::<f64>(values),
            DType::F16 => collect::<half::f16>(values),
            DType::BF16 => collect::<half::bf16>(values),
            DType::I64 => collect::<i64>(values),
        };
        Tensor::from_storage(shape, Storage::Cpu(storage))
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements in host memory, if the tensor lives there and holds `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => T::slice(s).ok_or_else(|| self.wrong_dtype::<T>()),
            Storage::Gpu(_) => Err(self.not_on_host()),
        }
    }

    fn not_on_host(&self) -> Error {
        Error::Device(format!("the tensor lives on {}; copy it to the cpu first (Tensor::to_device)", self.device()))
    }

    /// The storage, unshared: copied first (on its device) if another tensor shares it.
    fn storage_mut(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        Arc::get_mut(&mut self.storage).ok_or_else(|| Error::Device("tensor storage is shared".into()))
    }

    /// Mutable access to the elements; copies first when the storage is shared.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        let dtype = self.dtype();
        if !self.device().is_cpu() {
            return Err(self.not_on_host());
        }
        match self.storage_mut()? {
            Storage::Cpu(s) => T::slice_mut(s).ok_or(Error::Mismatch {
                op: "tensor",
                detail: format!("wanted {} elements, tensor holds {dtype}", T::DTYPE),
            }),
            Storage::Gpu(_) => Err(Error::Device("a GPU tensor has no host slice".into())),
        }
    }

    /// The device buffer of a tensor on `cuda` or `emu`.
    pub fn gpu_buffer(&self) -> Result<&GpuBuffer> {
        match &*self.storage {
            Storage::Gpu(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::Device("the tensor lives on the cpu, not on a GPU device".into())),
        }
    }

    /// The device buffer, unshared (copied on the device first if shared), for in-place kernels.
    pub fn gpu_buffer_mut(&mut self) -> Result<&mut GpuBuffer> {
        match self.storage_mut()? {
            Storage::Gpu(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::Device("the tensor lives on the cpu, not on a GPU device".into())),
        }
    }

    /// A copy on `device` (the same tensor, shared, if it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        // From one GPU (or emulated device) to another: directly, without a host copy where
        // the two can reach each other's memory.
        if let (Storage::Gpu(src), Some(gpu)) = (&*self.storage, device.gpu()?) {
            return Ok(Tensor::from_storage(self.shape.clone(), Storage::Gpu(gpu.copy_from_device(src)?)));
        }
        let host = self.to_host()?;
        let storage = match device.gpu()? {
            None => Storage::Cpu(host),
            Some(gpu) => Storage::Gpu(gpu.upload(host.dtype(), host.len(), host.as_bytes())?),
        };
        Ok(Tensor::from_storage(self.shape.clone(), storage))
    }

    /// The elements as host storage (downloaded from the device if need be).
    fn to_host(&self) -> Result<CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => s.try_clone(),
            Storage::Gpu(b) => {
                let mut host = CpuStorage::try_zeros(b.dtype(), b.len())?;
                b.gpu().download(b, host.as_bytes_mut())?;
                Ok(host)
            }
        }
    }

    /// Zeros on a device.
    pub fn zeros_on(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device.gpu()? {
            None => Ok(Tensor::zeros(shape, dtype)),
            Some(gpu) => {
                let n = shape.numel();
                Ok(Tensor::from_storage(shape, Storage::Gpu(gpu.zeros(dtype, n)?)))
            }
        }
    }

    fn wrong_dtype<T: Element>(&self) -> Error {
        Error::Mismatch { op: "tensor", detail: format!("wanted {} elements, tensor holds {}", T::DTYPE, self.dtype()) }
    }

    /// A copy of the elements in a host vector (downloaded from the device if need be).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        match &*self.storage {
            Storage::Cpu(_) => self.as_slice::<T>().map(<[T]>::to_vec),
            Storage::Gpu(_) => {
                let host = self.to_host()?;
                T::slice(&host).map(<[T]>::to_vec).ok_or_else(|| self.wrong_dtype::<T>())
            }
        }
    }

    /// The elements converted to f64, whatever the dtype and device (for tests and printing).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let convert = |s: &CpuStorage| -> Vec<f64> {
            match s {
                CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
                CpuStorage::F64(v) => v.clone(),
                CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
                CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
                CpuStorage::I64(v) => v.iter().map(|&x| x as f64).collect(),
            }
        };
        match &*self.storage {
            Storage::Cpu(s) => Ok(convert(s)),
            Storage::Gpu(_) => Ok(convert(&self.to_host()?)),
        }
    }

    /// The value of a one-element tensor (a loss, say).
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape_of("item", "one element", "tensor", &self.shape));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// The same elements under another shape with as many elements. Shares the storage.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("a shape with {} elements", self.numel()),
                format!("{shape} ({} elements)", shape.numel()),
            ));
        }
        Ok(Tensor { shape, storage: Arc::clone(&self.storage) })
    }

    /// A copy converted to another element type (rounding to nearest for the half types).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if !self.dtype().is_float() || !dtype.is_float() {
            return Err(Error::argument("to_dtype", format!("cannot convert {} to {dtype}", self.dtype())));
        }
        let converted = Tensor::from_f64_values(self.shape.clone(), dtype, self.to_f64_vec()?.into_iter());
        converted.to_device(self.device())
    }

    /// True when both tensors share one allocation (a reshape, a clone).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// An identity of the storage, equal for tensors that share it (views, clones).
    pub fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.storage) as usize
    }

    /// A weak handle on the storage. While it lives, the storage's [`Tensor::storage_id`] is
    /// never given to another storage (the handle holds the `Arc`'s allocation, though not the
    /// elements, which are freed with the last tensor), and a write through a tensor that
    /// shares the storage copies first, as [`Tensor::as_mut_slice`] does for a shared one.
    pub(crate) fn downgrade(&self) -> Weak<Storage> {
        Arc::downgrade(&self.storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_the_length() {
        let err = Tensor::from_vec([2, 3], vec![1.0f32; 5]).unwrap_err();
        assert_eq!(err.to_string(), "tensor: expected 6 values for shape [2, 3], got 5 values");
    }

    #[test]
    fn reshape_shares_and_writes_copy() {
        let a = Tensor::from_vec([2, 3], vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap();
        let mut b = a.reshape([3, 2]).unwrap();
        assert!(b.shares_storage_with(&a));
        b.as_mut_slice::<f32>().unwrap()[0] = 9.0;
        assert!(!b.shares_storage_with(&a));
        assert_eq!(a.as_slice::<f32>().unwrap()[0], 1.0);
        assert_eq!(b.as_slice::<f32>().unwrap()[0], 9.0);
        assert!(a.reshape([4]).is_err());
    }

    #[test]
    fn dtype_conversion_rounds_to_half() {
        let a = Tensor::from_vec([3], vec![1.0f32, 0.1, -2.5]).unwrap();
        let h = a.to_dtype(DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        let back = h.to_f64_vec().unwrap();
        assert_eq!(back[0], 1.0);
        assert!((back[1] - 0.1).abs() < 1e-4 && back[1] != 0.1f32 as f64);
        assert_eq!(back[2], -2.5);
        assert!(a.as_slice::<f64>().is_err());
        let labels = Tensor::from_vec([2], vec![1i64, 2]).unwrap();
        assert!(labels.to_dtype(DType::F32).is_err());
    }

    #[test]
    fn random_tensors_follow_their_seed() {
        let a = Tensor::randn([1000], 0.0, 2.0, DType::F64, 7);
        let b = Tensor::randn([1000], 0.0, 2.0, DType::F64, 7);
        let c = Tensor::randn([1000], 0.0, 2.0, DType::F64, 8);
        assert_eq!(a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
        assert_ne!(a.to_f64_vec().unwrap(), c.to_f64_vec().unwrap());
        let v = a.to_f64_vec().unwrap();
        let mean = v.iter().sum::<f64>() / 1000.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.2, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.2, "std {}", var.sqrt());
    }
}
