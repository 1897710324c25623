//! Reverse-mode automatic differentiation on a tape.
//!
//! A [`Graph`] records each op as it runs forward: which inputs it read and what it must keep
//! for its backward pass (an input, an output, a mask). Values are [`Var`]s: a tensor plus,
//! when a gradient will be needed, the index of the tape entry that produced it. The tape is
//! in execution order, which is a topological order, so [`Graph::backward`] simply walks it
//! from the end: each entry turns the gradient of its output into gradients of its inputs,
//! and where a value fed several ops (a residual shortcut, a DenseNet feature map read by
//! every later layer) their contributions are summed.
//!
//! - A `Var` made by [`Graph::input`] or from a plain tensor is a constant: no gradient flows
//!   to it, and an op whose inputs are all constant records nothing.
//! - [`Graph::eval`] makes a graph that records nothing at all (inference), and tells the
//!   layers to use eval behaviour (running statistics, no dropout).
//! - Parameters ([`Param`]) live outside the tape and get their gradients from the
//!   [`Gradients`] that `backward` returns.
//!
//! This file holds the tape itself: [`Var`], the [`Graph`] (its construction, options,
//! tracing, recording, and the backward walk) and [`Gradients`]. Around it:
//!
//! - `graph_ops.rs`: the ops (convolution, linear, pooling, LRN, ReLU, addition,
//!   concatenation, dropout, reshape, cross-entropy), and `batch_norm.rs`: batch
//!   normalisation with its epilogues;
//! - `backward.rs`: what each tape entry keeps, and its backward pass; `keep.rs`: the 16-bit
//!   copies of those activations in a BF16 or FP16 graph;
//! - `recompute.rs`: segments whose entry keeps only their inputs and that are computed again
//!   in backward ([`Recompute`], DenseNet's memory-efficient bottleneck);
//! - `profile.rs`: what a profiled step records, forward and backward ([`profile`]);
//! - `param.rs`: [`Param`]; `gradcheck.rs`: [`gradcheck`], finite differences.

mod backward;
mod batch_norm;
pub mod gradcheck;
mod graph_ops;
mod keep;
mod param;
pub mod profile;
mod recompute;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub use batch_norm::{BatchNormOutput, BnEpilogue, BnStats, SyncBn};
pub use param::{Param, ParamId};
pub use recompute::Recompute;

use crate::error::{Error, Result};
use crate::ops::{self, ExecOptions, conv2d::Conv2dParams, lrn::LrnParams, pool::Pool2dParams};
use crate::tensor::{Shape, Tensor};
use backward::Saved;

/// A value in a computation: a tensor, and the tape entry that made it (if it needs a gradient).
#[derive(Clone, Debug)]
pub struct Var {
    value: Tensor,
    node: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeId {
    graph: u64,
    index: usize,
}

impl Var {
    /// A constant: no gradient will be computed for it.
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn into_value(self) -> Tensor {
        self.value
    }

    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }

    /// True when a gradient will flow back through this value.
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
}

/// One tape entry: what its op keeps for backward, and where its inputs came from.
struct Node {
    saved: Saved,
    /// The tape index of each input, or `None` for a constant input.
    inputs: Vec<Option<usize>>,
}

/// How a graph behaves: whether it records for backward, and whether layers train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub recording: bool,
    pub training: bool,
}

/// The tape of one forward pass, and how its ops run ([`Mode`], [`ExecOptions`]). A fresh one
/// for each step; [`Graph::backward`] consumes it.
pub struct Graph {
    id: u64,
    mode: Mode,
    nodes: Vec<Node>,
    param_nodes: HashMap<ParamId, usize>,
    /// When set, layers describe themselves here as they run (`scratchnet summary`).
    trace: Option<Vec<LayerRecord>>,
    /// Which kernels run: the convolution variant, towers, fusion. Set once for the graph
    /// ([`Graph::with_options`]); the layers and the ops they call, forward and backward,
    /// receive it from here.
    exec: ExecOptions,
    /// When set, each layer's end is marked in the device's queue (`scratchnet profile`).
    profile: Option<Box<profile::Recorder>>,
    /// The layer that began last (see [`Graph::begin_layer`]), for error messages: the layer
    /// where an image became too small, or where memory ran out.
    current_layer: String,
    /// The 16-bit copies of the activations the tape keeps, in a BF16 or FP16 graph.
    kept: keep::KeptActivations,
    /// In a data-parallel replica's training graph under `--sync-bn`: batch norm takes the
    /// statistics of every device's part of the batch ([`Graph::with_sync_bn`]).
    sync_bn: Option<SyncBn>,
}

