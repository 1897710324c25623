//! ResNet (He et al., 2015) as torchvision builds it: ResNet-18/34 from basic blocks,
//! ResNet-50/101/152 from bottleneck blocks, for 224×224 ImageNet images.
//!
//! ```text
//! conv1 7×7/2, 64 → bn1 → ReLU → maxpool 3×3/2
//! layer1..layer4: blocks at 64, 128, 256, 512 channels (×4 for bottlenecks);
//!                 the first block of layer2..4 halves height and width
//! global average pool → fc
//!
//! basic block:       x ─ conv3×3 ─ BN ─ ReLU ─ conv3×3 ─ BN ─(+)─ ReLU
//! bottleneck block:  x ─ conv1×1 ─ BN ─ ReLU ─ conv3×3 ─ BN ─ ReLU ─ conv1×1 (×4) ─ BN ─(+)─ ReLU
//!                    └──────────── shortcut (identity, or 1×1 conv + BN) ────────────┘
//! ```
//!
//! This is "ResNet v1.5": in a bottleneck the stride sits on the 3×3 convolution, not the first
//! 1×1 (a 1×1 with stride 2 would skip three quarters of its input). Where a block changes the
//! shape, its shortcut is a 1×1 convolution with the block's stride and a batch norm,
//! `layerN.M.downsample.0/.1`. The bottleneck's 1×1 convolutions are what make deep ResNets
//! affordable: a 256-channel bottleneck has 256·64 + 64·64·9 + 64·256 = 69,632 weights, about
//! 17 times fewer than the 1,179,648 of two 3×3 convolutions at 256 channels.

use super::Model;
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::nn::init::Init;
use crate::nn::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, Module, conv_batch_norm, join};
use crate::ops::conv2d::Conv2dParams;
use crate::rng::Rng;
use crate::tensor::Shape;

pub(crate) fn conv(name: &str, cin: usize, cout: usize, k: usize, stride: usize, rng: &mut Rng) -> Conv2d {
    let p = Conv2dParams::default().stride(stride).padding(k / 2);
    Conv2d::new(name, cin, cout, k, p, false, Init::KaimingNormalFanOut, rng.next_u64())
}

/// The shortcut of a block that changes the shape: 1×1 convolution with the block's stride,
/// then batch norm.
pub(crate) struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Downsample {
    fn new(block: &str, cin: usize, cout: usize, stride: usize, rng: &mut Rng) -> Downsample {
        Downsample {
            conv: conv(&join(block, "downsample.0"), cin, cout, 1, stride, rng),
            bn: BatchNorm2d::new(&join(block, "downsample.1"), cout),
        }
    }
}

impl Module for Downsample {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        conv_batch_norm(g, (&mut self.conv, &mut self.bn), x, None, false)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.conv, &self.bn]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv, &mut self.bn]
    }
}

/// The block's last convolution and batch norm, the shortcut (projected if the block has a
/// downsample) added, and the final ReLU: `relu(bn(conv(h)) + shortcut(x))`, the last three
/// in one fused kernel when the graph fuses, and in an eval graph all four in one op
/// (`conv_batch_norm`). (The shortcut is computed first, so that the fused op can read it.)
fn finish(
    g: &mut Graph,
    (x, h): (&Var, &Var),
    last: (&mut Conv2d, &mut BatchNorm2d),
    downsample: &mut Option<Downsample>,
) -> Result<Var> {
    let shortcut = match downsample {
        Some(d) => d.forward(g, x)?,
        None => x.clone(),
    };
    conv_batch_norm(g, last, h, Some(&shortcut), true)
}

pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    pub const EXPANSION: usize = 1;

    pub fn new(name: &str, cin: usize, planes: usize, stride: usize, rng: &mut Rng) -> BasicBlock {
        let downsample = (stride != 1 || cin != planes).then(|| Downsample::new(name, cin, planes, stride, rng));
        BasicBlock {
            conv1: conv(&join(name, "conv1"), cin, planes, 3, stride, rng),
            bn1: BatchNorm2d::new(&join(name, "bn1"), planes),
            conv2: conv(&join(name, "conv2"), planes, planes, 3, 1, rng),
            bn2: BatchNorm2d::new(&join(name, "bn2"), planes),
            downsample,
        }
    }
}

impl Module for BasicBlock {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = conv_batch_norm(g, (&mut self.conv1, &mut self.bn1), x, None, true)?;
        finish(g, (x, &h), (&mut self.conv2, &mut self.bn2), &mut self.downsample)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2];
        v.extend(self.downsample.as_ref().map(|d| d as &dyn Module));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.bn2];
        v.extend(self.downsample.as_mut().map(|d| d as &mut dyn Module));
        v
    }
}

pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    pub const EXPANSION: usize = 4;

    pub fn new(name: &str, cin: usize, planes: usize, stride: usize, rng: &mut Rng) -> Bottleneck {
        let cout = planes * Self::EXPANSION;
        let downsample = (stride != 1 || cin != cout).then(|| Downsample::new(name, cin, cout, stride, rng));
        Bottleneck {
            conv1: conv(&join(name, "conv1"), cin, planes, 1, 1, rng),
            bn1: BatchNorm2d::new(&join(name, "bn1"), planes),
            conv2: conv(&join(name, "conv2"), planes, planes, 3, stride, rng),
            bn2: BatchNorm2d::new(&join(name, "bn2"), planes),
            conv3: conv(&join(name, "conv3"), planes, cout, 1, 1, rng),
            bn3: BatchNorm2d::new(&join(name, "bn3"), cout),
            downsample,
        }
    }
}

impl Module for Bottleneck {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = conv_batch_norm(g, (&mut self.conv1, &mut self.bn1), x, None, true)?;
        let h = conv_batch_norm(g, (&mut self.conv2, &mut self.bn2), &h, None, true)?;
        finish(g, (x, &h), (&mut self.conv3, &mut self.bn3), &mut self.downsample)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2, &self.conv3, &self.bn3];
        v.extend(self.downsample.as_ref().map(|d| d as &dyn Module));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> =
            vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.bn2, &mut self.conv3, &mut self.bn3];
        v.extend(self.downsample.as_mut().map(|d| d as &mut dyn Module));
        v
    }
}

/// The ImageNet ResNets.
pub struct ResNet {
    name: String,
    num_classes: usize,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    maxpool: MaxPool2d,
    blocks: Vec<Box<dyn Module + Send>>,
    avgpool: GlobalAvgPool,
    fc: Linear,
}

impl ResNet {
    /// Blocks per stage and whether they are bottlenecks, for the torchvision depths.
    pub fn config(depth: usize) -> Option<([usize; 4], bool)> {
        match depth {
            18 => Some(([2, 2, 2, 2], false)),
            34 => Some(([3, 4, 6, 3], false)),
            50 => Some(([3, 4, 6, 3], true)),
            101 => Some(([3, 4, 23, 3], true)),
            152 => Some(([3, 8, 36, 3], true)),
            _ => None,
        }
    }

    pub fn new(name: &str, layers: [usize; 4], bottleneck: bool, num_classes: usize, seed: u64) -> ResNet {
        let mut rng = Rng::new(seed);
        let conv1 = Conv2d::new(
            "conv1",
            3,
            64,
            7,
            Conv2dParams::default().stride(2).padding(3),
            false,
            Init::KaimingNormalFanOut,
            rng.next_u64(),
        );
        let expansion = if bottleneck { Bottleneck::EXPANSION } else { BasicBlock::EXPANSION };
        let mut blocks: Vec<Box<dyn Module + Send>> = Vec::new();
        let mut cin = 64;
        for (stage, (&count, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let block_name = format!("layer{}.{i}", stage + 1);
                blocks.push(if bottleneck {
                    Box::new(Bottleneck::new(&block_name, cin, planes, stride, &mut rng))
                } else {
                    Box::new(BasicBlock::new(&block_name, cin, planes, stride, &mut rng))
                });
                cin = planes * expansion;
            }
        }
        let fc = Linear::new("fc", 512 * expansion, num_classes, true, rng.next_u64());
        ResNet {
            name: name.to_string(),
            num_classes,
            conv1,
            bn1: BatchNorm2d::new("bn1", 64),
            maxpool: MaxPool2d::new("maxpool", 3, 2, 1),
            blocks,
            avgpool: GlobalAvgPool::new("avgpool"),
            fc,
        }
    }
}

impl Module for ResNet {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = conv_batch_norm(g, (&mut self.conv1, &mut self.bn1), x, None, true)?;
        let mut h = self.maxpool.forward(g, &h)?;
        for block in &mut self.blocks {
            h = block.forward(g, &h)?;
        }
        let h = self.avgpool.forward(g, &h)?;
        self.fc.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.conv1, &self.bn1, &self.maxpool];
        v.extend(self.blocks.iter().map(|b| b.as_ref() as &dyn Module));
        v.extend([&self.avgpool as &dyn Module, &self.fc]);
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.bn1, &mut self.maxpool];
        v.extend(self.blocks.iter_mut().map(|b| b.as_mut() as &mut dyn Module));
        v.extend([&mut self.avgpool as &mut dyn Module, &mut self.fc]);
        v
    }
}

impl Model for ResNet {
    fn name(&self) -> &str {
        &self.name
    }
    fn input_size(&self) -> [usize; 3] {
        [3, 224, 224]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn check_input(&self, shape: &Shape) -> Result<()> {
        super::check_image(&self.name, shape, 3, super::Size::AtLeast(1, ""))
    }
}
