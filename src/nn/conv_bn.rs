//! A convolution and the batch norm after it, `act(bn(conv(x)) + residual)`: the two layers as
//! written in the papers, or in an eval graph that fuses, batch norm folded into the
//! convolution (one op, [`Graph::conv2d_batch_norm_eval`]), as inference engines fold it.
//! The values are the same bits either way.

use super::{BatchNorm2d, Conv2d, Module};
use crate::autograd::{BnEpilogue, Graph, LayerOp, Var};
use crate::error::Result;

/// `act(bn(conv(x)) + residual)`, with `relu` as the activation. Both layers are still
/// recorded for a trace or a profile, in order; folded, the convolution's row holds the time
/// of both.
pub fn conv_batch_norm(
    g: &mut Graph,
    (conv, bn): (&mut Conv2d, &mut BatchNorm2d),
    x: &Var,
    residual: Option<&Var>,
    relu: bool,
) -> Result<Var> {
    if g.is_training() || g.is_recording() || !g.fuses() {
        let h = conv.forward(g, x)?;
        return bn.forward_act(g, &h, residual, relu);
    }
    g.begin_layer(&conv.name);
    let w = g.param(&conv.weight);
    let b = conv.bias.as_ref().map(|b| g.param(b));
    let (gamma, beta) = (g.param(&bn.weight), g.param(&bn.bias));
    let y = g.conv2d_batch_norm_eval(
        x,
        (&w, b.as_ref(), conv.params),
        (&gamma, &beta),
        (&bn.running_mean, &bn.running_var),
        BnEpilogue { residual, relu },
        bn.eps,
    )?;
    g.record_layer(&conv.name, x, &y, conv.num_params(), conv.layer_op(false));
    g.begin_layer(bn.name());
    g.record_layer(
        bn.name(),
        &y,
        &y,
        bn.num_params(),
        LayerOp::BatchNorm { residual: residual.is_some(), relu, folded: true },
    );
    Ok(y)
}

#[cfg(test)]
mod tests {
    use crate::autograd::{Graph, LayerOp, Var};
    use crate::models;
    use crate::ops::ExecOptions;
    use crate::tensor::{DType, Shape, Tensor};

    /// Whole networks give the same logits with batch norm folded into their convolutions as
    /// with every op on its own (`fuse` off), and the trace still holds each batch norm, after
    /// its convolution, marked folded: all of a ResNet's, and DenseNet's stem and bottleneck
    /// ones (its pre-activation batch norms come before their convolutions).
    #[test]
    fn folded_networks_give_the_logits_of_the_separate_ops() {
        for (name, size) in [("resnet20", 8), ("resnet18", 32), ("resnet50", 32), ("densenet_bc100", 8)] {
            let mut model = models::build(name, 10, 0).unwrap();
            // Running statistics other than the initial ones, so that folding has work to do.
            for (i, (_, t)) in model.buffers_mut().into_iter().enumerate() {
                if t.dtype() == DType::F32 {
                    let shape = t.shape().clone();
                    *t = Tensor::uniform(shape.dims().to_vec(), 0.5, 1.5, DType::F32, i as u64);
                }
            }
            let x = Var::constant(Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 9));
            let mut folded = Graph::eval();
            folded.start_trace();
            let got = model.forward(&mut folded, &x).unwrap().value().to_vec::<f32>().unwrap();
            let apart = ExecOptions { fuse: false, ..ExecOptions::default() };
            let want =
                model.forward(&mut Graph::eval().with_options(apart), &x).unwrap().value().to_vec::<f32>().unwrap();
            assert_eq!(got, want, "{name}");
            let layers = folded.take_trace();
            let bns: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].kind == "BatchNorm2d").collect();
            assert!(!bns.is_empty());
            for i in bns {
                let bn = &layers[i];
                // DenseNet's norm1, transition norms and norm5 normalise a convolution's input.
                let after_conv =
                    !name.starts_with("densenet") || bn.name.ends_with("norm0") || bn.name.ends_with("norm2");
                let folded = matches!(bn.op, LayerOp::BatchNorm { folded: true, .. });
                assert_eq!(folded, after_conv, "{name}: {}", bn.name);
                if folded {
                    assert_eq!(layers[i - 1].kind, "Conv2d", "{name}: {} follows its convolution", bn.name);
                    assert_eq!(bn.output, Shape::new(layers[i - 1].output.dims().to_vec()));
                }
            }
        }
    }
}
