//! Parameters: the trainable tensors of a model.
//!
//! A parameter lives outside any tape. Each training step a fresh [`Graph`](super::Graph)
//! reads it through [`Graph::param`](super::Graph::param); after the backward pass its
//! gradient is handed back through [`Gradients`](super::Gradients), and the optimizer
//! updates `value` in place.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tensor::Tensor;

/// Identifies a parameter across graphs (names may repeat between models; ids never do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(u64);

impl ParamId {
    fn fresh() -> ParamId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ParamId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug)]
pub struct Param {
    name: String,
    pub value: Tensor,
    /// The gradient of the last backward pass(es), summed; `None` before the first.
    pub grad: Option<Tensor>,
    id: ParamId,
}

impl Param {
    /// A parameter with a full dotted name, as in a PyTorch `state_dict` (`layer1.0.conv1.weight`).
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param { name: name.into(), value, grad: None, id: ParamId::fresh() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> ParamId {
        self.id
    }

    pub fn numel(&self) -> usize {
        self.value.numel()
    }
}