/// One layer, as it ran: what `scratchnet summary` prints, and what `scratchnet bench`
/// turns into the problems it times (the layer shapes of a real network).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRecord {
    /// The layer's dotted name (`layer1.0.conv1`).
    pub name: String,
    /// Its kind (`Conv2d`, `BatchNorm2d`, ...).
    pub kind: &'static str,
    pub input: Shape,
    pub output: Shape,
    /// Trainable values it owns.
    pub params: usize,
    /// Multiply-adds of its forward pass (convolutions and linear layers; 0 for the rest).
    pub macs: u64,
    /// What it computes, with the parameters of the op.
    pub op: LayerOp,
    /// The device its output lives on (AlexNet's towers on two devices have layers on each).
    pub device: crate::device::Device,
}

/// The op a layer runs, as [`LayerRecord`] keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerOp {
    /// With the fused bias and ReLU when `relu`.
    Conv2d {
        weight: Shape,
        params: Conv2dParams,
        bias: bool,
        relu: bool,
    },
    Linear {
        weight: Shape,
        bias: bool,
        relu: bool,
    },
    /// With the fused residual addition and ReLU where the network has them. `folded`: run
    /// inside the convolution before it (an eval graph, `nn::conv_batch_norm`), no op of its
    /// own.
    BatchNorm {
        residual: bool,
        relu: bool,
        folded: bool,
    },
    MaxPool2d(Pool2dParams),
    AvgPool2d(Pool2dParams),
    GlobalAvgPool,
    Lrn(LrnParams),
    Dropout(f64),
    /// DenseNet's concatenation of the feature maps before a layer (not a layer itself).
    Concat {
        channels: Vec<usize>,
    },
    /// Activations copied from one device to another (AlexNet's towers on two devices meeting
    /// at conv3 and the fully connected layers): not a layer of the network, but a row of
    /// the profile.
    Exchange {
        from: crate::device::Device,
        to: crate::device::Device,
    },
}

impl LayerOp {
    /// The module kind, as PyTorch names it.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerOp::Conv2d { .. } => "Conv2d",
            LayerOp::Linear { .. } => "Linear",
            LayerOp::BatchNorm { .. } => "BatchNorm2d",
            LayerOp::MaxPool2d(_) => "MaxPool2d",
            LayerOp::AvgPool2d(_) => "AvgPool2d",
            LayerOp::GlobalAvgPool => "GlobalAvgPool",
            LayerOp::Lrn(_) => "LocalResponseNorm",
            LayerOp::Dropout(_) => "Dropout",
            LayerOp::Concat { .. } => "Concat",
            LayerOp::Exchange { .. } => "Copy",
        }
    }

    /// Whether it is a module of the network (a summary row); concatenations are not.
    pub fn is_module(&self) -> bool {
        !matches!(self, LayerOp::Concat { .. } | LayerOp::Exchange { .. })
    }

    /// Multiply-adds of the forward pass for this output shape.
    pub fn macs(&self, output: &Shape) -> u64 {
        let per_output = match self {
            LayerOp::Conv2d { weight, .. } => weight.dims()[1..].iter().product::<usize>(),
            LayerOp::Linear { weight, .. } => weight.dims().get(1).copied().unwrap_or(0),
            _ => 0,
        };
        (output.numel() * per_output) as u64
    }
}

impl Default for Graph {
    fn default() -> Self {
        Graph::new()
    }
}

