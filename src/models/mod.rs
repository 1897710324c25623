//! The networks, built from [`crate::nn`] layers, with torchvision's parameter names.

mod resnet_cifar;

pub use resnet_cifar::ResNetCifar;

use crate::error::{Error, Result};
use crate::nn::Module;

/// The names `build` accepts.
pub const MODEL_NAMES: &[&str] = &["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"];

/// Checks a model name without building the model (so a typo fails before data loads).
pub fn check_name(name: &str) -> Result<()> {
    build(name, 1, 0).map(|_| ())
}

/// A model by name, with `num_classes` outputs, its initial weights drawn from `seed`.
pub fn build(name: &str, num_classes: usize, seed: u64) -> Result<Box<dyn Module + Send>> {
    // The upper bound keeps a typo from asking for a classifier that cannot be allocated.
    const MAX_CLASSES: usize = 100_000;
    if num_classes == 0 || num_classes > MAX_CLASSES {
        return Err(Error::argument(
            "model",
            format!("the number of classes must be between 1 and {MAX_CLASSES}, got {num_classes}"),
        ));
    }
    if let Some(depth) = name.strip_prefix("resnet").and_then(|d| d.parse::<usize>().ok())
        && let Some(blocks) = ResNetCifar::blocks_for_depth(depth)
    {
        return Ok(Box::new(ResNetCifar::new(blocks, num_classes, seed)));
    }
    Err(Error::argument("model", format!("unknown model '{name}' (known: {})", MODEL_NAMES.join(", "))))
}
