//! A data set drawn from a seed, so `scratchnet train` works on a machine with nothing
//! downloaded.
//!
//! Each 32×32 RGB image holds one shape of one of ten kinds; the kind is the label:
//!
//! | label | shape | label | shape |
//! |---|---|---|---|
//! | 0 | disk | 5 | ring |
//! | 1 | square | 6 | square frame |
//! | 2 | triangle | 7 | diamond |
//! | 3 | plus | 8 | horizontal stripes |
//! | 4 | diagonal cross | 9 | vertical stripes |
//!
//! Position, size, the colours of shape and background, a few specks of clutter and the pixel
//! noise are random, so a network has to learn the shapes themselves; every kind is symmetric under a left–right
//! flip, so the flip augmentation keeps labels true. Pixels are drawn in [0, 1] and then
//! shifted and scaled as `(v − 0.5) / 0.25`, into [−2, 2] around 0. Image `i` depends only on
//! `(seed, i)`, so any subset can be regenerated exactly.

use rayon::prelude::*;

use super::{Augment, InMemory};
use crate::rng::Rng;

pub const NUM_CLASSES: usize = 10;
pub const SIZE: usize = 32;

/// `train` training images and `test` held-out images drawn from `seed`. The held-out
/// images come from a different stream, so the two never share an image.
pub fn generate(train: usize, test: usize, seed: u64) -> (InMemory, InMemory) {
    (draw(train, seed), draw(test, seed ^ 0x7E57_0000_0000_0001))
}

fn draw(n: usize, seed: u64) -> InMemory {
    let per = 3 * SIZE * SIZE;
    let drawn: Vec<(Vec<f32>, i64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::new(crate::rng::counter_u64(seed, i as u64));
            let label = i % NUM_CLASSES;
            (draw_image(label, &mut rng), label as i64)
        })
        .collect();
    let mut images = Vec::with_capacity(n * per);
    let mut labels = Vec::with_capacity(n);
    for (img, label) in drawn {
        images.extend(img);
        labels.push(label);
    }
    InMemory {
        images,
        labels,
        image_shape: [3, SIZE, SIZE],
        num_classes: NUM_CLASSES,
        augment: Augment::PadCropFlip { fill: vec![normalise(0.0); 3] },
    }
}

/// Is the point `(dx, dy)`, relative to the shape's centre, inside a shape of kind `label`
/// and radius `r`?
fn inside(label: usize, dx: f32, dy: f32, r: f32) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    let dist = (dx * dx + dy * dy).sqrt();
    let box_r = 0.85 * r;
    let bar = 0.3 * r;
    match label {
        0 => dist <= r,
        1 => ax.max(ay) <= box_r,
        // Apex at the top, base at the bottom: half-width grows from 0 to r.
        2 => dy >= -r && dy <= r && ax <= (dy + r) / 2.0,
        3 => (ax <= bar && ay <= r) || (ay <= bar && ax <= r),
        4 => {
            let (u, v) = ((dx + dy).abs() / std::f32::consts::SQRT_2, (dx - dy).abs() / std::f32::consts::SQRT_2);
            (u <= bar && v <= r) || (v <= bar && u <= r)
        }
        5 => dist <= r && dist >= 0.55 * r,
        6 => ax.max(ay) <= box_r && ax.max(ay) >= 0.55 * box_r,
        7 => ax + ay <= r,
        8 => ax.max(ay) < box_r && ((dy + box_r) / (box_r / 2.5)).floor() as i32 % 2 == 0,
        _ => ax.max(ay) < box_r && ((dx + box_r) / (box_r / 2.5)).floor() as i32 % 2 == 0,
    }
}

/// Pixels in [0, 1] to [−2, 2]: `(v − ½) / ¼`.
fn normalise(v: f32) -> f32 {
    (v - 0.5) / 0.25
}

fn draw_image(label: usize, rng: &mut Rng) -> Vec<f32> {
    let r = 5.0 + 7.0 * rng.uniform() as f32;
    let margin = r + 1.0;
    let span = SIZE as f32 - 2.0 * margin;
    let cx = margin + span * rng.uniform() as f32;
    let cy = margin + span * rng.uniform() as f32;
    let background: [f32; 3] = std::array::from_fn(|_| 0.6 * rng.uniform() as f32);
    // A foreground brighter on average than the background, by a varying margin.
    let lift = 0.15 + 0.3 * rng.uniform() as f32;
    let foreground: [f32; 3] =
        std::array::from_fn(|c| (background[c] + lift + 0.4 * (rng.uniform() as f32 - 0.5)).clamp(0.0, 1.0));
    // Clutter: a few small rectangles in random colours, drawn under the shape.
    let clutter: Vec<([usize; 4], [f32; 3])> = (0..3)
        .map(|_| {
            let (w, h) = (1 + rng.below(4), 1 + rng.below(4));
            let (x0, y0) = (rng.below(SIZE - w + 1), rng.below(SIZE - h + 1));
            ([x0, y0, x0 + w, y0 + h], std::array::from_fn(|_| rng.uniform() as f32))
        })
        .collect();
    let mut img = vec![0.0f32; 3 * SIZE * SIZE];
    for y in 0..SIZE {
        for x in 0..SIZE {
            // Pixel centres at half-integers.
            let on = inside(label, x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r);
            let speck = clutter.iter().find(|(b, _)| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
            for c in 0..3 {
                let base = match (on, speck) {
                    (true, _) => foreground[c],
                    (false, Some((_, colour))) => colour[c],
                    (false, None) => background[c],
                };
                let noisy = base + 0.1 * rng.normal() as f32;
                img[(c * SIZE + y) * SIZE + x] = normalise(noisy.clamp(0.0, 1.0));
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_and_balanced_labels() {
        let (train, test) = generate(40, 10, 3);
        let (again, _) = generate(40, 10, 3);
        assert_eq!(train.images, again.images);
        assert_ne!(train.images, generate(40, 10, 4).0.images);
        assert_ne!(train.images[..3072], test.images[..3072]);
        for class in 0..10 {
            assert_eq!(train.labels.iter().filter(|&&l| l == class).count(), 4);
        }
        assert!(train.images.iter().all(|v| (-2.0..=2.0).contains(v)));
    }

    #[test]
    fn every_shape_is_flip_symmetric_and_not_empty() {
        for label in 0..10 {
            let mut area = 0;
            for y in -12..=12 {
                for x in -12..=12 {
                    let (dx, dy) = (x as f32 + 0.5, y as f32);
                    assert_eq!(inside(label, dx, dy, 10.0), inside(label, -dx, dy, 10.0), "label {label} at {dx},{dy}");
                    area += inside(label, dx, dy, 10.0) as usize;
                }
            }
            assert!(area > 40, "label {label} covers {area} points");
        }
    }
}