impl Graph {
    /// A training graph: it records, and layers use batch statistics and dropout.
    pub fn new() -> Graph {
        Graph::with_mode(Mode { recording: true, training: true })
    }

    /// An inference graph: it records nothing; layers use running statistics, no dropout.
    pub fn eval() -> Graph {
        Graph::with_mode(Mode { recording: false, training: false })
    }

    pub fn with_mode(mode: Mode) -> Graph {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Graph {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            mode,
            nodes: Vec::new(),
            param_nodes: HashMap::new(),
            trace: None,
            exec: ExecOptions::default(),
            profile: None,
            current_layer: String::new(),
            kept: keep::KeptActivations::default(),
            sync_bn: None,
        }
    }

    /// This graph, its batch norms synchronised across the devices of `sync` (training only:
    /// an eval graph uses the running statistics, which need no sum).
    pub fn with_sync_bn(mut self, sync: SyncBn) -> Graph {
        self.sync_bn = Some(sync);
        self
    }

    /// Whether layers should run their fused forms (the default), or each op on its own, as
    /// written in the paper (`--no-fuse`, and the comparisons in the tests and benchmarks).
    pub fn fuses(&self) -> bool {
        self.exec.fuse
    }

    /// This graph, running its ops with `exec` instead of the defaults.
    pub fn with_options(mut self, exec: ExecOptions) -> Graph {
        self.exec = exec;
        self
    }

    /// The execution choices this graph's ops run with.
    pub fn options(&self) -> &ExecOptions {
        &self.exec
    }

    /// The options an op of this graph receives: the graph's, and whether the weights stay
    /// fixed, which they do in a graph that records nothing for backward.
    fn op_options(&self) -> ExecOptions {
        ExecOptions { weights_fixed: !self.mode.recording, ..self.exec }
    }

    /// Starts collecting a [`LayerRecord`] for every layer that runs.
    pub fn start_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// The layers recorded since [`Graph::start_trace`].
    pub fn take_trace(&mut self) -> Vec<LayerRecord> {
        self.trace.take().unwrap_or_default()
    }

    /// Profiles this graph: every layer's forward and backward time and the memory it keeps
    /// for backward, read from [`Gradients::take_profile`] after [`Graph::backward`]. Turns
    /// tracing on.
    pub fn start_profile(&mut self, device: crate::device::Device) -> Result<()> {
        self.start_trace();
        self.profile = Some(Box::new(profile::Recorder::new(device)?));
        Ok(())
    }

    /// Ends the profile of a graph that runs no backward (an eval forward pass): the layers'
    /// forward times, with no backward time and nothing kept. `None` when not profiling.
    pub fn finish_profile(&mut self) -> Result<Option<profile::StepProfile>> {
        let Some(recorder) = self.profile.take() else { return Ok(None) };
        let trace = self.trace.take().unwrap_or_default();
        profile::BackwardProfile::start(*recorder, &self.nodes, trace).finish().map(Some)
    }

    /// Called by layers before they run: remembers the layer (for error messages) and opens
    /// its NVTX range when profiling.
    pub fn begin_layer(&mut self, name: &str) {
        self.current_layer.clear();
        self.current_layer.push_str(name);
        if self.profile.is_some() {
            profile::nvtx::push(name);
            crate::device::streams::set_label(name);
        }
    }

    /// Called by layers after they run; does nothing unless tracing (which profiling turns on).
    pub fn record_layer(&mut self, name: &str, input: &Var, output: &Var, params: usize, op: LayerOp) {
        if let Some(p) = &mut self.profile {
            profile::nvtx::pop();
            if let Some(stamp) = p.mark() {
                p.forward.push((self.nodes.len(), stamp));
            }
        }
        if let Some(t) = &mut self.trace {
            t.push(LayerRecord {
                name: name.to_string(),
                kind: op.kind(),
                input: input.shape().clone(),
                output: output.shape().clone(),
                params,
                macs: op.macs(output.shape()),
                op,
                device: output.value.device(),
            });
        }
    }

