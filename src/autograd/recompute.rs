//! Recomputation in backward (checkpointing): a segment of the forward pass whose tape entry
//! keeps only the segment's inputs.
//!
//! What a segment computes on the way to its output, and its backward needs, is its *front*.
//! [`Graph::recompute`] runs the front, makes the output from it, drops it, and records one
//! entry that holds the inputs and the segment. When the backward pass reaches that entry it
//! runs the front again from the inputs and hands it to the segment's backward. Memory is
//! traded for time: the front is computed twice, but never kept from the forward pass to the
//! backward one. DenseNet's memory-efficient bottleneck (Pleiss et al., 2017) is such a
//! segment (`src/models/densenet.rs`): its front, the concatenation of a layer's inputs and
//! their normalised activations, would otherwise grow with the square of a block's depth.
//!
//! The second run must give the first one's values bit for bit, or the gradients would be
//! those of a slightly different forward pass. Every kernel of the engine reduces in a fixed
//! order, so the same ops on the same inputs with the same [`ExecOptions`] do.

use super::backward::Saved;
use super::keep::widened;
use super::{Graph, Var};
use crate::error::Result;
use crate::ops::ExecOptions;
use crate::tensor::Tensor;

/// A segment of the forward pass that is computed again in backward instead of kept.
///
/// Its inputs are the values of the [`Var`]s given to [`Graph::recompute`], in that order. Each
/// method gets the graph's [`ExecOptions`] (its convolution kernels, for one), the same in
/// forward and backward. `Send + Sync` because the tape keeps the segment, and a graph may
/// move between threads.
pub trait Recompute: Send + Sync + 'static {
    /// What the backward needs that the forward computes on the way: dropped once the output
    /// is made, computed again in backward.
    type Front;
    /// What the forward hands back to its caller besides the output (DenseNet's batch
    /// statistics); `()` when nothing.
    type Extra;

    /// How many of the `n_inputs` inputs, from the first, are activations rather than
    /// parameters. A BF16 or FP16 graph keeps those as 16-bit copies (`keep.rs`), and then
    /// runs the forward pass's front on the copies too, widened, so that both runs see the
    /// same values. None unless a segment says so.
    fn activation_inputs(&self, n_inputs: usize) -> usize {
        let _ = n_inputs;
        0
    }

    /// The front, from the inputs. Runs twice: in the forward pass, and again in backward.
    fn front(&self, inputs: &[Tensor], exec: &ExecOptions) -> Result<Self::Front>;

    /// The segment's output from its front (forward pass only). The front comes by value so
    /// that each part of it can be freed as soon as it has been read.
    fn output(&self, front: Self::Front, inputs: &[Tensor], exec: &ExecOptions) -> Result<(Tensor, Self::Extra)>;

    /// The gradients of the inputs, in their order, from the output's gradient `dy` and the
    /// recomputed front. `needs[i]` says whether input `i` wants one (where it does not, `None`
    /// saves the work). The inputs come by value: the tape holds them until this returns, and
    /// dropping them early can free a tensor no later entry keeps.
    fn backward(
        &self,
        front: Self::Front,
        inputs: Vec<Tensor>,
        dy: &Tensor,
        needs: &[bool],
        exec: &ExecOptions,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// A [`Recompute`] as the tape keeps it, its front's type hidden.
pub(super) trait Segment: Send + Sync {
    /// Runs the front again from the inputs, then the segment's backward.
    fn recompute_backward(
        &self,
        inputs: Vec<Tensor>,
        dy: &Tensor,
        needs: &[bool],
        exec: &ExecOptions,
    ) -> Result<Vec<Option<Tensor>>>;
}

impl<R: Recompute> Segment for R {
    fn recompute_backward(
        &self,
        inputs: Vec<Tensor>,
        dy: &Tensor,
        needs: &[bool],
        exec: &ExecOptions,
    ) -> Result<Vec<Option<Tensor>>> {
        let front = self.front(&inputs, exec)?;
        self.backward(front, inputs, dy, needs, exec)
    }
}

impl Graph {
    /// Runs `segment` over `inputs` and records one tape entry that keeps only the inputs:
    /// the segment's front is freed as soon as its output is made, and computed again when
    /// the backward pass reaches the entry. Returns the output and the segment's extra.
    ///
    /// In a BF16 or FP16 graph the activations among the inputs
    /// ([`Recompute::activation_inputs`]) are kept as 16-bit copies, and the forward pass runs
    /// on them as the backward one will.
    pub fn recompute<R: Recompute>(&mut self, inputs: &[&Var], segment: R) -> Result<(Var, R::Extra)> {
        let mut kept: Vec<Tensor> = inputs.iter().map(|v| v.value.clone()).collect();
        if self.mode.recording && inputs.iter().any(|v| v.requires_grad()) {
            let activations = segment.activation_inputs(kept.len()).min(kept.len());
            for t in &mut kept[..activations] {
                *t = self.kept.keep(t, &self.exec)?;
            }
        }
        let values = kept.iter().map(|t| widened(t.clone())).collect::<Result<Vec<_>>>()?;
        let front = segment.front(&values, &self.exec)?;
        let (y, extra) = segment.output(front, &values, &self.exec)?;
        drop(values);
        let y = self.record(y, inputs, |_| Ok(Saved::Recompute { inputs: kept, segment: Box::new(segment) }))?;
        Ok((y, extra))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::autograd::gradcheck::{GradcheckOptions, gradcheck};
    use crate::ops;

    /// Counts the fronts computed and the fronts dropped.
    #[derive(Default)]
    struct Counts {
        made: AtomicUsize,
        dropped: AtomicUsize,
    }

    /// `linear(relu(a + b), w)`, with `relu(a + b)` as the front; the second field says how
    /// many inputs are activations (a and b, or none).
    struct AddReluLinear(Arc<Counts>, usize);

    struct Front {
        r: Tensor,
        counts: Arc<Counts>,
    }

    impl Drop for Front {
        fn drop(&mut self) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Recompute for AddReluLinear {
        type Front = Front;
        type Extra = ();

        fn activation_inputs(&self, _: usize) -> usize {
            self.1
        }

        fn front(&self, inputs: &[Tensor], _: &ExecOptions) -> Result<Front> {
            self.0.made.fetch_add(1, Ordering::Relaxed);
            let r = ops::elementwise::relu_forward(&ops::elementwise::add(&inputs[0], &inputs[1])?)?;
            Ok(Front { r, counts: self.0.clone() })
        }

        fn output(&self, front: Front, inputs: &[Tensor], exec: &ExecOptions) -> Result<(Tensor, ())> {
            Ok((ops::linear::forward(&front.r, &inputs[2], None, exec)?, ()))
        }

        fn backward(
            &self,
            front: Front,
            inputs: Vec<Tensor>,
            dy: &Tensor,
            needs: &[bool],
            exec: &ExecOptions,
        ) -> Result<Vec<Option<Tensor>>> {
            let dr = ops::linear::backward_data(dy, &inputs[2], exec.precision)?;
            let dw = if needs[2] { Some(ops::linear::backward_weight(dy, &front.r, exec.precision)?) } else { None };
            let ds = ops::elementwise::relu_backward(&dr, &front.r)?;
            Ok(vec![Some(ds.clone()), Some(ds), dw])
        }
    }

    fn inputs() -> [Tensor; 3] {
        [
            Tensor::randn([4, 5], 0.0, 1.0, crate::DType::F64, 1),
            Tensor::randn([4, 5], 0.0, 1.0, crate::DType::F64, 2),
            Tensor::randn([3, 5], 0.0, 1.0, crate::DType::F64, 3),
        ]
    }

    /// The output's values and the leaves' gradients for the output gradient `dy`.
    fn run(g: Graph, y: &Var, leaves: &[Var], dy: &Tensor) -> (Vec<f64>, Vec<Vec<f64>>) {
        let value = y.value().to_vec::<f64>().unwrap();
        let grads = g.backward_with_grad(y, dy.clone()).unwrap();
        (value, leaves.iter().map(|l| grads.of(l).unwrap().to_vec::<f64>().unwrap()).collect())
    }

    #[test]
    fn a_recomputed_segment_keeps_only_its_inputs_and_gives_the_plain_gradients() {
        let [a, b, w] = inputs();
        let dy = Tensor::randn([4, 3], 0.0, 1.0, crate::DType::F64, 4);

        let mut g = Graph::new();
        let leaves = [a.clone(), b.clone(), w.clone()].map(|t| g.leaf(t));
        let s = g.add(&leaves[0], &leaves[1]).unwrap();
        let r = g.relu(&s).unwrap();
        let y = g.linear(&r, &leaves[2], None).unwrap();
        let plain = run(g, &y, &leaves, &dy);

        let counts = Arc::new(Counts::default());
        let mut g = Graph::new();
        let leaves = [a, b, w].map(|t| g.leaf(t));
        let (y, ()) = g.recompute(&leaves.each_ref(), AddReluLinear(counts.clone(), 0)).unwrap();
        assert_eq!(g.len(), 4, "three leaves and one entry for the whole segment");
        let made_dropped = || (counts.made.load(Ordering::Relaxed), counts.dropped.load(Ordering::Relaxed));
        assert_eq!(made_dropped(), (1, 1), "the forward pass drops the front it made");
        let recomputed = run(g, &y, &leaves, &dy);
        assert_eq!(made_dropped(), (2, 2), "backward makes the front again, and drops it");
        assert_eq!(recomputed, plain, "the same output and gradients, bit for bit");
    }

    #[test]
    fn a_segment_that_is_not_recorded_runs_its_front_once() {
        let counts = Arc::new(Counts::default());
        let mut g = Graph::eval();
        let xs = inputs().map(Var::constant);
        let (y, ()) = g.recompute(&xs.each_ref(), AddReluLinear(counts.clone(), 2)).unwrap();
        assert!(!y.requires_grad() && g.is_empty());
        assert_eq!(counts.made.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn gradcheck_through_a_recomputed_segment() {
        let counts = Arc::new(Counts::default());
        let f = |g: &mut Graph, v: &[Var]| {
            let (y, ()) = g.recompute(&[&v[0], &v[1], &v[2]], AddReluLinear(counts.clone(), 0))?;
            Ok(y)
        };
        let opts = GradcheckOptions { training: true, ..GradcheckOptions::default() };
        let report = gradcheck(&inputs(), f, opts).unwrap();
        assert!(report.passed(), "{report:?}");
    }

    /// In a BF16 graph a segment keeps the inputs it calls activations as BF16 copies and runs
    /// its forward pass on them: it computes what the plain ops compute from the inputs
    /// rounded to BF16, output and gradients bit for bit, and keeps its parameter as it is.
    #[test]
    fn a_bf16_segment_keeps_16_bit_inputs_and_runs_on_them() {
        use crate::ops::precision::{Precision, round_tensor};
        let exec = ExecOptions::with_precision(Precision::Bf16);
        let f32s = inputs().map(|t| t.to_dtype(crate::DType::F32).unwrap());
        let dy = Tensor::randn([4, 3], 0.0, 1.0, crate::DType::F32, 4);

        let mut g = Graph::new().with_options(exec);
        let [a, b] = [&f32s[0], &f32s[1]].map(|t| round_tensor(t, Precision::Bf16).unwrap());
        let leaves = [a, b, f32s[2].clone()].map(|t| g.leaf(t));
        let s = g.add(&leaves[0], &leaves[1]).unwrap();
        let r = g.relu(&s).unwrap();
        let y = g.linear(&r, &leaves[2], None).unwrap();
        let (value, grads) = (y.value().to_vec::<f32>().unwrap(), g.backward_with_grad(&y, dy.clone()).unwrap());
        let plain: Vec<Vec<f32>> = leaves.iter().map(|l| grads.of(l).unwrap().to_vec::<f32>().unwrap()).collect();

        let counts = Arc::new(Counts::default());
        let mut g = Graph::new().with_options(exec);
        let leaves = f32s.map(|t| g.leaf(t));
        let (y, ()) = g.recompute(&leaves.each_ref(), AddReluLinear(counts, 2)).unwrap();
        let Some(Saved::Recompute { inputs, .. }) = g.nodes.last().map(|n| &n.saved) else { panic!("a segment") };
        let dtypes: Vec<_> = inputs.iter().map(Tensor::dtype).collect();
        assert_eq!(dtypes, [crate::DType::BF16, crate::DType::BF16, crate::DType::F32]);
        assert_eq!(y.value().to_vec::<f32>().unwrap(), value, "the forward pass ran on the rounded inputs");
        let grads = g.backward_with_grad(&y, dy).unwrap();
        let recomputed: Vec<Vec<f32>> = leaves.iter().map(|l| grads.of(l).unwrap().to_vec::<f32>().unwrap()).collect();
        assert_eq!(recomputed, plain);
    }
}
