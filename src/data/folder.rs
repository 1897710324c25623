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
//!
//! Loading reads every image's header (in parallel), so a file that is not a JPEG or PNG, an
//! empty or too elongated image, or one too large to decode stops the run before training
//! starts. The format is told by the file's first bytes, not its name. Grayscale and 16-bit
//! images are converted to 8-bit RGB (grey copied to the three channels, 16-bit values
//! rounded to the nearest 8-bit one); an alpha channel is dropped, as PIL's `convert("RGB")`
//! does. JPEGs are decoded strictly, so damaged scan data is an error naming the file rather
//! than a grey patch the network would train on.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use image::codecs::png::PngDecoder;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, RgbImage};
use rayon::prelude::*;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

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
/// Images are enlarged to the crop when it exceeds 256; this keeps that within reason.
const MAX_CROP: usize = 1024;
/// Resizing the shorter side to 256 would blow a 1×50,000 strip up to gigabytes.
const MAX_ASPECT: u32 = 16;
/// The most bytes one decoded image may take (the `image` crate's own default limit), so a
/// small file that claims an enormous image is refused instead of exhausting memory.
const MAX_DECODED_BYTES: u64 = 512 << 20;
const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

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

/// The images of each class under `split_dir`, labelled by class. With `every_class`, a class
/// directory without images is an error (a class the network could never learn); otherwise
/// it may be empty or missing.
fn list(split_dir: &Path, classes: &[String], every_class: bool) -> Result<Vec<(PathBuf, i64)>> {
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        if !every_class && !dir.is_dir() {
            continue;
        }
        let cannot_read = |e: std::io::Error| Error::file(&dir, format!("cannot read: {e}"));
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(cannot_read)? {
            let p = entry.map_err(cannot_read)?.path();
            if p.is_file() && is_image(&p) {
                found.push(p);
            }
        }
        if every_class && found.is_empty() {
            return Err(Error::file(&dir, "holds no .jpg, .jpeg or .png images"));
        }
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

fn check_crop(crop: usize) -> Result<()> {
    if crop == 0 || crop > MAX_CROP {
        return Err(Error::argument("data", format!("a crop of {crop} pixels is outside 1 to {MAX_CROP}")));
    }
    Ok(())
}

/// The training and held-out sets of `dir`, every image's header checked.
pub fn load(dir: &Path, crop: usize) -> Result<(ImageFolder, ImageFolder)> {
    check_crop(crop)?;
    let (train_dir, val_dir) = (dir.join("train"), dir.join("val"));
    for d in [&train_dir, &val_dir] {
        if !d.is_dir() {
            return Err(Error::file(d, "missing: an image folder needs train/CLASS/*.jpg and val/CLASS/*.jpg"));
        }
    }
    let train = load_train(dir, crop)?;
    let val = open_held_out(&val_dir, &train.classes, crop)?;
    Ok((train, val))
}

/// The training set of `dir` alone (`DIR/train/CLASS/*.jpg`), for runs that hold out part of
/// it or evaluate on another source: `val/` need not exist.
pub fn load_train(dir: &Path, crop: usize) -> Result<ImageFolder> {
    check_crop(crop)?;
    let train_dir = dir.join("train");
    if !train_dir.is_dir() {
        return Err(Error::file(&train_dir, "missing: an image folder needs train/CLASS/*.jpg"));
    }
    let classes = class_dirs(&train_dir)?;
    if classes.is_empty() {
        return Err(Error::file(&train_dir, "has no class directories"));
    }
    let files = list(&train_dir, &classes, true)?;
    check_headers(&files)?;
    Ok(ImageFolder { files, classes, crop, train: true })
}

/// Held-out images for `--val-data folder:DIR`: `DIR/val/CLASS/*.jpg`, or `DIR/CLASS/*.jpg`
/// when there is no `val/`. Labels follow `classes` (the training set's, when it is an image
/// folder too, so that a class keeps its number), else the folder's own sorted classes.
pub fn load_held_out(dir: &Path, classes: Option<&[String]>, crop: usize) -> Result<ImageFolder> {
    check_crop(crop)?;
    let val_dir = if dir.join("val").is_dir() { dir.join("val") } else { dir.to_path_buf() };
    if !val_dir.is_dir() {
        return Err(Error::file(dir, "no such directory"));
    }
    let own;
    let classes = match classes {
        Some(c) => c,
        None => {
            own = class_dirs(&val_dir)?;
            &own
        }
    };
    let val = open_held_out(&val_dir, classes, crop)?;
    if val.is_empty() {
        return Err(Error::file(&val_dir, "holds no .jpg, .jpeg or .png images in class directories"));
    }
    Ok(val)
}

/// The images of `val_dir`, labelled by `classes`, which must include every class it has.
fn open_held_out(val_dir: &Path, classes: &[String], crop: usize) -> Result<ImageFolder> {
    if let Some(extra) = class_dirs(val_dir)?.into_iter().find(|c| !classes.iter().any(|k| k == c)) {
        return Err(Error::file(val_dir, format!("has class '{extra}', which the training images do not have")));
    }
    let files = list(val_dir, classes, false)?;
    check_headers(&files)?;
    Ok(ImageFolder { files, classes: classes.to_vec(), crop, train: false })
}

/// Reads the header of every image, in parallel; the error is that of the first bad file in
/// `files`' order, so it is the same from run to run.
fn check_headers(files: &[(PathBuf, i64)]) -> Result<()> {
    let first_bad = files
        .par_iter()
        .enumerate()
        .filter_map(|(i, (path, _))| read_header(path).err().map(|e| (i, e)))
        .min_by_key(|(i, _)| *i);
    first_bad.map_or(Ok(()), |(_, e)| Err(e))
}

/// The image formats read, told apart by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
}