    /// The layer that began last in the forward pass, if any has.
    pub fn current_layer(&self) -> Option<&str> {
        Some(self.current_layer.as_str()).filter(|n| !n.is_empty())
    }

    /// Whether layers are being recorded (so they can skip building a record otherwise).
    pub fn is_tracing(&self) -> bool {
        self.trace.is_some()
    }

    pub fn is_training(&self) -> bool {
        self.mode.training
    }

    pub fn is_recording(&self) -> bool {
        self.mode.recording
    }

    /// Number of entries on the tape (for tests).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A constant input (data, labels): no gradient.
    pub fn input(&mut self, value: Tensor) -> Var {
        Var::constant(value)
    }

    /// An input whose gradient is wanted; read it back with [`Gradients::of`].
    pub fn leaf(&mut self, value: Tensor) -> Var {
        if !self.mode.recording {
            return Var::constant(value);
        }
        self.push(value, Saved::Input, Vec::new())
    }

    /// A parameter. Reading one parameter twice gives the same tape entry, so its gradient
    /// is the sum over both uses.
    pub fn param(&mut self, p: &Param) -> Var {
        if !self.mode.recording {
            return Var::constant(p.value.clone());
        }
        if let Some(prof) = &mut self.profile {
            prof.params.insert(p.value.storage_id());
        }
        if let Some(&index) = self.param_nodes.get(&p.id()) {
            return Var { value: p.value.clone(), node: Some(NodeId { graph: self.id, index }) };
        }
        let var = self.push(p.value.clone(), Saved::Param(p.id()), Vec::new());
        self.param_nodes.insert(p.id(), self.nodes.len() - 1);
        var
    }

    fn push(&mut self, value: Tensor, saved: Saved, inputs: Vec<Option<usize>>) -> Var {
        self.nodes.push(Node { saved, inputs });
        Var { value, node: Some(NodeId { graph: self.id, index: self.nodes.len() - 1 }) }
    }

    fn index_of(&self, v: &Var) -> Result<Option<usize>> {
        match v.node {
            None => Ok(None),
            Some(n) if n.graph == self.id => Ok(Some(n.index)),
            Some(_) => Err(Error::Autograd("a Var from another graph was used in this one".into())),
        }
    }

    /// Wraps an op's output: records a tape entry if recording and any input needs a gradient.
    /// `saved` runs only when an entry is made; it keeps the activations it needs through
    /// [`keep::Keep::activation`] (16-bit copies in a BF16 or FP16 graph).
    fn record(
        &mut self,
        value: Tensor,
        inputs: &[&Var],
        saved: impl FnOnce(&mut keep::Keep) -> Result<Saved>,
    ) -> Result<Var> {
        let ids = inputs.iter().map(|v| self.index_of(v)).collect::<Result<Vec<_>>>()?;
        if !self.mode.recording || ids.iter().all(Option::is_none) {
            return Ok(Var::constant(value));
        }
        let saved = saved(&mut keep::Keep { kept: &mut self.kept, exec: &self.exec })?;
        Ok(self.push(value, saved, ids))
    }

