//! Data sets, batches and augmentation.
//!
//! | `--data` | what | normalisation | augmentation (unless `--no-augment`) |
//! |---|---|---|---|
//! | `synthetic` | shapes drawn from the seed ([`synthetic`]) | `(v − ½) / ¼`, centred on 0 | 4-pixel padded random crop, flip |
//! | `cifar10:DIR` | the CIFAR-10 binary files ([`cifar`]) | CIFAR-10 mean and std per channel | 4-pixel padded random crop, flip |
//! | `npy:X.npy,Y.npy` | arrays from numpy ([`npy`]); the last tenth is held out | none: used as given | 4-pixel padded random crop, flip |
//! | `folder:DIR` | `DIR/train/CLASS/*.jpg`, `DIR/val/CLASS/*.jpg` ([`folder`]) | ImageNet mean and std | resize to 256, random 224 crop (227 for AlexNet), flip, PCA lighting |
//!
//! Every random choice of a batch comes from a seed and the position in the batch, so
//! batches are the same from run to run, and images can be loaded in parallel.

pub mod cifar;
pub mod folder;
pub mod npy;
pub mod synthetic;

use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A set of labelled images.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> usize;
    /// `[C, H, W]` of the images it gives.
    fn image_shape(&self) -> [usize; 3];
    /// Image `i`, normalised, and its label. With a generator, the training augmentation is
    /// applied, drawing from it.
    fn get(&self, i: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, i64)>;
}

/// A training split and a held-out split.
pub struct Split {
    pub train: Box<dyn Dataset>,
    pub test: Box<dyn Dataset>,
}

/// Where the data comes from (the `--data` flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    Synthetic,
    Cifar10(PathBuf),
    Npy(PathBuf, PathBuf),
    Folder(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<DataSource> {
        let usage = "synthetic, cifar10:DIR, npy:X.npy,Y.npy or folder:DIR";
        if s == "synthetic" {
            return Ok(DataSource::Synthetic);
        }
        if let Some(dir) = s.strip_prefix("cifar10:").filter(|d| !d.is_empty()) {
            return Ok(DataSource::Cifar10(dir.into()));
        }
        if let Some(dir) = s.strip_prefix("folder:").filter(|d| !d.is_empty()) {
            return Ok(DataSource::Folder(dir.into()));
        }
        if let Some(files) = s.strip_prefix("npy:") {
            return match files.split_once(',') {
                Some((x, y)) if !x.is_empty() && !y.is_empty() => Ok(DataSource::Npy(x.into(), y.into())),
                _ => Err(Error::argument("data", format!("'{s}': npy needs two files, npy:X.npy,Y.npy"))),
            };
        }
        Err(Error::argument("data", format!("unknown data source '{s}' (expected {usage})")))
    }
}

/// How an in-memory data set augments its images for training.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// The CIFAR recipe: a random crop of the image padded by 4 pixels of `fill` (black,
    /// normalised, per channel), then a horizontal flip with probability ½.
    PadCropFlip {
        fill: Vec<f32>,
    },
    None,
}

/// Images held in memory, already normalised (synthetic, CIFAR-10, npy).
#[derive(Clone, Debug)]
pub struct InMemory {
    /// `len · C·H·W` values, image after image.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub image_shape: [usize; 3],
    pub num_classes: usize,
    pub augment: Augment,
}

impl InMemory {
    fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// Moves the images from `at` on into a data set of their own (for a held-out split).
    pub fn split_off(&mut self, at: usize) -> InMemory {
        let len = self.image_len();
        InMemory {
            images: self.images.split_off(at * len),
            labels: self.labels.split_off(at),
            image_shape: self.image_shape,
            num_classes: self.num_classes,
            augment: self.augment.clone(),
        }
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn image_shape(&self) -> [usize; 3] {
        self.image_shape
    }
    fn get(&self, i: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, i64)> {
        if i >= self.len() {
            return Err(Error::argument("data", format!("index {i} outside a data set of {}", self.len())));
        }
        let len = self.image_len();
        let img = &self.images[i * len..][..len];
        let image = match (augment, &self.augment) {
            (Some(rng), Augment::PadCropFlip { fill }) => {
                let (dy, dx) = (rng.below(9) as isize - 4, rng.below(9) as isize - 4);
                let flip = rng.below(2) == 1;
                crop_and_flip(img, self.image_shape, fill, (dy, dx), flip)
            }
            _ => img.to_vec(),
        };
        Ok((image, self.labels[i]))
    }
}

/// The images and labels at `indices` as tensors `[B, C, H, W]` and `[B]`, loaded in
/// parallel. With `augment_seed`, image `k` of the batch is augmented with a generator
/// seeded from `(augment_seed, k)`.
pub fn batch(data: &dyn Dataset, indices: &[usize], augment_seed: Option<u64>) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = data.image_shape();
    let loaded: Vec<(Vec<f32>, i64)> = indices
        .par_iter()
        .enumerate()
        .map(|(k, &i)| {
            let mut rng = augment_seed.map(|s| Rng::new(crate::rng::counter_u64(s, k as u64)));
            data.get(i, rng.as_mut())
        })
        .collect::<Result<_>>()?;
    let mut images = Vec::with_capacity(indices.len() * c * h * w);
    let mut labels = Vec::with_capacity(indices.len());
    for (img, label) in loaded {
        images.extend(img);
        labels.push(label);
    }
    Ok((Tensor::from_vec([indices.len(), c, h, w], images)?, Tensor::from_vec([indices.len()], labels)?))
}

