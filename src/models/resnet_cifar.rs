//! The CIFAR ResNets of He et al. (2015, section 4.2): ResNet-20/32/44/56/110.
//!
//! A 3×3 stem convolution to 16 channels (no max pool: the images are only 32×32), then three
//! stages of `n` basic blocks at 16, 32 and 64 channels, the second and third starting with a
//! stride-2 block, then global average pooling and one fully connected layer. Depth is
//! `6n + 2`. The basic block is the one of the ImageNet ResNets ([`super::resnet`]).
//!
//! Where a block changes the shape, its shortcut is a 1×1 stride-2 convolution with batch
//! norm, named `layerN.0.downsample.0/.1` as in torchvision. That is the paper's option B; for
//! CIFAR the paper itself used option A (identity shortcuts padded with zero channels, no
//! parameters: 269,722 for ResNet-20 instead of 272,474). Option B keeps one kind of shortcut
//! across all our ResNets and loads torchvision-style weights unchanged.

use super::Model;
use super::resnet::{BasicBlock, conv};
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::nn::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, Module, conv_batch_norm};
use crate::rng::Rng;
use crate::tensor::Shape;

pub struct ResNetCifar {
    name: String,
    num_classes: usize,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    avgpool: GlobalAvgPool,
    fc: Linear,
}

impl ResNetCifar {
    /// Blocks per stage for a depth `6n + 2` of the paper's list (20, 32, 44, 56, 110).
    pub fn blocks_for_depth(depth: usize) -> Option<usize> {
        matches!(depth, 20 | 32 | 44 | 56 | 110).then_some((depth - 2) / 6)
    }

    pub fn new(blocks_per_stage: usize, num_classes: usize, seed: u64) -> ResNetCifar {
        let mut rng = Rng::new(seed);
        let conv1 = conv("conv1", 3, 16, 3, 1, &mut rng);
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (stage, cout) in [16, 32, 64].into_iter().enumerate() {
            for i in 0..blocks_per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&format!("layer{}.{i}", stage + 1), cin, cout, stride, &mut rng));
                cin = cout;
            }
        }
        let fc = Linear::new("fc", 64, num_classes, true, rng.next_u64());
        ResNetCifar {
            name: format!("resnet{}", 6 * blocks_per_stage + 2),
            num_classes,
            conv1,
            bn1: BatchNorm2d::new("bn1", 16),
            blocks,
            avgpool: GlobalAvgPool::new("avgpool"),
            fc,
        }
    }
}

impl Module for ResNetCifar {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let mut h = conv_batch_norm(g, (&mut self.conv1, &mut self.bn1), x, None, true)?;
        for block in &mut self.blocks {
            h = block.forward(g, &h)?;
        }
        let h = self.avgpool.forward(g, &h)?;
        self.fc.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.conv1, &self.bn1];
        v.extend(self.blocks.iter().map(|b| b as &dyn Module));
        v.extend([&self.avgpool as &dyn Module, &self.fc]);
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.bn1];
        v.extend(self.blocks.iter_mut().map(|b| b as &mut dyn Module));
        v.extend([&mut self.avgpool as &mut dyn Module, &mut self.fc]);
        v
    }
}

impl Model for ResNetCifar {
    fn name(&self) -> &str {
        &self.name
    }
    fn input_size(&self) -> [usize; 3] {
        [3, 32, 32]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn check_input(&self, shape: &Shape) -> Result<()> {
        super::check_image(&self.name, shape, 3, super::Size::AtLeast(1, ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor};

    #[test]
    fn resnet20_has_272474_parameters_with_projection_shortcuts() {
        let m = ResNetCifar::new(3, 10, 0);
        assert_eq!(m.num_params(), 272_474);
        let names: Vec<&str> = m.params().iter().map(|p| p.name()).collect();
        assert_eq!(names[0], "conv1.weight");
        assert!(names.contains(&"layer2.0.downsample.0.weight"));
        assert!(names.contains(&"layer3.2.bn2.bias"));
        assert_eq!(names.last(), Some(&"fc.bias"));
        assert!(!names.contains(&"layer1.0.downsample.0.weight"), "stage 1 keeps identity shortcuts");
    }

    #[test]
    fn forward_gives_one_logit_row_per_image() {
        let mut m = ResNetCifar::new(3, 7, 1);
        let mut g = Graph::eval();
        let x = Var::constant(Tensor::randn([2, 3, 32, 32], 0.0, 1.0, DType::F32, 3));
        let y = m.forward(&mut g, &x).unwrap();
        assert_eq!(y.dims(), &[2, 7]);
        assert!(y.value().to_f64_vec().unwrap().iter().all(|v| v.is_finite()));
        assert!(g.is_empty(), "an eval graph records nothing");
    }
}
