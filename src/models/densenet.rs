//! DenseNet (Huang, Liu, van der Maaten & Weinberger, 2017), as torchvision builds it, and
//! DenseNet-BC-100 for CIFAR.
//!
//! Inside a dense block every layer reads the concatenation of the block's input and the
//! outputs of all the layers before it, and adds `growth` new channels:
//!
//! ```text
//! dense layer:  concat(x0, x1, …, x_{l−1}) → BN → ReLU → conv1×1 (bn_size·growth) → BN → ReLU → conv3×3 (growth)
//! dense block:  x_l = layer_l(x0, …, x_{l−1});  output = concat(x0, x1, …, x_L)
//! transition:   BN → ReLU → conv1×1 (halves the channels: compression 0.5) → avg pool 2×2/2
//! ```
//!
//! The 1×1 "bottleneck" convolution (the B of DenseNet-BC) keeps the 3×3 convolution cheap
//! however many channels the concatenation has grown to; the compression in the transitions
//! (the C) halves the channels between blocks. Every feature map is reused by every later
//! layer of its block, which is why the autograd tape must sum gradients of a value used many
//! times.
//!
//! ImageNet models (`densenet121/169/201/161`): a 7×7/2 stem convolution (64 channels, 96 for
//! 161), BN, ReLU, max pool 3×3/2, then four dense blocks with transitions between them, a
//! final BN (`features.norm5`), ReLU, global average pool and the `classifier`.
//!
//! `densenet_bc100`: depth 100, growth 12, for 32×32 images: a 3×3 stem convolution to
//! 2·growth channels, three dense blocks of 16 layers with two transitions, then the same
//! head. Its final BN keeps torchvision's name, `features.norm5`.
//!
//! Memory-efficient mode (`--memory-efficient`, torchvision's `memory_efficient=True`) trains
//! each dense layer's bottleneck, concatenation → BN → ReLU → 1×1 convolution, as one
//! segment recomputed in backward ([`crate::autograd::Recompute`]): the concatenation and the
//! normalised activations are not kept from the forward pass to the backward one, so a
//! block's activation memory grows with its depth instead of its depth squared. The segment
//! always runs BN and ReLU as one fused kernel, so its values and gradients are the plain
//! mode's bit for bit when that fuses too (the default, not `--no-fuse`; `tests/models.rs`
//! checks it on the CPU and the emulator).
//!
//! Parameter names follow torchvision (`features.denseblock1.denselayer1.norm1.weight`,
//! `features.transition1.conv.weight`, `classifier.weight`), and the convolutions start
//! from `kaiming_normal_` (fan-in) as there.

use super::Model;
use crate::autograd::{Graph, LayerOp, Recompute, Var};
use crate::error::{Error, Result};
use crate::nn::init::Init;
use crate::nn::{
    AvgPool2d, BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Linear, MaxPool2d, Module, conv_batch_norm, join,
};
use crate::ops::{self, ExecOptions, conv2d::Conv2dParams};
use crate::rng::Rng;
use crate::tensor::{Shape, Tensor};

/// The hyper-parameters that tell the DenseNets apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseNetConfig {
    pub growth: usize,
    pub blocks: &'static [usize],
    pub init_features: usize,
    /// Width of each layer's 1×1 bottleneck, in units of `growth`.
    pub bn_size: usize,
    /// A 3×3 stride-1 stem without max pool, for 32×32 images.
    pub cifar_stem: bool,
}

