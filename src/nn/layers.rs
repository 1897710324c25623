//! The layers without parameters, as modules: pooling, local response normalisation,
//! dropout. Each is a thin wrapper over the graph op that gives it a name for summaries.

use super::Module;
use crate::autograd::{Graph, LayerOp, Var};
use crate::error::Result;
use crate::ops::dropout::Seed;
use crate::ops::lrn::LrnParams;
use crate::ops::pool::Pool2dParams;
use crate::rng::Rng;

/// `nn.MaxPool2d`.
pub struct MaxPool2d {
    pub name: String,
    pub params: Pool2dParams,
}

impl MaxPool2d {
    pub fn new(name: &str, kernel: usize, stride: usize, padding: usize) -> MaxPool2d {
        MaxPool2d { name: name.into(), params: Pool2dParams::new(kernel, stride).padding(padding) }
    }
}

impl Module for MaxPool2d {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        g.begin_layer(&self.name);
        let y = g.max_pool2d(x, self.params)?;
        g.record_layer(&self.name, x, &y, 0, LayerOp::MaxPool2d(self.params));
        Ok(y)
    }
}

/// `nn.AvgPool2d` (with `count_include_pad=True`).
pub struct AvgPool2d {
    pub name: String,
    pub params: Pool2dParams,
}

impl AvgPool2d {
    pub fn new(name: &str, kernel: usize, stride: usize, padding: usize) -> AvgPool2d {
        AvgPool2d { name: name.into(), params: Pool2dParams::new(kernel, stride).padding(padding) }
    }
}

impl Module for AvgPool2d {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        g.begin_layer(&self.name);
        let y = g.avg_pool2d(x, self.params)?;
        g.record_layer(&self.name, x, &y, 0, LayerOp::AvgPool2d(self.params));
        Ok(y)
    }
}

/// `nn.AdaptiveAvgPool2d((1, 1))` followed by `torch.flatten(x, 1)`: `[N, C, H, W] → [N, C]`.
pub struct GlobalAvgPool {
    pub name: String,
}

impl GlobalAvgPool {
    pub fn new(name: &str) -> GlobalAvgPool {
        GlobalAvgPool { name: name.into() }
    }
}

impl Module for GlobalAvgPool {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        g.begin_layer(&self.name);
        let pooled = g.global_avg_pool(x)?;
        let y = g.flatten(&pooled)?;
        g.record_layer(&self.name, x, &y, 0, LayerOp::GlobalAvgPool);
        Ok(y)
    }
}

/// `nn.LocalResponseNorm`.
pub struct LocalResponseNorm {
    pub name: String,
    pub params: LrnParams,
}

impl LocalResponseNorm {
    pub fn new(name: &str, params: LrnParams) -> LocalResponseNorm {
        LocalResponseNorm { name: name.into(), params }
    }
}

impl Module for LocalResponseNorm {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        g.begin_layer(&self.name);
        let y = g.lrn(x, self.params)?;
        g.record_layer(&self.name, x, &y, 0, LayerOp::Lrn(self.params));
        Ok(y)
    }
}

/// `nn.Dropout`: inverted dropout in training graphs, the identity in eval graphs. Each
/// training forward draws a fresh mask seed from the layer's own generator, so a run is
/// reproducible from the model's seed.
pub struct Dropout {
    pub name: String,
    pub p: f64,
    rng: Rng,
    /// The seed in device memory, once the step is to be captured as a graph.
    device_seed: Option<crate::tensor::Tensor>,
}

impl Dropout {
    pub fn new(name: &str, p: f64, seed: u64) -> Dropout {
        Dropout { name: name.into(), p, rng: Rng::new(seed), device_seed: None }
    }

    /// The same mask on copies of one tensor (AlexNet's towers on two devices each hold the
    /// whole fully connected activation): one seed drawn, as one forward draws it, applied to
    /// every `x` in `xs`, so each copy is dropped as the one device's tensor would be.
    pub fn forward_copies(&mut self, g: &mut Graph, xs: &[Var], names: &[String]) -> Result<Vec<Var>> {
        let seed = if g.is_training() { self.rng.next_u64() } else { 0 };
        xs.iter()
            .zip(names)
            .map(|(x, name)| {
                g.begin_layer(name);
                let y = g.dropout_seeded(x, self.p, Seed::Host(seed))?;
                g.record_layer(name, x, &y, 0, LayerOp::Dropout(self.p));
                Ok(y)
            })
            .collect()
    }
}

impl Module for Dropout {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let seed = match (&self.device_seed, g.is_training()) {
            // Written by prepare_replay, which drew it from the generator.
            (Some(t), true) => Seed::Device(t.clone()),
            (None, true) => Seed::Host(self.rng.next_u64()),
            (_, false) => Seed::Host(0),
        };
        g.begin_layer(&self.name);
        let y = g.dropout_seeded(x, self.p, seed)?;
        g.record_layer(&self.name, x, &y, 0, LayerOp::Dropout(self.p));
        Ok(y)
    }

    fn prepare_capture(&mut self, device: crate::device::Device) -> Result<()> {
        if self.device_seed.is_none() {
            self.device_seed = Some(crate::tensor::Tensor::zeros_on([1], crate::tensor::DType::I64, device)?);
        }
        Ok(())
    }

    fn prepare_replay(&mut self) -> Result<()> {
        let Some(t) = &mut self.device_seed else { return Ok(()) };
        let seed = self.rng.next_u64();
        match t.device().gpu()? {
            Some(gpu) => gpu.write(t.gpu_buffer()?, bytemuck::bytes_of(&seed)),
            None => {
                *t = crate::tensor::Tensor::from_vec([1], vec![seed as i64])?;
                Ok(())
            }
        }
    }

    fn active_dropout(&self) -> usize {
        usize::from(self.p > 0.0)
    }

    fn set_dropout(&mut self, p: f64) -> usize {
        self.p = p;
        1
    }
}
