//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/CLASS/*.jpg` and
//! `DIR/val/CLASS/*.jpg` (JPEG or PNG). Classes are the sub-directory names in sorted order.
//! Images are decoded when a batch needs them, so the set may be larger than memory.
//!
//! Training images get the AlexNet augmentation (Krizhevsky et al., section 4.1), in the form
//! fb.resnet.torch and torchvision use it: the shorter side resized to 256 keeping the aspect
//! ratio (the paper first cropped the central 256×256 square), a random `crop`×`crop` patch
//! anywhere in it (224, or 227 for AlexNet), a horizontal flip with probability ½, and "PCA
//! lighting": adding to every pixel a random combination of the principal components of
//! ImageNet's RGB colours, `Σ_i α_i λ_i v_i` with `α_i ~ N(0, 0.1²)`, which makes the network
//! insensitive to the intensity and colour of the illumination. Held-out images are resized the
//! same way and cropped at the centre. All are normalised with the ImageNet mean and standard
//! deviation.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Eigenvalues and eigenvectors (as columns) of the covariance of ImageNet's RGB pixels in
/// [0, 1], the values used for AlexNet-style lighting noise in fb.resnet.torch and since.
const EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
const EIGVEC: [[f32; 3]; 3] = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]];
const LIGHTING_STD: f64 = 0.1;
const RESIZE: u32 = 256;
const MAX_ASPECT: u32 = 16;

pub struct ImageFolder {
    files: Vec<(PathBuf, i64)>,
    classes: Vec<String>,
    crop: usize,
    train: bool,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

fn list(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut found: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && is_image(p)).collect();
        found.sort();
        files.extend(found.into_iter().map(|p| (p, label as i64)));
    }
    Ok(files)
}

fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read: {e}")))?;
    let mut classes: Vec<String> =
        entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    classes.sort();
    Ok(classes)
}

/// The training and held-out sets of `dir`.
pub fn load(dir: &Path, crop: usize) -> Result<(ImageFolder, ImageFolder)> {
    let (train_dir, val_dir) = (dir.join("train"), dir.join("val"));
    for d in [&train_dir, &val_dir] {
        if !d.is_dir() {
            return Err(Error::file(d, "missing: an image folder needs train/CLASS/*.jpg and val/CLASS/*.jpg"));
        }
    }
    let classes = class_dirs(&train_dir)?;
    if classes.is_empty() {
        return Err(Error::file(&train_dir, "has no class directories"));
    }
    if let Some(extra) = class_dirs(&val_dir)?.into_iter().find(|c| !classes.contains(c)) {
        return Err(Error::file(&val_dir, format!("has class '{extra}', which train/ does not have")));
    }
    let train = list(&train_dir, &classes)?;
    let val = list(&val_dir, &classes)?;
    if train.is_empty() {
        return Err(Error::file(&train_dir, "holds no .jpg, .jpeg or .png images"));
    }
    Ok((
        ImageFolder { files: train, classes: classes.clone(), crop, train: true },
        ImageFolder { files: val, classes, crop, train: false },
    ))
}

/// The RGB offset of AlexNet's lighting noise: `Σ_k α_k λ_k v_k` with `α_k ~ N(0, 0.1²)`.
fn pca_lighting(rng: &mut Rng) -> [f32; 3] {
    let alpha: [f32; 3] = std::array::from_fn(|k| (rng.normal() * LIGHTING_STD) as f32 * EIGVAL[k]);
    std::array::from_fn(|c| (0..3).map(|k| EIGVEC[c][k] * alpha[k]).sum())
}

