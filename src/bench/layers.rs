//! A network, traced, as the problems of its training step: one image runs through the model
//! on the CPU with layer tracing on, and each layer becomes the problems a training step at
//! the bench's batch size runs (a convolution becomes its forward pass, data gradient and
//! filter gradient). Layers of the same shape are timed once and counted.

use std::collections::HashMap;

use super::{Pass, Problem};
use crate::autograd::{Graph, LayerOp, LayerRecord, Var};
use crate::error::Result;
use crate::models;
use crate::tensor::{DType, Shape, Tensor};

/// The layers of `model` as it runs one `input`-sized image, in order.
pub(super) fn trace(model: &str) -> Result<(Vec<LayerRecord>, [usize; 3], usize)> {
    let mut m = models::build(model, 1000, 0)?;
    let input = m.input_size();
    let [c, h, w] = input;
    let mut g = Graph::eval();
    g.start_trace();
    m.forward(&mut g, &Var::constant(Tensor::zeros([1, c, h, w], DType::F32)))?;
    Ok((g.take_trace(), input, m.num_classes()))
}

/// A shape with its batch dimension replaced.
fn with_batch(s: &Shape, batch: usize) -> Shape {
    let mut d = s.dims().to_vec();
    if let Some(first) = d.first_mut() {
        *first = batch;
    }
    Shape::new(d)
}

/// The problems one training step of a traced network runs, layer by layer.
pub fn layer_problems(layers: &[LayerRecord], batch: usize) -> Vec<Problem> {
    layers.iter().enumerate().flat_map(|(i, l)| problems_of_layer(l, batch, i == 0)).collect()
}

/// The problems of one layer in a training step at `batch` images: forward first. The
/// network's `first` layer computes no input gradient (frameworks skip it).
pub fn problems_of_layer(l: &LayerRecord, batch: usize, first: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    {
        let x = with_batch(&l.input, batch);
        let y = with_batch(&l.output, batch);
        let fwd_bwd = |make: &dyn Fn(Pass) -> Problem| [make(Pass::Forward), make(Pass::Backward)];
        match &l.op {
            LayerOp::Conv2d { weight, params, bias, relu } => {
                let conv = |pass| Problem::Conv {
                    x: x.clone(),
                    w: weight.clone(),
                    params: *params,
                    bias: *bias,
                    relu: *relu,
                    pass,
                };
                out.push(conv(Pass::Forward));
                if !first {
                    out.push(conv(Pass::BackwardData));
                }
                out.push(conv(Pass::BackwardFilter));
            }
            LayerOp::Linear { weight, bias, relu } => {
                let (outputs, inputs) = (weight.dims()[0], weight.dims()[1]);
                for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
                    out.push(Problem::Linear { n: batch, inputs, outputs, bias: *bias, relu: *relu, pass });
                }
            }
            LayerOp::BatchNorm { residual, relu, .. } => {
                out.extend(fwd_bwd(&|pass| Problem::BatchNorm { x: y.clone(), residual: *residual, relu: *relu, pass }))
            }
            LayerOp::MaxPool2d(p) => out.extend(fwd_bwd(&|pass| Problem::MaxPool { x: x.clone(), p: *p, pass })),
            LayerOp::AvgPool2d(p) => out.extend(fwd_bwd(&|pass| Problem::AvgPool { x: x.clone(), p: *p, pass })),
            LayerOp::GlobalAvgPool => out.extend(fwd_bwd(&|pass| Problem::GlobalAvgPool { x: x.clone(), pass })),
            LayerOp::Lrn(p) => out.extend(fwd_bwd(&|pass| Problem::Lrn { x: x.clone(), p: *p, pass })),
            LayerOp::Dropout(p) if *p > 0.0 => {
                out.extend(fwd_bwd(&|pass| Problem::Dropout { x: x.clone(), p: *p, pass }))
            }
            LayerOp::Dropout(_) => {}
            // A copy between devices is timed by the multi-device runs, not as a problem.
            LayerOp::Exchange { .. } => {}
            LayerOp::Concat { channels } => {
                let (h, w) = (y.dims()[2], y.dims()[3]);
                out.extend(fwd_bwd(&|pass| Problem::Concat { n: batch, h, w, channels: channels.clone(), pass }))
            }
        }
    }
    out
}

/// Problems with the number of layers that share each, in order of first appearance.
pub(super) fn dedupe(problems: Vec<Problem>) -> Vec<(Problem, usize)> {
    let mut out: Vec<(Problem, usize)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for p in problems {
        let key = p.key();
        match index.get(&key) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(key, out.len());
                out.push((p, 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_layers_become_the_problems_of_a_training_step() {
        let (layers, input, classes) = trace("resnet50").unwrap();
        assert_eq!(input, [3, 224, 224]);
        assert_eq!(classes, 1000);
        let problems = layer_problems(&layers, 8);
        let convs = layers.iter().filter(|l| matches!(l.op, LayerOp::Conv2d { .. })).count();
        assert_eq!(convs, 53, "ResNet-50 has 53 convolutions (with the 4 projection shortcuts)");
        let count = |pass| problems.iter().filter(|p| matches!(p, Problem::Conv { pass: q, .. } if *q == pass)).count();
        assert_eq!(count(Pass::Forward), 53);
        assert_eq!(count(Pass::BackwardData), 52, "no data gradient for the stem");
        assert_eq!(count(Pass::BackwardFilter), 53);
        // The stem at batch 8: 8×3×224×224 through 64 7×7 filters, stride 2.
        let Problem::Conv { x, w, params, .. } = &problems[0] else { panic!("{:?}", problems[0]) };
        assert_eq!((x.dims(), w.dims(), params.stride), (&[8, 3, 224, 224][..], &[64, 3, 7, 7][..], (2, 2)));
        let deduped = dedupe(problems.clone());
        assert!(deduped.len() < problems.len());
        assert_eq!(deduped.iter().map(|(_, n)| n).sum::<usize>(), problems.len());
        // The classifier: 2048 → 1000 at batch 8.
        assert!(problems.contains(&Problem::Linear {
            n: 8,
            inputs: 2048,
            outputs: 1000,
            bias: true,
            relu: false,
            pass: Pass::BackwardFilter
        }));
    }

    #[test]
    fn densenet_concatenations_are_problems_too() {
        let (layers, _, _) = trace("densenet121").unwrap();
        let problems = layer_problems(&layers, 2);
        // Every dense layer but the first of each block reads a concatenation: 58 − 4.
        let concats = problems.iter().filter(|p| matches!(p, Problem::Concat { pass: Pass::Forward, .. })).count();
        assert_eq!(concats, 54);
    }
}