impl DenseNetConfig {
    pub fn by_name(name: &str) -> Option<DenseNetConfig> {
        let imagenet = |growth, blocks, init_features| DenseNetConfig {
            growth,
            blocks,
            init_features,
            bn_size: 4,
            cifar_stem: false,
        };
        match name {
            "densenet121" => Some(imagenet(32, &[6, 12, 24, 16], 64)),
            "densenet169" => Some(imagenet(32, &[6, 12, 32, 32], 64)),
            "densenet201" => Some(imagenet(32, &[6, 12, 48, 32], 64)),
            "densenet161" => Some(imagenet(48, &[6, 12, 36, 24], 96)),
            // Depth 100 = 3 blocks × 16 layers × 2 convolutions + stem + 2 transitions + classifier.
            "densenet_bc100" => Some(DenseNetConfig {
                growth: 12,
                blocks: &[16, 16, 16],
                init_features: 24,
                bn_size: 4,
                cifar_stem: true,
            }),
            _ => None,
        }
    }
}

fn conv(name: &str, cin: usize, cout: usize, k: usize, params: Conv2dParams, rng: &mut Rng) -> Conv2d {
    Conv2d::new(name, cin, cout, k, params, false, Init::KaimingNormalFanIn, rng.next_u64())
}

struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
    dropout: Dropout,
    name: String,
    /// Recompute the bottleneck's front in backward instead of keeping it (Pleiss et al.).
    memory_efficient: bool,
}

impl DenseLayer {
    fn new(name: &str, cin: usize, growth: usize, bn_size: usize, rng: &mut Rng) -> DenseLayer {
        let width = bn_size * growth;
        DenseLayer {
            norm1: BatchNorm2d::new(&join(name, "norm1"), cin),
            conv1: conv(&join(name, "conv1"), cin, width, 1, Conv2dParams::default(), rng),
            norm2: BatchNorm2d::new(&join(name, "norm2"), width),
            conv2: conv(&join(name, "conv2"), width, growth, 3, Conv2dParams::default().padding(1), rng),
            // torchvision's drop_rate defaults to 0; --dropout sets it.
            dropout: Dropout::new(&join(name, "dropout"), 0.0, rng.next_u64()),
            name: name.to_string(),
            memory_efficient: false,
        }
    }

    /// The new `growth` channels, from all the feature maps before it.
    fn forward_features(&mut self, g: &mut Graph, features: &[Var]) -> Result<Var> {
        let h = if self.memory_efficient && g.is_training() && g.is_recording() {
            let h = self.bottleneck_recomputed(g, features)?;
            self.norm2.forward_relu(g, &h)?
        } else {
            self.bottleneck(g, features)?
        };
        let h = self.conv2.forward(g, &h)?;
        if self.dropout.p > 0.0 { self.dropout.forward(g, &h) } else { Ok(h) }
    }

    /// `relu(norm2(conv1(relu(norm1(concat(features))))))`, each op on the tape with what its
    /// backward needs; in an eval graph `norm2` is folded into `conv1` (`conv_batch_norm`).
    fn bottleneck(&mut self, g: &mut Graph, features: &[Var]) -> Result<Var> {
        let x = if let [one] = features {
            one.clone()
        } else {
            let name = join(&self.name, "concat");
            g.begin_layer(&name);
            let x = g.concat(&features.iter().collect::<Vec<_>>())?;
            if g.is_tracing() {
                let channels = features.iter().map(|f| f.dims()[1]).collect();
                g.record_layer(&name, &features[0], &x, 0, LayerOp::Concat { channels });
            }
            x
        };
        let h = self.norm1.forward_relu(g, &x)?;
        conv_batch_norm(g, (&mut self.conv1, &mut self.norm2), &h, None, true)
    }