impl ImageFolder {
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn image_shape(&self) -> [usize; 3] {
        [3, self.crop, self.crop]
    }
    fn get(&self, i: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, i64)> {
        let (path, label) = self.files.get(i).ok_or_else(|| Error::argument("data", format!("no image {i}")))?;
        let img = image::open(path).map_err(|e| Error::file(path, format!("cannot decode the image: {e}")))?.to_rgb8();
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::file(path, "the image is empty"));
        }
        // Resizing the shorter side to 256 would blow a 1×50,000 strip up to gigabytes.
        if w.max(h) > MAX_ASPECT * w.min(h) {
            return Err(Error::file(
                path,
                format!("a {w}×{h} image is too elongated (aspect ratio above {MAX_ASPECT})"),
            ));
        }
        // The shorter side to 256, keeping the aspect ratio (as torchvision's Resize(256), which
        // truncates the longer side where this rounds it).
        let scale = RESIZE as f64 / w.min(h) as f64;
        let (nw, nh) =
            (((w as f64 * scale).round() as u32).max(RESIZE), ((h as f64 * scale).round() as u32).max(RESIZE));
        let resized = imageops::resize(&img, nw, nh, FilterType::Triangle);
        let crop = self.crop as u32;
        let (x0, y0, flip, lighting) = match augment.filter(|_| self.train) {
            Some(r) => {
                let x0 = r.below((nw - crop + 1) as usize) as u32;
                let y0 = r.below((nh - crop + 1) as usize) as u32;
                let flip = r.below(2) == 1;
                (x0, y0, flip, pca_lighting(r))
            }
            None => ((nw - crop) / 2, (nh - crop) / 2, false, [0.0; 3]),
        };
        let c = self.crop;
        let mut out = vec![0.0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let sx = if flip { c - 1 - x } else { x };
                let p = resized.get_pixel(x0 + sx as u32, y0 + y as u32);
                for ch in 0..3 {
                    let v = p[ch] as f32 / 255.0 + lighting[ch];
                    out[(ch * c + y) * c + x] = (v - MEAN[ch]) / STD[ch];
                }
            }
        }
        Ok((out, *label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
        image::RgbImage::from_pixel(w, h, image::Rgb(colour)).save(path).unwrap();
    }

    #[test]
    fn folders_list_classes_and_crop_images() {
        let dir = std::env::temp_dir().join(format!("scratchnet-folder-{}", std::process::id()));
        for (split, class, colour) in
            [("train", "cat", [255, 0, 0]), ("train", "dog", [0, 0, 255]), ("val", "dog", [0, 0, 255])]
        {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            write_image(&d.join("a.png"), 300, 260, colour);
        }
        let (train, val) = load(&dir, 224).unwrap();
        assert_eq!(train.classes(), ["cat", "dog"]);
        assert_eq!(train.len(), 2);
        assert_eq!(val.len(), 1);
        assert_eq!(train.image_shape(), [3, 224, 224]);
        // Held out: no augmentation; a pure red image normalises to ((1 − m)/s, −m/s, −m/s).
        let (img, label) = train.get(0, None).unwrap();
        assert_eq!(label, 0);
        assert!((img[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-5);
        assert!((img[224 * 224] - (0.0 - MEAN[1]) / STD[1]).abs() < 1e-5);
        // Training: lighting noise shifts the colour a little, identically for every pixel.
        let (aug, _) = train.get(0, Some(&mut Rng::new(3))).unwrap();
        assert!((aug[0] - img[0]).abs() > 1e-6 && (aug[0] - img[0]).abs() < 0.5);
        assert!((aug[5] - aug[0]).abs() < 1e-6);

        std::fs::create_dir_all(dir.join("val").join("bird")).unwrap();
        assert!(load(&dir, 224).err().map(|e| e.to_string()).unwrap_or_default().contains("has class 'bird'"));
        std::fs::remove_dir_all(dir.join("val").join("bird")).unwrap();
        std::fs::write(dir.join("train").join("cat").join("b.jpg"), b"not a jpeg").unwrap();
        let (train, _) = load(&dir, 224).unwrap();
        assert!(train.get(1, None).unwrap_err().to_string().contains("cannot decode the image"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
