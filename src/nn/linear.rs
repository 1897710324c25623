use super::init::{self, Init};
use super::{Module, join};
use crate::autograd::{Graph, LayerOp, Param, Var};
use crate::error::Result;

/// `nn.Linear`: weight `[out, in]`, bias `[out]`, both `U(−1/√in, 1/√in)` as PyTorch.
pub struct Linear {
    pub name: String,
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    pub fn new(name: &str, in_features: usize, out_features: usize, bias: bool, seed: u64) -> Linear {
        let weight = Param::new(join(name, "weight"), init::weight([out_features, in_features], Init::Default, seed));
        let bias = bias.then(|| Param::new(join(name, "bias"), init::bias(out_features, in_features, seed ^ 0xB1A5)));
        Linear { name: name.to_string(), weight, bias }
    }
}

impl Linear {
    /// `relu(x·Wᵀ + b)`: the bias and ReLU in one pass when the graph fuses.
    pub fn forward_relu(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_act(g, x, true)
    }

    fn forward_act(&mut self, g: &mut Graph, x: &Var, relu: bool) -> Result<Var> {
        g.begin_layer(&self.name);
        let w = g.param(&self.weight);
        let b = self.bias.as_ref().map(|b| g.param(b));
        let fused = relu && g.fuses();
        let y = if fused { g.linear_relu(x, &w, b.as_ref())? } else { g.linear(x, &w, b.as_ref())? };
        let y = if relu && !fused { g.relu(&y)? } else { y };
        let op = LayerOp::Linear { weight: self.weight.value.shape().clone(), bias: self.bias.is_some(), relu };
        g.record_layer(&self.name, x, &y, self.num_params(), op);
        Ok(y)
    }
}

impl Module for Linear {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_act(g, x, false)
    }

    fn params(&self) -> Vec<&Param> {
        std::iter::once(&self.weight).chain(self.bias.as_ref()).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut()).collect()
    }
}