    /// Gradients of the scalar `loss` with respect to every leaf and parameter it depends on.
    pub fn backward(self, loss: &Var) -> Result<Gradients> {
        if loss.value.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward needs a one-element loss, got shape {} (use backward_with_grad for other outputs)",
                loss.shape()
            )));
        }
        let seed = ops::elementwise::full(loss.shape().clone(), 1.0, loss.value.dtype(), loss.value.device())?;
        self.backward_with_grad(loss, seed)
    }

    /// Vector-Jacobian product: the gradients of `⟨grad, out⟩`.
    pub fn backward_with_grad(self, out: &Var, grad: Tensor) -> Result<Gradients> {
        self.backward_hooked(out, grad, None)
    }

    /// [`Graph::backward_with_grad`], handing each parameter's gradient to `hook` the moment
    /// it is final instead of keeping it in the [`Gradients`]. A parameter's tape entry comes
    /// before every op that read it, so the walk back reaches it after all of them: from
    /// then on nothing adds to its gradient. Data-parallel training sums those gradients
    /// across devices there, while the walk goes on with the layers before.
    pub fn backward_hooked(
        mut self,
        out: &Var,
        grad: Tensor,
        mut hook: Option<&mut dyn FnMut(ParamId, Tensor) -> Result<()>>,
    ) -> Result<Gradients> {
        let root = self.index_of(out)?.ok_or_else(|| {
            Error::Autograd("the output does not depend on any parameter or leaf that needs a gradient".into())
        })?;
        if grad.shape() != out.shape() {
            return Err(Error::Autograd(format!(
                "the output gradient has shape {} but the output has shape {}",
                grad.shape(),
                out.shape()
            )));
        }
        // The tape entries hold the 16-bit copies they keep; without the cache's references
        // each is freed with the last entry that keeps it.
        self.kept.clear();
        let mut grads: Vec<Option<Tensor>> = vec![None; root + 1];
        grads[root] = Some(grad);
        self.nodes.truncate(root + 1);
        let mut result = Gradients { graph: self.id, leaves: HashMap::new(), params: HashMap::new(), profile: None };
        let mut profiling = match self.profile.take() {
            Some(recorder) => {
                Some(profile::BackwardProfile::start(*recorder, &self.nodes, self.trace.take().unwrap_or_default()))
            }
            None => None,
        };
        // Popping frees each entry's saved tensors as soon as its gradient is pushed back.
        while let Some(node) = self.nodes.pop() {
            let index = self.nodes.len();
            if let Some(p) = &mut profiling {
                p.reached(index);
            }
            let Some(g) = grads[index].take() else {
                continue;
            };
            match node.saved {
                Saved::Input => {
                    result.leaves.insert(index, g);
                }
                Saved::Param(id) => match hook.as_mut() {
                    Some(hook) => hook(id, g)?,
                    None => {
                        result.params.insert(id, g);
                    }
                },
                saved => {
                    let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
                    let input_grads = saved.backward(&g, &needs, &self.exec)?;
                    for (input, input_grad) in node.inputs.iter().zip(input_grads) {
                        if let (Some(j), Some(ig)) = (*input, input_grad) {
                            match &mut grads[j] {
                                Some(acc) => ops::elementwise::add_assign(acc, &ig)?,
                                slot => *slot = Some(ig),
                            }
                        }
                    }
                }
            }
        }
        if let Some(p) = profiling {
            result.profile = Some(p.finish()?);
        }
        Ok(result)
    }
}

/// The result of a backward pass.
#[derive(Debug)]
pub struct Gradients {
    graph: u64,
    leaves: HashMap<usize, Tensor>,
    params: HashMap<ParamId, Tensor>,
    profile: Option<profile::StepProfile>,
}

impl Gradients {
    /// The step's profile, when the graph was profiled ([`Graph::start_profile`]).
    pub fn take_profile(&mut self) -> Option<profile::StepProfile> {
        self.profile.take()
    }

    /// The gradient of a leaf made by [`Graph::leaf`]; `None` if the output did not depend on it.
    pub fn of(&self, v: &Var) -> Option<&Tensor> {
        v.node.filter(|n| n.graph == self.graph).and_then(|n| self.leaves.get(&n.index))
    }

    pub fn of_param(&self, p: &Param) -> Option<&Tensor> {
        self.params.get(&p.id())
    }

    /// Adds each parameter's gradient to its `grad` field (so several backward passes can
    /// accumulate before one optimizer step).
    pub fn accumulate_into<'a>(mut self, params: impl IntoIterator<Item = &'a mut Param>) -> Result<()> {
        for p in params {
            if let Some(g) = self.params.remove(&p.id()) {
                match &mut p.grad {
                    Some(acc) => ops::elementwise::add_assign(acc, &g)?,
                    slot => *slot = Some(g),
                }
            }
        }
        Ok(())
    }
}
