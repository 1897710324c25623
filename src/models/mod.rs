//! The networks, built from [`crate::nn`] layers, with torchvision's parameter names.
//!
//! | name | network | input | parameters (1000 classes; CIFAR nets 10) |
//! |---|---|---|---|
//! | `alexnet` | the 2012 paper / Caffe version, LRN, grouped conv2/4/5 | 3×227×227 | 60,965,224 |
//! | `resnet18`, `resnet34` | torchvision, basic blocks | 3×224×224 | 11,689,512 / 21,797,672 |
//! | `resnet50`, `resnet101`, `resnet152` | torchvision v1.5, bottlenecks | 3×224×224 | 25,557,032 / 44,549,160 / 60,192,808 |
//! | `resnet20` … `resnet110` | He et al. CIFAR nets | 3×32×32 | 272,474 (resnet20) |
//! | `densenet121/169/201/161` | torchvision | 3×224×224 | 7,978,856 / 14,149,480 / 20,013,928 / 28,681,000 |
//! | `densenet_bc100` | DenseNet-BC, depth 100, growth 12 | 3×32×32 | 769,162 |

mod alexnet;
mod alexnet_towers;
mod densenet;
mod resnet;
mod resnet_cifar;

pub use alexnet::AlexNet;
pub use alexnet_towers::AlexNetTowers;
pub use densenet::{DenseNet, DenseNetConfig};
pub use resnet::ResNet;
pub use resnet_cifar::ResNetCifar;

use crate::autograd::{Graph, LayerOp, LayerRecord, Var};
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::{DType, Shape, Tensor};

/// A whole network: a module that knows what input it takes.
pub trait Model: Module + Send {
    fn name(&self) -> &str;
    /// `[C, H, W]` of the images it was designed for.
    fn input_size(&self) -> [usize; 3];
    fn num_classes(&self) -> usize;
    /// Checks a batch's shape `[N, C, H, W]` before a forward pass, with an error that names
    /// the size the model expects.
    fn check_input(&self, shape: &Shape) -> Result<()>;

    /// The model split into two towers on two devices (`--towers --devices A,B`); only
    /// AlexNet, the network the paper split, has towers.
    fn split_towers(self: Box<Self>, devices: [crate::device::Device; 2]) -> Result<Box<dyn Model>> {
        Err(Error::argument(
            "--towers",
            format!("{} has no towers to put on {} and {} (AlexNet has)", self.name(), devices[0], devices[1]),
        ))
    }

    /// For a model spread over several devices (the towers), the same network on one device,
    /// on the CPU, with the one-device parameter names: what a checkpoint saves. `None` for a
    /// model that is already one.
    fn merged(&self) -> Result<Option<Box<dyn Model>>> {
        Ok(None)
    }
}

/// The names [`build`] accepts.
pub const MODEL_NAMES: &[&str] = &[
    "alexnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "densenet_bc100",
];

/// The classes a model has when not told otherwise: 10 for the CIFAR nets, 1000 for the
/// ImageNet ones.
pub fn default_num_classes(name: &str) -> usize {
    if is_cifar(name) { 10 } else { 1000 }
}

/// True for the networks designed for 32×32 images.
pub fn is_cifar(name: &str) -> bool {
    name == "densenet_bc100"
        || name
            .strip_prefix("resnet")
            .and_then(|d| d.parse::<usize>().ok())
            .is_some_and(|d| ResNetCifar::blocks_for_depth(d).is_some())
}

/// The most classes a model may have: a typo must not ask for a classifier that cannot be
/// allocated.
const MAX_CLASSES: usize = 100_000;

/// A model by name, with `num_classes` outputs, its initial weights drawn from `seed`.
pub fn build(name: &str, num_classes: usize, seed: u64) -> Result<Box<dyn Model>> {
    check_name(name)?;
    // One class would make the loss zero whatever the weights: nothing to learn.
    if !(2..=MAX_CLASSES).contains(&num_classes) {
        return Err(Error::argument(
            "model",
            format!("the number of classes must be between 2 and {MAX_CLASSES}, got {num_classes}"),
        ));
    }
    if name == "alexnet" {
        return Ok(Box::new(AlexNet::new(num_classes, seed)));
    }
    if let Some(depth) = name.strip_prefix("resnet").and_then(|d| d.parse::<usize>().ok()) {
        if let Some(blocks) = ResNetCifar::blocks_for_depth(depth) {
            return Ok(Box::new(ResNetCifar::new(blocks, num_classes, seed)));
        }
        if let Some((layers, bottleneck)) = ResNet::config(depth) {
            return Ok(Box::new(ResNet::new(name, layers, bottleneck, num_classes, seed)));
        }
    }
    if let Some(cfg) = DenseNetConfig::by_name(name) {
        return Ok(Box::new(DenseNet::new(name, cfg, num_classes, seed)));
    }
    Err(Error::argument("model", format!("unknown model '{name}' (known: {})", MODEL_NAMES.join(", "))))
}