    /// The same in training mode as one [`Bottleneck`] segment, recomputed in backward: the
    /// concatenation and the normalised activations are not kept. Traced as one layer,
    /// `…bottleneck`, a convolution; the running statistics move as `norm1` would move them.
    fn bottleneck_recomputed(&mut self, g: &mut Graph, features: &[Var]) -> Result<Var> {
        let name = join(&self.name, "bottleneck");
        g.begin_layer(&name);
        let gamma = g.param(&self.norm1.weight);
        let beta = g.param(&self.norm1.bias);
        let w = g.param(&self.conv1.weight);
        let mut inputs: Vec<&Var> = features.iter().collect();
        inputs.extend([&gamma, &beta, &w]);
        let segment = Bottleneck { eps: self.norm1.eps, conv: self.conv1.params };
        let (h, (mean, var)) = g.recompute(&inputs, segment)?;
        let per_channel = features[0].dims()[0] * features[0].dims()[2..].iter().product::<usize>();
        self.norm1.track(per_channel, &mean, &var)?;
        let op = LayerOp::Conv2d {
            weight: self.conv1.weight.value.shape().clone(),
            params: self.conv1.params,
            bias: false,
            relu: false,
        };
        g.record_layer(&name, &features[0], &h, self.norm1.num_params() + self.conv1.num_params(), op);
        Ok(h)
    }
}

/// DenseNet's bottleneck in training mode, `conv1×1(relu(BN(concat(features))))`, as a segment
/// recomputed in backward: the memory-efficient DenseNet of Pleiss et al. (2017). The
/// concatenation and the normalised activations are dropped as soon as the convolution has
/// read them; the tape keeps only the inputs (the features, which the other layers' entries
/// keep anyway, as 16-bit copies in a BF16 or FP16 graph; γ, β and the convolution's weight), so a dense block's activation memory grows
/// linearly with its depth instead of quadratically. The extra output is the batch mean and
/// variance, for the running statistics, which the caller updates once.
struct Bottleneck {
    eps: f64,
    conv: Conv2dParams,
}

/// What the bottleneck's backward needs: the concatenation `x`, `h = relu(BN(x))` and the
/// batch statistics.
struct BottleneckFront {
    x: Tensor,
    h: Tensor,
    mean: Tensor,
    var: Tensor,
}

impl Bottleneck {
    /// The inputs as the features and the weight (γ, β and w).
    fn split(inputs: &[Tensor]) -> Result<(&[Tensor], [&Tensor; 3])> {
        match inputs {
            [features @ .., gamma, beta, w] if !features.is_empty() => Ok((features, [gamma, beta, w])),
            _ => Err(Error::Autograd(format!(
                "a dense bottleneck takes features, γ, β and w, got {} inputs",
                inputs.len()
            ))),
        }
    }
}

impl Recompute for Bottleneck {
    type Front = BottleneckFront;
    type Extra = (Tensor, Tensor);

    /// The features; γ, β and w are parameters.
    fn activation_inputs(&self, n_inputs: usize) -> usize {
        n_inputs.saturating_sub(3)
    }

    fn front(&self, inputs: &[Tensor], _: &ExecOptions) -> Result<BottleneckFront> {
        let (features, [gamma, beta, _]) = Bottleneck::split(inputs)?;
        let x = match features {
            [one] => one.clone(),
            _ => ops::concat::forward(&features.iter().collect::<Vec<_>>())?,
        };
        let epilogue = ops::batchnorm_fused::Epilogue { residual: None, relu: true };
        let out = ops::batchnorm_fused::forward_train_fused(&x, gamma, beta, epilogue, self.eps)?;
        Ok(BottleneckFront { x, h: out.y, mean: out.mean, var: out.var })
    }

    fn output(
        &self,
        front: BottleneckFront,
        inputs: &[Tensor],
        exec: &ExecOptions,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (_, [_, _, w]) = Bottleneck::split(inputs)?;
        let BottleneckFront { x, h, mean, var } = front;
        drop(x);
        let y = ops::conv2d::forward(&h, w, None, self.conv, exec)?;
        drop(h);
        Ok((y, (mean, var)))
    }

