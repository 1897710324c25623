//! Weights kept packed for the CPU's GEMM between calls, when the graph says they do not
//! change ([`crate::ops::ExecOptions::weights_fixed`]: inference, validation): a
//! convolution's (`conv2d/packed_weights.rs`) and a linear layer's (`linear`).
//!
//! The packed copies are found by the identity of the weight tensor's storage and the way it
//! was packed. The cache holds a weak handle on each storage, so that its identity is not
//! given to another tensor while the entry lives, and so that training, which updates the
//! weights in place, copies them first (a storage with a weak handle on it is shared, see
//! [`Tensor::downgrade`]) and the next eval graph sees a new storage rather than stale
//! panels. Entries whose weights are gone are dropped whenever another is added. The cache
//! costs as much memory as the weights it has packed.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::device::Storage;
use crate::tensor::Tensor;

/// How a weight tensor is kept packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Packing {
    /// A convolution's, for im2col + GEMM: one matrix per group (`W_g`, the left operand).
    ConvGroups(usize),
    /// A convolution's, for the shifted taps of a small map: one matrix per tap (`W_tapᵀ`, the
    /// right operand).
    ConvTaps,
    /// A linear layer's `Wᵀ`, the right operand of `y = x·Wᵀ`.
    LinearTransposed,
}

/// One packed copy of a weight tensor.
struct Entry {
    weight: Weak<Storage>,
    packed: Arc<dyn Any + Send + Sync>,
}

static CACHE: Mutex<Option<HashMap<(usize, Packing), Entry>>> = Mutex::new(None);

/// The copy of `w` packed as `packing` says, made by `pack` unless the cache holds it.
pub(crate) fn kept<V: Send + Sync + 'static>(w: &Tensor, packing: Packing, pack: impl FnOnce() -> V) -> Arc<V> {
    let key = (w.storage_id(), packing);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(entry) = cache.get(&key)
        && let Ok(packed) = Arc::clone(&entry.packed).downcast::<V>()
    {
        return packed;
    }
    let packed = Arc::new(pack());
    cache.retain(|_, e| e.weight.strong_count() > 0);
    cache.insert(key, Entry { weight: w.downgrade(), packed: packed.clone() });
    packed
}
