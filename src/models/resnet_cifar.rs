//! The CIFAR ResNets of He et al. (2015, section 4.2): ResNet-20/32/44/56/110.
//!
//! A 3×3 stem convolution to 16 channels (no max pool: the images are only 32×32), then three
//! stages of `n` basic blocks at 16, 32 and 64 channels, the second and third starting with a
//! stride-2 block, then global average pooling and one fully connected layer. Depth is
//! `6n + 2`. Where a block changes the shape, its shortcut is a 1×1 stride-2 convolution with
//! batch norm, named `layerN.0.downsample.0/.1` as in torchvision. That is the paper's
//! option B; for CIFAR the paper itself used option A (identity shortcuts padded with zero
//! channels, no parameters: 269,722 for ResNet-20 instead of 272,474). Option B keeps one
//! kind of shortcut across all our ResNets and loads torchvision-style weights unchanged.
//!
//! ```text
//! basic block:  x ─ conv3×3 ─ BN ─ ReLU ─ conv3×3 ─ BN ─(+)─ ReLU
//!               └────────────── shortcut ───────────────┘
//! ```

use crate::autograd::{Graph, Param, Var};
use crate::error::Result;
use crate::nn::init::Init;
use crate::nn::{BatchNorm2d, Conv2d, Linear, Module, join};
use crate::ops::conv2d::Conv2dParams;
use crate::rng::Rng;
use crate::tensor::Tensor;

fn conv3x3(name: &str, cin: usize, cout: usize, stride: usize, rng: &mut Rng) -> Conv2d {
    let p = Conv2dParams::default().stride(stride).padding(1);
    Conv2d::new(name, cin, cout, 3, p, false, Init::KaimingNormalFanOut, rng.next_u64())
}

pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(name: &str, cin: usize, cout: usize, stride: usize, rng: &mut Rng) -> BasicBlock {
        let downsample = (stride != 1 || cin != cout).then(|| {
            let p = Conv2dParams::default().stride(stride);
            let conv = Conv2d::new(
                &join(name, "downsample.0"),
                cin,
                cout,
                1,
                p,
                false,
                Init::KaimingNormalFanOut,
                rng.next_u64(),
            );
            (conv, BatchNorm2d::new(&join(name, "downsample.1"), cout))
        });
        BasicBlock {
            conv1: conv3x3(&join(name, "conv1"), cin, cout, stride, rng),
            bn1: BatchNorm2d::new(&join(name, "bn1"), cout),
            conv2: conv3x3(&join(name, "conv2"), cout, cout, 1, rng),
            bn2: BatchNorm2d::new(&join(name, "bn2"), cout),
            downsample,
        }
    }
}

impl Module for BasicBlock {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(g, x)?;
        let h = self.bn1.forward(g, &h)?;
        let h = g.relu(&h)?;
        let h = self.conv2.forward(g, &h)?;
        let h = self.bn2.forward(g, &h)?;
        let shortcut = match &mut self.downsample {
            Some((conv, bn)) => {
                let s = conv.forward(g, x)?;
                bn.forward(g, &s)?
            }
            None => x.clone(),
        };
        let sum = g.add(&h, &shortcut)?;
        g.relu(&sum)
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = self.conv1.params();
        v.extend(self.bn1.params());
        v.extend(self.conv2.params());
        v.extend(self.bn2.params());
        if let Some((c, b)) = &self.downsample {
            v.extend(c.params());
            v.extend(b.params());
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.conv1.params_mut();
        v.extend(self.bn1.params_mut());
        v.extend(self.conv2.params_mut());
        v.extend(self.bn2.params_mut());
        if let Some((c, b)) = &mut self.downsample {
            v.extend(c.params_mut());
            v.extend(b.params_mut());
        }
        v
    }

    fn buffers_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v = self.bn1.buffers_mut();
        v.extend(self.bn2.buffers_mut());
        if let Some((_, b)) = &mut self.downsample {
            v.extend(b.buffers_mut());
        }
        v
    }
}

pub struct ResNetCifar {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNetCifar {
    /// Blocks per stage for a depth `6n + 2` of the paper's list (20, 32, 44, 56, 110).
    pub fn blocks_for_depth(depth: usize) -> Option<usize> {
        matches!(depth, 20 | 32 | 44 | 56 | 110).then_some((depth - 2) / 6)
    }

    pub fn new(blocks_per_stage: usize, num_classes: usize, seed: u64) -> ResNetCifar {
        let mut rng = Rng::new(seed);
        let conv1 = conv3x3("conv1", 3, 16, 1, &mut rng);
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
        ResNetCifar { conv1, bn1: BatchNorm2d::new("bn1", 16), blocks, fc }
    }
}

impl Module for ResNetCifar {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(g, x)?;
        let h = self.bn1.forward(g, &h)?;
        let mut h = g.relu(&h)?;
        for block in &mut self.blocks {
            h = block.forward(g, &h)?;
        }
        let h = g.global_avg_pool(&h)?;
        let h = g.flatten(&h)?;
        self.fc.forward(g, &h)
    }

    fn params(&self) -> Vec<&Param> {
        let mut v = self.conv1.params();
        v.extend(self.bn1.params());
        for b in &self.blocks {
            v.extend(b.params());
        }
        v.extend(self.fc.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.conv1.params_mut();
        v.extend(self.bn1.params_mut());
        for b in &mut self.blocks {
            v.extend(b.params_mut());
        }
        v.extend(self.fc.params_mut());
        v
    }

    fn buffers_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v = self.bn1.buffers_mut();
        for b in &mut self.blocks {
            v.extend(b.buffers_mut());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

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