    fn backward(
        &self,
        front: BottleneckFront,
        mut inputs: Vec<Tensor>,
        dy: &Tensor,
        needs: &[bool],
        exec: &ExecOptions,
    ) -> Result<Vec<Option<Tensor>>> {
        let weights = inputs.split_off(Bottleneck::split(&inputs)?.0.len());
        let (features, [gamma, _, w]) = (inputs, [&weights[0], &weights[1], &weights[2]]);
        let BottleneckFront { x, h, mean, var } = front;
        let dh = ops::conv2d::backward_data(dy, w, h.shape(), self.conv, exec)?;
        let dw = match needs.get(features.len() + 2) {
            Some(true) => Some(ops::conv2d::backward_filter(dy, &h, w.shape(), self.conv, exec)?),
            _ => None,
        };
        let channels: Vec<usize> = features.iter().map(|f| f.dims()[1]).collect();
        // The last layer of the block to read these features has had its backward: let them go.
        drop(features);
        let g = ops::batchnorm_fused::backward_fused(&dh, &x, Some(&h), gamma, &mean, &var, self.eps, true, false)?;
        drop((h, x));
        let mut grads: Vec<Option<Tensor>> = if channels.len() == 1 {
            vec![Some(g.dx)]
        } else {
            ops::concat::backward(&g.dx, &channels)?.into_iter().map(Some).collect()
        };
        grads.extend([Some(g.dgamma), Some(g.dbeta), dw]);
        Ok(grads)
    }
}

impl Module for DenseLayer {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_features(g, std::slice::from_ref(x))
    }
    fn set_memory_efficient(&mut self, on: bool) -> usize {
        self.memory_efficient = on;
        1
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.norm1, &self.conv1, &self.norm2, &self.conv2, &self.dropout]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.norm1, &mut self.conv1, &mut self.norm2, &mut self.conv2, &mut self.dropout]
    }
}

struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl Module for DenseBlock {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let mut features = vec![x.clone()];
        for layer in &mut self.layers {
            let new = layer.forward_features(g, &features)?;
            features.push(new);
        }
        let refs: Vec<&Var> = features.iter().collect();
        g.concat(&refs)
    }
    fn children(&self) -> Vec<&dyn Module> {
        self.layers.iter().map(|l| l as &dyn Module).collect()
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        self.layers.iter_mut().map(|l| l as &mut dyn Module).collect()
    }
}

struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
    pool: AvgPool2d,
}

impl Module for Transition {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.norm.forward_relu(g, x)?;
        let h = self.conv.forward(g, &h)?;
        self.pool.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.norm, &self.conv, &self.pool]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.norm, &mut self.conv, &mut self.pool]
    }
}

/// The stem: a 7×7/2 convolution, BN, ReLU and max pool for ImageNet; one 3×3 convolution
/// for CIFAR.
struct Stem {
    conv0: Conv2d,
    norm0: Option<BatchNorm2d>,
    pool0: Option<MaxPool2d>,
}

impl Module for Stem {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let mut h = match &mut self.norm0 {
            Some(norm) => conv_batch_norm(g, (&mut self.conv0, norm), x, None, true)?,
            None => self.conv0.forward(g, x)?,
        };
        if let Some(pool) = &mut self.pool0 {
            h = pool.forward(g, &h)?;
        }
        Ok(h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.conv0];
        v.extend(self.norm0.as_ref().map(|m| m as &dyn Module));
        v.extend(self.pool0.as_ref().map(|m| m as &dyn Module));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv0];
        v.extend(self.norm0.as_mut().map(|m| m as &mut dyn Module));
        v.extend(self.pool0.as_mut().map(|m| m as &mut dyn Module));
        v
    }
}

pub struct DenseNet {
    name: String,
    num_classes: usize,
    cifar: bool,
    stem: Stem,
    /// Dense blocks and transitions, in order of execution.
    body: Vec<Box<dyn Module + Send>>,
    norm5: BatchNorm2d,
    pool: GlobalAvgPool,
    classifier: Linear,
}

