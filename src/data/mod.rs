//! Data sets, batches and augmentation.
//!
//! | `--data` | what | normalisation | augmentation (unless `--no-augment`) |
//! |---|---|---|---|
//! | `synthetic` | shapes drawn from the seed ([`synthetic`]) | `(v − ½) / ¼`, centred on 0 | 4-pixel padded random crop, flip |
//! | `cifar10:DIR` | the CIFAR-10 binary files ([`cifar`]) | CIFAR-10 mean and std per channel | 4-pixel padded random crop, flip |
//! | `npy:X.npy,Y.npy` | arrays from numpy ([`npy`]); the last tenth is held out | none: used as given (NaN or infinity refused) | 4-pixel padded random crop, flip |
//! | `folder:DIR` | `DIR/train/CLASS/*.jpg`, `DIR/val/CLASS/*.jpg` ([`folder`]) | ImageNet mean and std | resize to 256, random 224 crop (227 for AlexNet), flip, PCA lighting |
//!
//! Every random choice of a batch comes from a seed and the position in the batch, so
//! batches are the same from run to run, and images can be loaded in parallel.
//!
//! The held-out images ([`HeldOut`]) are each source's own by default (the drawn held-out
//! set, CIFAR-10's test batch, an image folder's `val/`, the last tenth of an `.npy` set);
//! `--holdout F` takes a fraction of the training source instead (0: none, no evaluation),
//! and `--val-data SPEC` the held-out images of another source.

pub mod cifar;
pub mod folder;
pub mod npy;
pub mod synthetic;

use std::path::PathBuf;
use std::sync::Arc;

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

/// A training split and a held-out split (empty when nothing is held out).
pub struct Split {
    pub train: Box<dyn Dataset>,
    pub test: Box<dyn Dataset>,
}

/// Where the held-out images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum HeldOut {
    /// The source's own held-out images: the drawn held-out set (synthetic), the test batch
    /// (CIFAR-10), `val/` (image folders), the last tenth of the images (`.npy`).
    Default,
    /// This fraction of the training source's images (`--holdout F`, `0 <= F < 1`); 0 holds
    /// out nothing and the run evaluates nothing.
    Fraction(f64),
    /// The held-out images of another source (`--val-data SPEC`): all of an `.npy` pair, the
    /// test batch of CIFAR-10, `val/` of an image folder (or its class directories, when it
    /// has no `val/`), the drawn held-out set.
    Data(DataSource),
}

/// Some of the images of a data set, by index: a training or held-out part of one source.
/// A held-out part never augments.
pub struct Subset {
    data: Arc<dyn Dataset>,
    indices: Vec<usize>,
    augment: bool,
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn num_classes(&self) -> usize {
        self.data.num_classes()
    }
    fn image_shape(&self) -> [usize; 3] {
        self.data.image_shape()
    }
    fn get(&self, i: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, i64)> {
        let &j = self.indices.get(i).ok_or_else(|| {
            Error::argument("data", format!("index {i} outside a data set of {}", self.indices.len()))
        })?;
        self.data.get(j, if self.augment { augment } else { None })
    }
}

/// How many of `n` images a fraction holds out: `⌊n·F⌋`, but at least one when `F > 0`, and
/// never all of them.
pub fn held_out_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((n as f64 * fraction).floor() as usize).clamp(1, n - 1)
}

