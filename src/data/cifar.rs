//! CIFAR-10 in its binary form (`cifar-10-binary.tar.gz`): `data_batch_1.bin` …
//! `data_batch_5.bin` (50,000 training images) and `test_batch.bin` (10,000). Each record is
//! one label byte (0–9) followed by 3072 bytes: the 32×32 red plane, then green, then blue,
//! row by row. Pixels are scaled to [0, 1] and normalised per channel with the usual CIFAR-10
//! mean and standard deviation.

use std::path::{Path, PathBuf};

use super::{Augment, InMemory};
use crate::error::{Error, Result};

const RECORD: usize = 1 + 3 * 32 * 32;
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The directory that holds the files: `dir` itself, or the `cifar-10-batches-bin` folder
/// the archive unpacks into.
fn find_dir(dir: &Path) -> Result<PathBuf> {
    for candidate in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if candidate.join("test_batch.bin").is_file() {
            return Ok(candidate);
        }
    }
    if !dir.is_dir() {
        return Err(Error::file(dir, "no such directory"));
    }
    Err(Error::file(
        dir,
        "no CIFAR-10 files here (expected data_batch_1.bin … data_batch_5.bin and test_batch.bin, from cifar-10-binary.tar.gz)",
    ))
}

/// Decodes the bytes of one CIFAR-10 batch file, appending its normalised images (3×32×32
/// each) to `images` and its labels to `labels`. Every record is checked before anything is
/// appended, so on error the vectors are as they were. The error is one line of text.
pub fn decode_records(bytes: &[u8], images: &mut Vec<f32>, labels: &mut Vec<i64>) -> std::result::Result<(), String> {
    if bytes.is_empty() {
        return Err(format!("holds no records (a CIFAR-10 batch is {RECORD}-byte records: a label, then 3072 pixels)"));
    }
    let records = bytes.len().div_ceil(RECORD);
    let partial = bytes.len() % RECORD;
    if partial != 0 {
        return Err(format!("record {records} of {records} is truncated: {partial} of {RECORD} bytes"));
    }
    if let Some((r, &label)) = bytes.iter().step_by(RECORD).enumerate().find(|(_, l)| **l > 9) {
        return Err(format!("record {} of {records} has label {label}; CIFAR-10 labels are 0 to 9", r + 1));
    }
    images.reserve(records * (RECORD - 1));
    labels.reserve(records);
    for record in bytes.chunks_exact(RECORD) {
        let (label, pixels) = record.split_at(1);
        labels.extend(label.iter().map(|&l| l as i64));
        for (c, plane) in pixels.chunks_exact(32 * 32).enumerate() {
            images.extend(plane.iter().map(|&p| (p as f32 / 255.0 - MEAN[c]) / STD[c]));
        }
    }
    Ok(())
}

fn read_records(path: &Path, images: &mut Vec<f32>, labels: &mut Vec<i64>) -> Result<()> {
    let bytes = crate::input::read(path)?;
    decode_records(&bytes, images, labels).map_err(|msg| Error::file(path, msg))
}

fn empty() -> InMemory {
    InMemory {
        images: Vec::new(),
        labels: Vec::new(),
        image_shape: [3, 32, 32],
        num_classes: 10,
        augment: Augment::PadCropFlip { fill: (0..3).map(|c| -MEAN[c] / STD[c]).collect() },
    }
}

/// The test set alone (`test_batch.bin`), for `--val-data cifar10:DIR`.
pub fn load_test(dir: &Path) -> Result<InMemory> {
    let dir = find_dir(dir)?;
    let mut test = empty();
    read_records(&dir.join("test_batch.bin"), &mut test.images, &mut test.labels)?;
    Ok(test)
}

/// The training and test sets.
pub fn load(dir: &Path) -> Result<(InMemory, InMemory)> {
    let dir = find_dir(dir)?;
    let (mut train, mut test) = (empty(), empty());
    for i in 1..=5 {
        let path = dir.join(format!("data_batch_{i}.bin"));
        if !path.is_file() {
            return Err(Error::file(&path, "missing (CIFAR-10 has data_batch_1.bin … data_batch_5.bin)"));
        }
        read_records(&path, &mut train.images, &mut train.labels)?;
    }
    read_records(&dir.join("test_batch.bin"), &mut test.images, &mut test.labels)?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_before_any_is_kept() {
        let mut bytes = vec![3u8; 3 * RECORD];
        bytes[2 * RECORD] = 10;
        let (mut images, mut labels) = (vec![0.5], vec![1]);
        let e = decode_records(&bytes, &mut images, &mut labels).unwrap_err();
        assert_eq!(e, "record 3 of 3 has label 10; CIFAR-10 labels are 0 to 9");
        assert_eq!((images, labels), (vec![0.5], vec![1]));
        bytes.push(9);
        let e = decode_records(&bytes, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert_eq!(e, "record 4 of 4 is truncated: 1 of 3073 bytes");
        let e = decode_records(&[], &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(e.starts_with("holds no records"), "{e}");
    }

    #[test]
    fn records_decode_to_normalised_planes() {
        let dir = std::env::temp_dir().join(format!("scratchnet-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut record = vec![7u8];
        record.extend(std::iter::repeat_n(255u8, 1024)); // red: all 1.0
        record.extend(std::iter::repeat_n(0u8, 1024)); // green: all 0.0
        record.extend((0..1024).map(|i| (i % 256) as u8)); // blue ramp
        for i in 1..=5 {
            std::fs::write(dir.join(format!("data_batch_{i}.bin")), &record).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), [record.clone(), record.clone()].concat()).unwrap();
        let (train, test) = load(&dir).unwrap();
        assert_eq!(train.labels, vec![7; 5]);
        assert_eq!(test.labels.len(), 2);
        assert!((train.images[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
        assert!((train.images[1024] - (0.0 - MEAN[1]) / STD[1]).abs() < 1e-6);
        assert!((train.images[2048 + 3] - (3.0 / 255.0 - MEAN[2]) / STD[2]).abs() < 1e-6);

        std::fs::write(dir.join("test_batch.bin"), &record[..100]).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin: record 1 of 1 is truncated: 100 of 3073 bytes"), "{e}");
        std::fs::write(dir.join("test_batch.bin"), []).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("test_batch.bin: holds no records"));
        std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("data_batch_3.bin: missing"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("no such directory"));
    }
}