/// The image shifted by `(dy, dx)` with `fill` shifted in (a crop of the padded image),
/// mirrored left–right if `flip`.
fn crop_and_flip(img: &[f32], [c, h, w]: [usize; 3], fill: &[f32], (dy, dx): (isize, isize), flip: bool) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        out[ch * h * w..][..h * w].fill(fill.get(ch).copied().unwrap_or(0.0));
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + dx;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                let ox = if flip { w - 1 - x } else { x };
                out[(ch * h + y) * w + ox] = img[(ch * h + sy as usize) * w + sx as usize];
            }
        }
    }
    out
}

/// Loads a data source. `crop` is the training/eval crop of image folders (224, or 227
/// for AlexNet); `synthetic_size` the sizes of the drawn splits; `seed` draws them.
pub fn load(source: &DataSource, crop: usize, synthetic_size: (usize, usize), seed: u64) -> Result<Split> {
    match source {
        DataSource::Synthetic => {
            let (train, test) = synthetic::generate(synthetic_size.0, synthetic_size.1, seed);
            Ok(Split { train: Box::new(train), test: Box::new(test) })
        }
        DataSource::Cifar10(dir) => {
            let (train, test) = cifar::load(dir)?;
            Ok(Split { train: Box::new(train), test: Box::new(test) })
        }
        DataSource::Npy(x, y) => {
            let mut train = from_npy(x, y)?;
            // The last tenth is held out (at least one image, when there are two or more).
            let n = train.len();
            let held = if n >= 2 { (n / 10).max(1) } else { 0 };
            let test = train.split_off(n - held);
            Ok(Split { train: Box::new(train), test: Box::new(test) })
        }
        DataSource::Folder(dir) => {
            let (train, test) = folder::load(dir, crop)?;
            Ok(Split { train: Box::new(train), test: Box::new(test) })
        }
    }
}

/// `npy:X.npy,Y.npy`: float images `N×C×H×W` and integer labels `N`, used as given.
pub fn from_npy(x_path: &std::path::Path, y_path: &std::path::Path) -> Result<InMemory> {
    let x = npy::read(x_path)?;
    let y = npy::read(y_path)?;
    let (n, c, h, w) = x.shape().dims4().filter(|_| x.dtype().is_float()).ok_or_else(|| {
        Error::file(x_path, format!("expected float images N×C×H×W, got {} of shape {}", x.dtype(), x.shape()))
    })?;
    if y.dtype() != crate::tensor::DType::I64 || y.dims() != [n] {
        return Err(Error::file(
            y_path,
            format!(
                "expected {n} integer labels (int64 or int32) of shape [{n}], got {} of shape {}",
                y.dtype(),
                y.shape()
            ),
        ));
    }
    let labels = y.to_vec::<i64>()?;
    if let Some((i, &bad)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
        return Err(Error::file(y_path, format!("label {bad} at position {i} is negative")));
    }
    let num_classes = labels.iter().max().map_or(1, |&m| m as usize + 1);
    Ok(InMemory {
        images: x.to_vec::<f32>()?,
        labels,
        image_shape: [c, h, w],
        num_classes,
        augment: Augment::PadCropFlip { fill: vec![0.0; c] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_shifts_in_the_fill_and_flip_mirrors() {
        // One channel 2×3: [[1,2,3],[4,5,6]]; the fill is −2.
        let img = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let shift = |d, flip| crop_and_flip(&img, [1, 2, 3], &[-2.0], d, flip);
        assert_eq!(shift((0, 1), false), vec![2.0, 3.0, -2.0, 5.0, 6.0, -2.0]);
        assert_eq!(shift((-1, 0), false), vec![-2.0, -2.0, -2.0, 1.0, 2.0, 3.0]);
        assert_eq!(shift((0, 0), true), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }

    #[test]
    fn sources_parse_and_unknown_ones_are_named() {
        assert_eq!("synthetic".parse::<DataSource>().unwrap(), DataSource::Synthetic);
        assert_eq!("cifar10:/d".parse::<DataSource>().unwrap(), DataSource::Cifar10("/d".into()));
        assert_eq!("npy:a.npy,b.npy".parse::<DataSource>().unwrap(), DataSource::Npy("a.npy".into(), "b.npy".into()));
        assert!("npy:a.npy".parse::<DataSource>().unwrap_err().to_string().contains("npy needs two files"));
        let e = "imagenet".parse::<DataSource>().unwrap_err().to_string();
        assert!(e.contains("unknown data source 'imagenet'"), "{e}");
        assert!("cifar10:".parse::<DataSource>().is_err());
    }

    #[test]
    fn batches_are_reproducible_and_augmented_per_image() {
        let (train, _) = synthetic::generate(8, 0, 1);
        let idx: Vec<usize> = (0..8).collect();
        let (a, la) = batch(&train, &idx, Some(5)).unwrap();
        let (b, _) = batch(&train, &idx, Some(5)).unwrap();
        let (c, _) = batch(&train, &idx, Some(6)).unwrap();
        let (plain, _) = batch(&train, &idx, None).unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert_ne!(a.to_vec::<f32>().unwrap(), c.to_vec::<f32>().unwrap());
        assert_eq!(plain.to_vec::<f32>().unwrap(), train.images);
        assert_eq!(la.to_vec::<i64>().unwrap(), train.labels);
    }
}
