//! Data sets: images in memory, batches, and augmentation.
//!
//! A [`Dataset`] holds float32 images (`N×C×H×W`, already normalised) and i64 labels. The
//! training loop asks it for batches by index, optionally augmented with the CIFAR recipe:
//! a random crop of the image padded by 4 zero pixels on each side, and a horizontal flip
//! with probability ½.

pub mod synthetic;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len · C·H·W` values, image after image.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// `[C, H, W]` of one image.
    pub image_shape: [usize; 3],
    pub num_classes: usize,
    /// The normalised value of a black pixel, per channel: what a random crop pads with
    /// (torchvision pads the raw image with zeros before normalising).
    pub black: Vec<f32>,
}

/// A training split and a held-out split.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

/// Where the data comes from (the `--data` flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// Procedurally drawn shapes (see [`synthetic`]).
    Synthetic,
}

impl std::str::FromStr for DataSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<DataSource> {
        match s {
            "synthetic" => Ok(DataSource::Synthetic),
            other => {
                Err(Error::argument("data", format!("unknown data source '{other}' (this build reads: synthetic)")))
            }
        }
    }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// The images and labels at `indices` as tensors `[B, C, H, W]` and `[B]`. With a
    /// generator, each image is randomly cropped (4-pixel padding) and flipped.
    pub fn batch(&self, indices: &[usize], mut augment: Option<&mut Rng>) -> Result<(Tensor, Tensor)> {
        let [c, h, w] = self.image_shape;
        let len = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * len);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(Error::argument("data", format!("index {i} outside a data set of {}", self.len())));
            }
            let img = &self.images[i * len..][..len];
            match augment.as_deref_mut() {
                Some(rng) => {
                    let (dy, dx) = (rng.below(9) as isize - 4, rng.below(9) as isize - 4);
                    let flip = rng.below(2) == 1;
                    images.extend(crop_and_flip(img, [c, h, w], &self.black, (dy, dx), flip));
                }
                None => images.extend_from_slice(img),
            }
            labels.push(self.labels[i]);
        }
        Ok((Tensor::from_vec([indices.len(), c, h, w], images)?, Tensor::from_vec([indices.len()], labels)?))
    }
}

/// The image shifted by `(dy, dx)` with black shifted in (a crop of the padded image),
/// mirrored left–right if `flip`.
fn crop_and_flip(img: &[f32], [c, h, w]: [usize; 3], black: &[f32], (dy, dx): (isize, isize), flip: bool) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        out[ch * h * w..][..h * w].fill(black.get(ch).copied().unwrap_or(0.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_shifts_in_black_and_flip_mirrors() {
        // One channel 2×3: [[1,2,3],[4,5,6]]; black is −2 after normalisation.
        let img = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let (shape, black) = ([1, 2, 3], [-2.0]);
        let shift = |d, flip| crop_and_flip(&img, shape, &black, d, flip);
        assert_eq!(shift((0, 1), false), vec![2.0, 3.0, -2.0, 5.0, 6.0, -2.0]);
        assert_eq!(shift((-1, 0), false), vec![-2.0, -2.0, -2.0, 1.0, 2.0, 3.0]);
        assert_eq!(shift((0, 0), true), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }

    #[test]
    fn unknown_sources_are_named() {
        let e = "imagenet".parse::<DataSource>().unwrap_err().to_string();
        assert!(e.contains("unknown data source 'imagenet'"), "{e}");
    }
}
