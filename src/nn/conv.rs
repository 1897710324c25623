use super::init::{self, Init};
use super::{Module, join};
use crate::autograd::{Graph, LayerOp, Param, Var};
use crate::error::Result;
use crate::ops::conv2d::Conv2dParams;

/// `nn.Conv2d`: weight `[out, in/groups, k, k]`, optional bias `[out]`.
pub struct Conv2d {
    pub name: String,
    pub weight: Param,
    pub bias: Option<Param>,
    pub params: Conv2dParams,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
        bias: bool,
        init: Init,
        seed: u64,
    ) -> Conv2d {
        let shape = [out_channels, in_channels / params.groups.max(1), kernel, kernel];
        let weight = Param::new(join(name, "weight"), init::weight(shape, init, seed));
        let fan_in = shape[1] * kernel * kernel;
        let bias = bias.then(|| {
            let b = match init {
                Init::Default => init::bias(out_channels, fan_in, seed ^ 0xB1A5),
                // torchvision zeroes the biases it initialises itself.
                _ => crate::Tensor::zeros([out_channels], crate::DType::F32),
            };
            Param::new(join(name, "bias"), b)
        });
        Conv2d { name: name.to_string(), weight, bias, params }
    }
}

impl Conv2d {
    /// `relu(conv(x) + b)`: the bias and ReLU fused into the convolution's output when the
    /// graph fuses.
    pub fn forward_relu(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_act(g, x, true)
    }

    fn forward_act(&mut self, g: &mut Graph, x: &Var, relu: bool) -> Result<Var> {
        g.begin_layer(&self.name);
        let w = g.param(&self.weight);
        let b = self.bias.as_ref().map(|b| g.param(b));
        let fused = relu && g.fuses();
        let y = if fused {
            g.conv2d_relu(x, &w, b.as_ref(), self.params)?
        } else {
            g.conv2d(x, &w, b.as_ref(), self.params)?
        };
        let y = if relu && !fused { g.relu(&y)? } else { y };
        g.record_layer(&self.name, x, &y, self.num_params(), self.layer_op(relu));
        Ok(y)
    }

    /// What a trace records of this layer.
    pub(crate) fn layer_op(&self, relu: bool) -> LayerOp {
        LayerOp::Conv2d {
            weight: self.weight.value.shape().clone(),
            params: self.params,
            bias: self.bias.is_some(),
            relu,
        }
    }
}

impl Module for Conv2d {
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
