//! AlexNet as in the 2012 paper (Krizhevsky, Sutskever & Hinton) and the Caffe model that
//! reproduced it, for 3×227×227 images:
//!
//! ```text
//! conv1  96 × 11×11, stride 4        → ReLU → LRN → max pool 3×3/2     55×55 → 27×27
//! conv2 256 × 5×5, pad 2, 2 groups   → ReLU → LRN → max pool 3×3/2     27×27 → 13×13
//! conv3 384 × 3×3, pad 1             → ReLU                           13×13
//! conv4 384 × 3×3, pad 1, 2 groups   → ReLU                           13×13
//! conv5 256 × 3×3, pad 1, 2 groups   → ReLU → max pool 3×3/2          13×13 → 6×6
//! fc6 9216 → 4096 → ReLU → dropout → fc7 4096 → ReLU → dropout → fc8
//! ```
//!
//! The groups are the paper's two GPUs: conv2, conv4 and conv5 see only the half of the
//! channels that lives on their own GPU, while conv3 and the fully connected layers read
//! both halves. The pools overlap (3×3 windows at stride 2), which the paper credits with a
//! small drop in error, and LRN follows the first two convolutions (size 5, α = 1e-4,
//! β = 0.75, k = 2). The fully connected layers flatten in C, H, W order. Weights start from
//! PyTorch's defaults.

use super::Model;
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::nn::init::Init;
use crate::nn::{Conv2d, Dropout, Linear, LocalResponseNorm, MaxPool2d, Module};
use crate::ops::conv2d::Conv2dParams;
use crate::ops::lrn::LrnParams;
use crate::rng::Rng;
use crate::tensor::Shape;

pub struct AlexNet {
    pub(super) num_classes: usize,
    pub(super) conv1: Conv2d,
    pub(super) norm1: LocalResponseNorm,
    pub(super) pool1: MaxPool2d,
    pub(super) conv2: Conv2d,
    pub(super) norm2: LocalResponseNorm,
    pub(super) pool2: MaxPool2d,
    pub(super) conv3: Conv2d,
    pub(super) conv4: Conv2d,
    pub(super) conv5: Conv2d,
    pub(super) pool5: MaxPool2d,
    pub(super) fc6: Linear,
    pub(super) drop6: Dropout,
    pub(super) fc7: Linear,
    pub(super) drop7: Dropout,
    pub(super) fc8: Linear,
}

impl AlexNet {
    /// Dropout probability of the paper.
    pub const DROPOUT: f64 = 0.5;

    pub fn new(num_classes: usize, seed: u64) -> AlexNet {
        let mut rng = Rng::new(seed);
        let p = Conv2dParams::default;
        let mut conv = |name: &str, cin, cout, k, params| {
            Conv2d::new(name, cin, cout, k, params, true, Init::Default, rng.next_u64())
        };
        let conv1 = conv("conv1", 3, 96, 11, p().stride(4));
        let conv2 = conv("conv2", 96, 256, 5, p().padding(2).groups(2));
        let conv3 = conv("conv3", 256, 384, 3, p().padding(1));
        let conv4 = conv("conv4", 384, 384, 3, p().padding(1).groups(2));
        let conv5 = conv("conv5", 384, 256, 3, p().padding(1).groups(2));
        AlexNet {
            num_classes,
            conv1,
            norm1: LocalResponseNorm::new("norm1", LrnParams::alexnet()),
            pool1: MaxPool2d::new("pool1", 3, 2, 0),
            conv2,
            norm2: LocalResponseNorm::new("norm2", LrnParams::alexnet()),
            pool2: MaxPool2d::new("pool2", 3, 2, 0),
            conv3,
            conv4,
            conv5,
            pool5: MaxPool2d::new("pool5", 3, 2, 0),
            fc6: Linear::new("fc6", 256 * 6 * 6, 4096, true, rng.next_u64()),
            drop6: Dropout::new("drop6", Self::DROPOUT, rng.next_u64()),
            fc7: Linear::new("fc7", 4096, 4096, true, rng.next_u64()),
            drop7: Dropout::new("drop7", Self::DROPOUT, rng.next_u64()),
            fc8: Linear::new("fc8", 4096, num_classes, true, rng.next_u64()),
        }
    }
}

impl Module for AlexNet {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward_relu(g, x)?;
        let h = self.norm1.forward(g, &h)?;
        let h = self.pool1.forward(g, &h)?;
        let h = self.conv2.forward_relu(g, &h)?;
        let h = self.norm2.forward(g, &h)?;
        let h = self.pool2.forward(g, &h)?;
        let h = self.conv3.forward_relu(g, &h)?;
        let h = self.conv4.forward_relu(g, &h)?;
        let h = self.conv5.forward_relu(g, &h)?;
        let h = self.pool5.forward(g, &h)?;
        let h = g.flatten(&h)?;
        let h = self.fc6.forward_relu(g, &h)?;
        let h = self.drop6.forward(g, &h)?;
        let h = self.fc7.forward_relu(g, &h)?;
        let h = self.drop7.forward(g, &h)?;
        self.fc8.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![
            &self.conv1,
            &self.norm1,
            &self.pool1,
            &self.conv2,
            &self.norm2,
            &self.pool2,
            &self.conv3,
            &self.conv4,
            &self.conv5,
            &self.pool5,
            &self.fc6,
            &self.drop6,
            &self.fc7,
            &self.drop7,
            &self.fc8,
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![
            &mut self.conv1,
            &mut self.norm1,
            &mut self.pool1,
            &mut self.conv2,
            &mut self.norm2,
            &mut self.pool2,
            &mut self.conv3,
            &mut self.conv4,
            &mut self.conv5,
            &mut self.pool5,
            &mut self.fc6,
            &mut self.drop6,
            &mut self.fc7,
            &mut self.drop7,
            &mut self.fc8,
        ]
    }
}

impl AlexNet {
    /// The batch shape AlexNet (on one device or two) takes: fc6 reads exactly 256·6·6
    /// values, so the image size is fixed.
    pub(super) fn check_image_shape(shape: &Shape) -> Result<()> {
        super::check_image("alexnet", shape, 3, super::Size::Exactly(227, 227, "its fc6 reads exactly 256×6×6 values"))
    }
}

impl Model for AlexNet {
    fn name(&self) -> &str {
        "alexnet"
    }
    fn input_size(&self) -> [usize; 3] {
        [3, 227, 227]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn split_towers(self: Box<Self>, devices: [crate::device::Device; 2]) -> Result<Box<dyn Model>> {
        Ok(Box::new(super::AlexNetTowers::split(*self, devices)?))
    }
    fn check_input(&self, shape: &Shape) -> Result<()> {
        AlexNet::check_image_shape(shape)
    }
}