fn format_of(path: &Path, head: &[u8]) -> Result<Format> {
    if head.starts_with(JPEG_MAGIC) {
        Ok(Format::Jpeg)
    } else if head.starts_with(PNG_MAGIC) {
        Ok(Format::Png)
    } else {
        Err(Error::file(path, "cannot decode the image: the file is neither a JPEG nor a PNG"))
    }
}

/// An error of the decoder, on one line.
fn cannot_decode(path: &Path, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    Error::file(path, format!("cannot decode the image: {}", crate::error::one_line(text.trim_matches('"'), 200)))
}

/// Strict decoding (damaged data is an error, not grey pixels) to 8-bit RGB. The size limit
/// is ours ([`check_size`]), up to the largest image JPEG can describe.
fn jpeg_options() -> DecoderOptions {
    DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(u16::MAX as usize)
        .set_max_height(u16::MAX as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
}

/// The dimensions a JPEG decoder read from the headers, once its colour space is known to
/// convert to RGB.
fn jpeg_dimensions<T: zune_jpeg::zune_core::bytestream::ZByteReaderTrait>(
    path: &Path,
    decoder: &mut JpegDecoder<T>,
) -> Result<(u32, u32)> {
    decoder.decode_headers().map_err(|e| cannot_decode(path, e))?;
    match decoder.input_colorspace() {
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::Luma | ColorSpace::CMYK | ColorSpace::YCCK) => {}
        other => {
            let name = other.map_or("unknown".to_string(), |c| format!("{c:?}"));
            return Err(Error::file(
                path,
                format!("cannot decode the image: JPEG colour space {name} is not supported"),
            ));
        }
    }
    let (w, h) = decoder.dimensions().ok_or_else(|| cannot_decode(path, "no dimensions in the JPEG header"))?;
    Ok((w as u32, h as u32))
}