/// Checks a model name without building the model (so a typo fails before data loads).
pub fn check_name(name: &str) -> Result<()> {
    if MODEL_NAMES.contains(&name) {
        Ok(())
    } else {
        Err(Error::argument("model", format!("unknown model '{name}' (known: {})", MODEL_NAMES.join(", "))))
    }
}

/// The image sizes a model accepts, with the reason where there is a limit: the layer that
/// fixes the size, or the first whose output would be empty below it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Size {
    Exactly(usize, usize, &'static str),
    AtLeast(usize, &'static str),
}

pub(crate) fn check_image(model: &str, shape: &Shape, channels: usize, size: Size) -> Result<()> {
    let want = match size {
        Size::Exactly(h, w, why) => format!("images of {channels}×{h}×{w} for {model} ({why})"),
        Size::AtLeast(1, _) => format!("images of {channels} channels for {model}"),
        Size::AtLeast(m, why) => format!("images of {channels} channels, at least {m}×{m}, for {model} ({why})"),
    };
    let bad = || Error::shape("input", format!("a batch [N, C, H, W] of {want}"), format!("shape {shape}"));
    let (_, c, h, w) = shape.dims4().ok_or_else(bad)?;
    let fits = c == channels
        && match size {
            Size::Exactly(eh, ew, _) => h == eh && w == ew,
            Size::AtLeast(m, _) => h >= m && w >= m,
        };
    if fits { Ok(()) } else { Err(bad()) }
}

/// The layers of `model` as one image of `[C, H, W]` runs through them in eval mode, on the
/// device the model lives on, each with its input and output shape. A size the model
/// cannot take is an error that names the layer where it fails.
pub fn trace_layers(model: &mut dyn Model, [c, h, w]: [usize; 3]) -> Result<Vec<LayerRecord>> {
    model.check_input(&[1, c, h, w].into())?;
    let device = model.params().first().map_or(crate::Device::Cpu, |p| p.value.device());
    let x = Tensor::zeros([1, c, h, w], DType::F32).to_device(device)?;
    let mut g = Graph::eval();
    g.start_trace();
    if let Err(e) = model.forward(&mut g, &Var::constant(x)) {
        let name = model.name().to_string();
        let layer = g.current_layer().map(str::to_string).filter(|_| !matches!(e, Error::OutOfMemory { .. }));
        return Err(match layer {
            Some(layer) => {
                let reached =
                    g.take_trace().last().map(|l| format!(" (its input is {})", l.output)).unwrap_or_default();
                Error::argument("input", format!("{name} cannot take {c}×{h}×{w} images: {layer} fails{reached}: {e}"))
            }
            None => e,
        });
    }
    // Concatenations are recorded for `bench`, but they are not modules of the network.
    Ok(g.take_trace().into_iter().filter(|l| l.op.is_module()).collect())
}

/// Bytes per image that a training step keeps for its backward pass at the least: the
/// outputs of the convolutions (f32), which the next layer's backward or their own batch norm
/// needs whatever is fused or recomputed. The real figure is larger (`scratchnet profile`
/// measures it); this one is for refusing a batch that can never fit.
pub fn kept_bytes_lower_bound(layers: &[LayerRecord]) -> usize {
    let per_image = |l: &LayerRecord| l.output.numel() / l.output.dims().first().copied().unwrap_or(1).max(1);
    layers.iter().filter(|l| matches!(l.op, LayerOp::Conv2d { .. })).map(|l| per_image(l) * 4).sum()
}

/// The smallest batch a training step can take, and why: 2 when some batch norm would see
/// a single value per channel in a batch of one image (its 1×1 maps at this image size),
/// which gives no variance to normalise by (PyTorch refuses it too); else 1.
pub fn min_train_batch(layers: &[LayerRecord]) -> (usize, Option<&str>) {
    let single = layers
        .iter()
        .find(|l| matches!(l.op, LayerOp::BatchNorm { .. }) && l.input.dims().iter().skip(2).product::<usize>() == 1);
    match single {
        Some(l) => (2, Some(l.name.as_str())),
        None => (1, None),
    }
}
