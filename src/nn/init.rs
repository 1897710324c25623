//! Weight initialisation, as PyTorch does it.
//!
//! - [`Init::Default`]: what `nn.Conv2d` and `nn.Linear` do on construction,
//!   `kaiming_uniform_(a=√5)`, which works out to `U(−1/√fan_in, 1/√fan_in)` for the weight
//!   (and the same bound for the bias).
//! - [`Init::KaimingNormalFanOut`]: `kaiming_normal_(mode='fan_out', nonlinearity='relu')`,
//!   `N(0, 2/fan_out)`, which torchvision's ResNet applies to every convolution (He et al.,
//!   2015: it keeps the variance of the gradients constant through ReLU layers).
//! - [`Init::KaimingNormalFanIn`]: `kaiming_normal_` with its defaults (`mode='fan_in'`, gain
//!   √2), `N(0, 2/fan_in)`, which torchvision's DenseNet applies (it keeps the variance of
//!   the activations constant instead).
//!
//! `fan_in` is `in_channels/groups · kh · kw` and `fan_out` is `out_channels · kh · kw`, as
//! `torch.nn.init._calculate_fan_in_and_fan_out` computes them.

use crate::tensor::{DType, Shape, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    Default,
    KaimingNormalFanOut,
    KaimingNormalFanIn,
}

/// Fan-in and fan-out of a weight of shape `[out, in, k…]`.
pub fn fans(shape: &Shape) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let out = shape.first().copied().unwrap_or(1);
    let inp = shape.get(1).copied().unwrap_or(1);
    (inp * receptive, out * receptive)
}

pub fn weight(shape: impl Into<Shape>, init: Init, seed: u64) -> Tensor {
    let shape = shape.into();
    let (fan_in, fan_out) = fans(&shape);
    match init {
        Init::Default => {
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            Tensor::uniform(shape, -bound, bound, DType::F32, seed)
        }
        Init::KaimingNormalFanOut => {
            let std = (2.0 / fan_out.max(1) as f64).sqrt();
            Tensor::randn(shape, 0.0, std, DType::F32, seed)
        }
        Init::KaimingNormalFanIn => {
            let std = (2.0 / fan_in.max(1) as f64).sqrt();
            Tensor::randn(shape, 0.0, std, DType::F32, seed)
        }
    }
}

/// PyTorch's default bias: `U(−1/√fan_in, 1/√fan_in)`.
pub fn bias(len: usize, fan_in: usize, seed: u64) -> Tensor {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::uniform([len], -bound, bound, DType::F32, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fans_of_a_grouped_conv() {
        // AlexNet conv2: 256 outputs, 48 inputs per group, 5×5.
        assert_eq!(fans(&Shape::from([256, 48, 5, 5])), (48 * 25, 256 * 25));
        assert_eq!(fans(&Shape::from([10, 64])), (64, 10));
    }

    #[test]
    fn kaiming_has_the_right_spread() {
        let w = weight([64, 32, 3, 3], Init::KaimingNormalFanOut, 1).to_f64_vec().unwrap();
        let var = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
        let want = 2.0 / (64.0 * 9.0);
        assert!((var / want - 1.0).abs() < 0.05, "var {var} want {want}");
        let u = weight([10, 64], Init::Default, 2).to_f64_vec().unwrap();
        assert!(u.iter().all(|v| v.abs() <= 1.0 / 8.0));
    }
}