/// Refuses an image the loader cannot use: empty, too elongated, or more than
/// [`MAX_DECODED_BYTES`] once decoded (`bytes_per_pixel` as the decoder delivers it).
fn check_size(path: &Path, (w, h): (u32, u32), bytes_per_pixel: u64) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::file(path, format!("the image is empty ({w}×{h})")));
    }
    if u64::from(w.max(h)) > u64::from(MAX_ASPECT) * u64::from(w.min(h)) {
        return Err(Error::file(path, format!("a {w}×{h} image is too elongated (aspect ratio above {MAX_ASPECT})")));
    }
    let bytes = w as u64 * h as u64 * bytes_per_pixel;
    if bytes > MAX_DECODED_BYTES {
        return Err(Error::file(
            path,
            format!(
                "a {w}×{h} image takes {} MiB decoded, more than the {} MiB allowed",
                bytes >> 20,
                MAX_DECODED_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

/// Reads an image's header (its format, dimensions and colour type, not its pixels) and
/// checks that the loader can use it.
fn read_header(path: &Path) -> Result<(u32, u32)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let format = format_of(path, head)?;
    // The png crate calls a zero width "invalid dimensions"; the IHDR chunk says it plainly.
    if let Some(ihdr) = head.get(12..24).filter(|c| c.starts_with(b"IHDR")) {
        let (w, h) = (be_u32(&ihdr[4..8]), be_u32(&ihdr[8..12]));
        if w == 0 || h == 0 {
            check_size(path, (w, h), 4)?;
        }
    }
    let (size, bytes_per_pixel) = match format {
        Format::Jpeg => (jpeg_dimensions(path, &mut JpegDecoder::new_with_options(reader, jpeg_options()))?, 3),
        Format::Png => {
            let decoder = PngDecoder::new(reader).map_err(|e| cannot_decode(path, e))?;
            (decoder.dimensions(), decoder.color_type().bytes_per_pixel() as u64)
        }
    };
    check_size(path, size, bytes_per_pixel)?;
    Ok(size)
}

fn be_u32(b: &[u8]) -> u32 {
    b.iter().fold(0, |a, &x| (a << 8) | x as u32)
}

/// Decodes an image file to 8-bit RGB.
fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    match format_of(path, &bytes)? {
        Format::Jpeg => {
            let mut decoder = JpegDecoder::new_with_options(ZCursor::new(&bytes), jpeg_options());
            let size = jpeg_dimensions(path, &mut decoder)?;
            check_size(path, size, 3)?;
            let pixels = decoder.decode().map_err(|e| cannot_decode(path, e))?;
            RgbImage::from_raw(size.0, size.1, pixels)
                .ok_or_else(|| cannot_decode(path, "the decoder gave the wrong number of pixels"))
        }
        Format::Png => {
            let decoder = PngDecoder::new(std::io::Cursor::new(&bytes)).map_err(|e| cannot_decode(path, e))?;
            check_size(path, decoder.dimensions(), decoder.color_type().bytes_per_pixel() as u64)?;
            let image = DynamicImage::from_decoder(decoder).map_err(|e| cannot_decode(path, e))?;
            Ok(image.to_rgb8())
        }
    }
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
        let img = decode(path)?;
        let (w, h) = img.dimensions();
        // The shorter side to 256 (or to the crop, if larger), keeping the aspect ratio (as
        // torchvision's Resize(256), which truncates the longer side where this rounds it).
        // A tiny image is enlarged like any other: a 1×1 image becomes a flat colour.
        let short = RESIZE.max(self.crop as u32);
        let scale = short as f64 / w.min(h) as f64;
        let (nw, nh) = (((w as f64 * scale).round() as u32).max(short), ((h as f64 * scale).round() as u32).max(short));
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

    /// A folder with one training class holding `image` (written by `write`), and `val/`.
    fn one_image_folder(name: &str, file: &str, write: impl FnOnce(&Path)) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scratchnet-folder-{name}-{}", std::process::id()));
        let class = dir.join("train").join("a");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(dir.join("val")).unwrap();
        write(&class.join(file));
        dir
    }

    /// Every value of the held-out crop of the folder's one image, per channel.
    fn channel_values(dir: &Path) -> [Vec<f32>; 3] {
        let (train, _) = load(dir, 224).unwrap();
        let (img, _) = train.get(0, None).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        std::array::from_fn(|c| img[c * 224 * 224..][..224 * 224].to_vec())
    }

    fn normalised(rgb: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|c| (rgb[c] / 255.0 - MEAN[c]) / STD[c])
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
        // An empty class is fine in val/, not in train/.
        std::fs::create_dir_all(dir.join("val").join("cat")).unwrap();
        assert!(load(&dir, 224).is_ok());
        assert!(load(&dir, 0).err().map(|e| e.to_string()).unwrap_or_default().contains("a crop of 0 pixels"));
        std::fs::create_dir_all(dir.join("train").join("emu")).unwrap();
        let e = load(&dir, 224).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.ends_with("train/emu: holds no .jpg, .jpeg or .png images"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sixteen_bit_and_grayscale_pngs_become_8_bit_rgb() {
        // 16-bit values map to the nearest 8-bit one (v / 257 rounded): 65535 → 255,
        // 0x8080 → 128, and 200 → 1 (where keeping the high byte would give 0).
        let dir = one_image_folder("png16", "a.png", |p| {
            image::ImageBuffer::from_pixel(40, 30, image::Rgb([65535u16, 0x8080, 200])).save(p).unwrap()
        });
        let want = normalised([255.0, 128.0, 1.0]);
        for (c, values) in channel_values(&dir).iter().enumerate() {
            assert!(values.iter().all(|v| (v - want[c]).abs() < 1e-5), "channel {c}: {} vs {}", values[0], want[c]);
        }
        // Grey is copied to all three channels (then normalised per channel).
        let dir = one_image_folder("grey", "a.png", |p| {
            image::GrayImage::from_pixel(30, 40, image::Luma([51])).save(p).unwrap()
        });
        let want = normalised([51.0; 3]);
        for (c, values) in channel_values(&dir).iter().enumerate() {
            assert!(values.iter().all(|v| (v - want[c]).abs() < 1e-5), "channel {c}: {} vs {}", values[0], want[c]);
        }
        let dir = one_image_folder("grey16", "a.png", |p| {
            image::ImageBuffer::from_pixel(30, 40, image::Luma([0x3333u16])).save(p).unwrap()
        });
        for (c, values) in channel_values(&dir).iter().enumerate() {
            assert!(values.iter().all(|v| (v - want[c]).abs() < 1e-5), "channel {c}");
        }
    }

    #[test]
    fn grayscale_jpegs_become_rgb() {
        let dir = one_image_folder("greyjpeg", "a.jpg", |p| {
            image::GrayImage::from_pixel(32, 32, image::Luma([100])).save(p).unwrap()
        });
        let want = normalised([100.0; 3]);
        for (c, values) in channel_values(&dir).iter().enumerate() {
            // JPEG is lossy: within one grey level.
            assert!(values.iter().all(|v| (v - want[c]).abs() < 1.5 / 255.0 / STD[c]), "channel {c}: {}", values[0]);
        }
    }

    #[test]
    fn a_one_pixel_image_is_enlarged_to_a_flat_colour() {
        let dir = one_image_folder("tiny", "a.png", |p| write_image(p, 1, 1, [10, 200, 30]));
        let want = normalised([10.0, 200.0, 30.0]);
        for (c, values) in channel_values(&dir).iter().enumerate() {
            assert!(values.iter().all(|v| (v - want[c]).abs() < 1e-5), "channel {c}: {} vs {}", values[0], want[c]);
        }
    }

    #[test]
    fn the_format_comes_from_the_content_not_the_name() {
        let dir = one_image_folder("misnamed", "a.jpg", |p| {
            let mut png = Vec::new();
            image::RgbImage::from_pixel(8, 8, image::Rgb([0, 255, 0]))
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            std::fs::write(p, png).unwrap();
        });
        let want = normalised([0.0, 255.0, 0.0]);
        assert!((channel_values(&dir)[1][0] - want[1]).abs() < 1e-5);
    }
}
