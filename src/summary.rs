//! `scratchnet summary`: the layers of a model, each with its output shape, its parameters
//! and its multiply-adds, found by running one image through it on the CPU and letting each
//! layer describe itself (see [`crate::autograd::LayerRecord`]).

use crate::autograd::LayerRecord;
use crate::error::Result;
use crate::models::Model;

pub struct Summary {
    pub model: String,
    pub input: [usize; 3],
    pub layers: Vec<LayerRecord>,
    /// All trainable values (equal to the sum over layers).
    pub params: usize,
    /// Multiply-adds of one forward pass of one image (convolutions and linear layers).
    pub macs: u64,
}

/// The largest image side `summary` accepts: the activations of one image run forward on
/// the CPU, and a typo like 224000 must not ask for terabytes.
const MAX_SIDE: usize = 4096;

/// Runs one image of size `input` (`[C, H, W]`) through `model` and collects its layers.
pub fn summarize(model: &mut dyn Model, input: [usize; 3]) -> Result<Summary> {
    let [c, h, w] = input;
    model.check_input(&[1, c, h, w].into())?;
    if h > MAX_SIDE || w > MAX_SIDE {
        return Err(crate::Error::argument(
            "summary",
            format!("an input of {h}×{w} is larger than {MAX_SIDE}×{MAX_SIDE}"),
        ));
    }
    let layers = crate::models::trace_layers(model, input)?;
    Ok(Summary {
        model: model.name().to_string(),
        input,
        params: model.num_params(),
        macs: layers.iter().map(|l| l.macs).sum(),
        layers,
    })
}

/// Thousands separated by commas, as parameter counts are usually printed.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.input;
        writeln!(f, "{} on a {c}×{h}×{w} image", self.model)?;
        let name_width = self.layers.iter().map(|l| l.name.len()).max().unwrap_or(5).max(5);
        writeln!(f, "{:<name_width$}  {:<18} {:<20} {:>12} {:>15}", "layer", "type", "output", "params", "mult-adds")?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<name_width$}  {:<18} {:<20} {:>12} {:>15}",
                l.name,
                l.kind,
                l.output.to_string(),
                group_digits(l.params as u64),
                group_digits(l.macs)
            )?;
        }
        writeln!(
            f,
            "total: {} parameters, {} multiply-adds per image",
            group_digits(self.params as u64),
            group_digits(self.macs)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(60_965_224), "60,965,224");
    }

    #[test]
    fn layers_add_up_to_the_model() {
        let mut m = models::build("resnet20", 10, 0).unwrap();
        let s = summarize(m.as_mut(), [3, 32, 32]).unwrap();
        assert_eq!(s.layers.iter().map(|l| l.params).sum::<usize>(), 272_474);
        assert_eq!(s.layers[0].name, "conv1");
        assert_eq!(s.layers[0].output.dims(), &[1, 16, 32, 32]);
        // conv1: 16 outputs × 32·32 pixels × 27 taps.
        assert_eq!(s.layers[0].macs, 16 * 32 * 32 * 27);
        assert_eq!(s.layers.last().unwrap().name, "fc");
        // He et al. give ResNet-20 about 41 M multiply-adds (0.04 GFLOPs).
        assert!((40_000_000..42_000_000).contains(&s.macs), "{}", s.macs);
        assert!(s.to_string().contains("total: 272,474 parameters"));
    }
}