impl DenseNet {
    pub fn new(name: &str, cfg: DenseNetConfig, num_classes: usize, seed: u64) -> DenseNet {
        let mut rng = Rng::new(seed);
        let stem = if cfg.cifar_stem {
            Stem {
                conv0: conv("features.conv0", 3, cfg.init_features, 3, Conv2dParams::default().padding(1), &mut rng),
                norm0: None,
                pool0: None,
            }
        } else {
            Stem {
                conv0: conv(
                    "features.conv0",
                    3,
                    cfg.init_features,
                    7,
                    Conv2dParams::default().stride(2).padding(3),
                    &mut rng,
                ),
                norm0: Some(BatchNorm2d::new("features.norm0", cfg.init_features)),
                pool0: Some(MaxPool2d::new("features.pool0", 3, 2, 1)),
            }
        };
        let mut body: Vec<Box<dyn Module + Send>> = Vec::new();
        let mut channels = cfg.init_features;
        for (b, &layers) in cfg.blocks.iter().enumerate() {
            let block_name = format!("features.denseblock{}", b + 1);
            let layers = (0..layers)
                .map(|l| {
                    DenseLayer::new(
                        &format!("{block_name}.denselayer{}", l + 1),
                        channels + l * cfg.growth,
                        cfg.growth,
                        cfg.bn_size,
                        &mut rng,
                    )
                })
                .collect::<Vec<_>>();
            channels += layers.len() * cfg.growth;
            body.push(Box::new(DenseBlock { layers }));
            if b + 1 < cfg.blocks.len() {
                let t = format!("features.transition{}", b + 1);
                body.push(Box::new(Transition {
                    norm: BatchNorm2d::new(&join(&t, "norm"), channels),
                    conv: conv(&join(&t, "conv"), channels, channels / 2, 1, Conv2dParams::default(), &mut rng),
                    pool: AvgPool2d::new(&join(&t, "pool"), 2, 2, 0),
                }));
                channels /= 2;
            }
        }
        let mut classifier = Linear::new("classifier", channels, num_classes, true, rng.next_u64());
        if let Some(b) = &mut classifier.bias {
            // torchvision zeroes the classifier's bias.
            b.value = crate::Tensor::zeros([num_classes], crate::DType::F32);
        }
        DenseNet {
            name: name.to_string(),
            num_classes,
            cifar: cfg.cifar_stem,
            stem,
            body,
            norm5: BatchNorm2d::new("features.norm5", channels),
            pool: GlobalAvgPool::new("avgpool"),
            classifier,
        }
    }
}

impl Module for DenseNet {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let mut h = self.stem.forward(g, x)?;
        for part in &mut self.body {
            h = part.forward(g, &h)?;
        }
        let h = self.norm5.forward_relu(g, &h)?;
        let h = self.pool.forward(g, &h)?;
        self.classifier.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut v: Vec<&dyn Module> = vec![&self.stem];
        v.extend(self.body.iter().map(|b| b.as_ref() as &dyn Module));
        v.extend([&self.norm5 as &dyn Module, &self.pool, &self.classifier]);
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.stem];
        v.extend(self.body.iter_mut().map(|b| b.as_mut() as &mut dyn Module));
        v.extend([&mut self.norm5 as &mut dyn Module, &mut self.pool, &mut self.classifier]);
        v
    }
}

impl Model for DenseNet {
    fn name(&self) -> &str {
        &self.name
    }
    fn input_size(&self) -> [usize; 3] {
        if self.cifar { [3, 32, 32] } else { [3, 224, 224] }
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn check_input(&self, shape: &Shape) -> Result<()> {
        // Each 2×2/2 transition pool needs at least 2×2 pixels: after the ImageNet stem (÷4)
        // three of them need 8×8, which a 29×29 image gives; the CIFAR model's two need 4×4.
        let size = if self.cifar {
            super::Size::AtLeast(4, "smaller, the output of features.transition2.pool would be empty")
        } else {
            super::Size::AtLeast(29, "smaller, the output of features.transition3.pool would be empty")
        };
        super::check_image(&self.name, shape, 3, size)
    }
}