/// Splits `data` into a training part and a held-out part of `fraction` of its images: the
/// last ones, or with `spread`, ones spread evenly over the set (an image folder lists its
/// images class by class, and the last ones would all be of the last class).
fn hold_out(data: Arc<dyn Dataset>, fraction: f64, spread: bool) -> Split {
    let n = data.len();
    let held = held_out_count(n, fraction);
    let is_held: Vec<bool> = if spread {
        // Image i is held out when the running count ⌊(i+1)·held/n⌋ steps up at i.
        (0..n).map(|i| (i + 1) * held / n > i * held / n).collect()
    } else {
        (0..n).map(|i| i >= n - held).collect()
    };
    let (test, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| is_held[i]);
    Split {
        train: Box::new(Subset { data: Arc::clone(&data), indices: train, augment: true }),
        test: Box::new(Subset { data, indices: test, augment: false }),
    }
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
    let mut images = Vec::new();
    crate::device::host_memory::reserve(&mut images, indices.len() * c * h * w)?;
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

/// Loads a data source with its held-out images as `held_out` says. `crop` is the
/// training/eval crop of image folders (224, or 227 for AlexNet); `synthetic_size` the sizes
/// of the drawn splits; `seed` draws them.
pub fn load(
    source: &DataSource,
    held_out: &HeldOut,
    crop: usize,
    synthetic_size: (usize, usize),
    seed: u64,
) -> Result<Split> {
    let fraction = match held_out {
        HeldOut::Fraction(f) if !(0.0..1.0).contains(f) => {
            return Err(Error::argument("--holdout", format!("the fraction held out must be in [0, 1), got {f}")));
        }
        HeldOut::Fraction(f) => Some(*f),
        HeldOut::Default | HeldOut::Data(_) => None,
    };
    // The class names of an image-folder training set, which an image-folder --val-data
    // follows so that every class keeps its label.
    let mut folder_classes: Option<Vec<String>> = None;
    let (train, own_test): (Arc<dyn Dataset>, Option<Box<dyn Dataset>>) = match source {
        DataSource::Synthetic => {
            let test_size = if matches!(held_out, HeldOut::Default) { synthetic_size.1 } else { 0 };
            let (train, test) = synthetic::generate(synthetic_size.0, test_size, seed);
            (Arc::new(train), Some(Box::new(test)))
        }
        DataSource::Cifar10(dir) => {
            let (train, test) = cifar::load(dir)?;
            (Arc::new(train), Some(Box::new(test)))
        }
        DataSource::Npy(x, y) => (Arc::new(from_npy(x, y)?), None),
        // Without the default held-out images, val/ is not read and need not exist.
        DataSource::Folder(dir) if *held_out != HeldOut::Default => {
            let train = folder::load_train(dir, crop)?;
            folder_classes = Some(train.classes().to_vec());
            (Arc::new(train), None)
        }
        DataSource::Folder(dir) => {
            let (train, test) = folder::load(dir, crop)?;
            (Arc::new(train), Some(Box::new(test)))
        }
    };
    let spread = matches!(source, DataSource::Folder(_));
    let split = match (held_out, own_test) {
        (HeldOut::Default, Some(test)) => Split { train: Box::new(Subset::all(train)), test },
        // An .npy set has no held-out part of its own: the last tenth is.
        (HeldOut::Default, None) => hold_out(train, 0.1, false),
        (HeldOut::Fraction(_), _) => hold_out(train, fraction.unwrap_or(0.0), spread),
        (HeldOut::Data(other), _) => {
            let test = load_held_out(other, folder_classes.as_deref(), crop, synthetic_size, seed)?;
            if test.image_shape() != train.image_shape() {
                let [c, h, w] = test.image_shape();
                let [tc, th, tw] = train.image_shape();
                return Err(Error::argument(
                    "--val-data",
                    format!("its images are {c}×{h}×{w}, the training images {tc}×{th}×{tw}"),
                ));
            }
            Split { train: Box::new(Subset::all(train)), test }
        }
    };
    Ok(split)
}

/// The held-out images of a source, for `--val-data`.
fn load_held_out(
    source: &DataSource,
    classes: Option<&[String]>,
    crop: usize,
    synthetic_size: (usize, usize),
    seed: u64,
) -> Result<Box<dyn Dataset>> {
    Ok(match source {
        DataSource::Synthetic => Box::new(synthetic::generate(0, synthetic_size.1, seed).1),
        DataSource::Cifar10(dir) => Box::new(cifar::load_test(dir)?),
        DataSource::Npy(x, y) => Box::new(Subset::all(Arc::new(from_npy(x, y)?)).without_augmentation()),
        DataSource::Folder(dir) => Box::new(folder::load_held_out(dir, classes, crop)?),
    })
}

impl Subset {
    /// Every image of `data`, augmented for training.
    pub fn all(data: Arc<dyn Dataset>) -> Subset {
        let indices = (0..data.len()).collect();
        Subset { data, indices, augment: true }
    }

    /// The same images, never augmented (a held-out part).
    pub fn without_augmentation(self) -> Subset {
        Subset { augment: false, ..self }
    }
}

/// Refuses images (`per` values each, from the file at `path`) holding NaN or infinity,
/// which would otherwise surface much later as a loss of NaN.
pub fn check_finite(path: &std::path::Path, values: &[f32], per: usize) -> Result<()> {
    let Some(at) = values.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let per = per.max(1);
    Err(Error::file(
        path,
        format!(
            "image {} holds {} (value {} of it); the images must be finite numbers",
            at / per,
            values[at],
            at % per
        ),
    ))
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
                "expected {n} integer labels (int8 to int64, uint8 to uint32) of shape [{n}], got {} of shape {}",
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
    let images = x.to_vec::<f32>()?;
    check_finite(x_path, &images, c * h * w)?;
    Ok(InMemory {
        images,
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

    #[test]
    fn a_held_out_fraction_is_the_last_images_or_spread_over_the_classes() {
        let data = InMemory {
            images: vec![0.0; 8],
            labels: vec![0, 0, 0, 0, 1, 1, 1, 1],
            image_shape: [1, 1, 1],
            num_classes: 2,
            augment: Augment::None,
        };
        let labels = |d: &dyn Dataset| -> Vec<i64> { (0..d.len()).map(|i| d.get(i, None).unwrap().1).collect() };
        let last = hold_out(Arc::new(data.clone()), 0.25, false);
        assert_eq!((labels(last.train.as_ref()), labels(last.test.as_ref())), (vec![0, 0, 0, 0, 1, 1], vec![1, 1]));
        let spread = hold_out(Arc::new(data), 0.25, true);
        assert_eq!(labels(spread.test.as_ref()), vec![0, 1]);
        assert_eq!(spread.train.len(), 6);
        assert_eq!(held_out_count(10, 0.1), 1);
        assert_eq!(held_out_count(2, 0.1), 1);
        assert_eq!(held_out_count(1, 0.5), 0);
        assert_eq!(held_out_count(5, 0.99), 4);
        assert_eq!(held_out_count(100, 0.0), 0);
    }

    #[test]
    fn image_folders_hold_out_without_val_and_validate_on_other_folders_by_class_name() {
        let root = std::env::temp_dir().join(format!("scratchnet-heldout-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let png = |path: std::path::PathBuf, grey: u8| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::RgbImage::from_pixel(4, 4, image::Rgb([grey; 3])).save(path).unwrap();
        };
        for class in ["ant", "bee"] {
            for i in 0..4 {
                png(root.join("a/train").join(class).join(format!("{i}.png")), 10 * i);
            }
        }
        // Another folder with only bees, and no val/: its bees keep the training label 1.
        png(root.join("b/bee/0.png"), 0);
        let a = DataSource::Folder(root.join("a"));
        let e = load(&a, &HeldOut::Default, 8, (0, 0), 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("val: missing"), "{e}");
        let split = load(&a, &HeldOut::Fraction(0.25), 8, (0, 0), 0).unwrap();
        assert_eq!((split.train.len(), split.test.len()), (6, 2));
        let labels: Vec<i64> = (0..2).map(|i| split.test.get(i, None).unwrap().1).collect();
        assert_eq!(labels, vec![0, 1]);
        let split = load(&a, &HeldOut::Data(DataSource::Folder(root.join("b"))), 8, (0, 0), 0).unwrap();
        assert_eq!(split.train.len(), 8);
        assert_eq!(split.test.len(), 1);
        assert_eq!(split.test.get(0, None).unwrap().1, 1);
        png(root.join("b/wasp/0.png"), 0);
        let e = load(&a, &HeldOut::Data(DataSource::Folder(root.join("b"))), 8, (0, 0), 0).err().unwrap().to_string();
        assert!(e.contains("has class 'wasp', which the training images do not have"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
