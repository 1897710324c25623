//! What a profiled training step records, layer by layer (`scratchnet profile`).
//!
//! Layers already tell the graph when they finish ([`super::Graph::record_layer`]). A
//! profiled graph puts a timestamp in the device's queue at each of those points: on a GPU an
//! event, which the device fills in when it reaches it, so the host never waits; on the CPU,
//! whose ops finish before they return, the host clock. The time of layer k is the time from
//! the mark of layer k − 1 to its own. Nodes of the tape between two marks belong to the
//! layer that ends at the second, so the backward pass, which walks the tape in reverse, can
//! put a mark each time it crosses from one layer's nodes into the previous one's.
//!
//! The memory a layer keeps alive for backward is the storage of the tensors its nodes save,
//! counted once (the same activation is often saved by two layers: as one's output mask and
//! the next one's input) and without the parameters, attributed to the first layer that
//! saves it.
//!
//! Work that a layer queues on side streams (AlexNet's towers, [`GpuDevice::on_streams`]) is
//! timed by events on those streams, kept as [`StreamSpanMs`] in the same time base, so a
//! trace shows each stream as its own track and the overlap can be read off.
//!
//! Both halves live here: the graph keeps a `Recorder` while the forward pass runs, and
//! [`super::Graph::backward`] hands it to a `BackwardProfile` for its walk, which turns the
//! marks of both into the [`StepProfile`] that [`super::Gradients::take_profile`] returns.
//!
//! Layers also open and close NVTX ranges named after them, so Nsight Systems and Nsight
//! Compute show the layer structure, when an NVTX library can be loaded (see [`nvtx`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::device::{Device, GpuDevice, GpuEvent};
use crate::error::Result;

use super::{LayerRecord, Node};

/// A point in the device's queue of work.
pub enum Stamp {
    Device(GpuEvent),
    Host(Instant),
}

impl Stamp {
    pub fn now(gpu: Option<&Arc<GpuDevice>>) -> Result<Stamp> {
        Ok(match gpu {
            Some(gpu) => Stamp::Device(gpu.record_event()?),
            None => Stamp::Host(Instant::now()),
        })
    }

    /// Milliseconds from `earlier` to `self` (waiting for the device to reach `self`).
    pub fn ms_since(&self, earlier: &Stamp) -> Result<f64> {
        Ok(match (earlier, self) {
            (Stamp::Device(a), Stamp::Device(b)) => a.elapsed_ms(b)?,
            (Stamp::Host(a), Stamp::Host(b)) => b.duration_since(*a).as_secs_f64() * 1e3,
            _ => 0.0,
        })
    }
}

/// Collects the marks of one profiled graph.
pub(super) struct Recorder {
    pub gpu: Option<Arc<GpuDevice>>,
    pub start: Stamp,
    /// For each recorded layer, in order: the tape length when it finished, and the mark.
    pub forward: Vec<(usize, Stamp)>,
    /// Storage of the parameters the graph has seen (not activations).
    pub params: HashSet<usize>,
    /// The first failure to place a mark; reported when the profile is read.
    pub error: Option<crate::Error>,
}

impl Recorder {
    pub fn new(device: Device) -> Result<Recorder> {
        let gpu = device.gpu()?;
        if let Some(gpu) = &gpu {
            gpu.start_stream_log();
        }
        let start = Stamp::now(gpu.as_ref())?;
        Ok(Recorder { gpu, start, forward: Vec::new(), params: HashSet::new(), error: None })
    }

    pub fn mark(&mut self) -> Option<Stamp> {
        match Stamp::now(self.gpu.as_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }
}

/// What one side stream ran inside one fork and join, in ms from the step's start.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSpanMs {
    /// Spans of one region (one fork and join) can overlap; spans of two cannot.
    pub region: u64,
    pub stream: usize,
    /// The layer and direction that queued it: `conv2`, `conv2 (backward)`.
    pub label: String,
    pub start_ms: f64,
    pub ms: f64,
}

impl Recorder {
    /// The side streams' spans since the recorder started, in the time base of `start`.
    pub fn stream_spans(&self) -> Result<Vec<StreamSpanMs>> {
        let (Some(gpu), Stamp::Device(start)) = (&self.gpu, &self.start) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for span in gpu.take_stream_log() {
            let start_ms = start.elapsed_ms(&span.start)?;
            out.push(StreamSpanMs {
                region: span.region,
                stream: span.stream,
                label: span.label,
                start_ms,
                ms: span.start.elapsed_ms(&span.end)?,
            });
        }
        Ok(out)
    }
}

impl Drop for Recorder {
    /// Stops the device's log of side-stream spans, also when the step failed or its graph
    /// was dropped before backward (after [`Recorder::stream_spans`] there is nothing left).
    fn drop(&mut self) {
        if let Some(gpu) = &self.gpu {
            gpu.take_stream_log();
        }
    }
}

/// The backward half of a profiled step: marks each time the walk back along the tape
/// leaves one layer's nodes for the previous layer's.
pub(super) struct BackwardProfile {
    recorder: Recorder,
    layers: Vec<LayerRecord>,
    kept: Vec<usize>,
    start: Option<Stamp>,
    /// The layer whose nodes are being walked (`layers.len()` for the loss).
    current: Option<usize>,
    marks: Vec<(usize, Stamp)>,
}

impl BackwardProfile {
    /// Counts what each layer's nodes keep for backward and marks the start of the walk.
    pub(super) fn start(mut recorder: Recorder, nodes: &[Node], layers: Vec<LayerRecord>) -> BackwardProfile {
        let mut kept = vec![0usize; layers.len() + 1];
        let mut seen = HashSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let owner = owner_of(&recorder.forward, i);
            for t in node.saved.tensors() {
                let id = t.storage_id();
                if !recorder.params.contains(&id) && seen.insert(id) {
                    kept[owner] += t.storage().len() * t.dtype().size_in_bytes();
                }
            }
        }
        let start = recorder.mark();
        BackwardProfile { recorder, layers, kept, start, current: None, marks: Vec::new() }
    }

    /// Called for each node as the walk reaches it: marks the end of the previous layer's
    /// backward when the node belongs to another layer.
    pub(super) fn reached(&mut self, node: usize) {
        let owner = owner_of(&self.recorder.forward, node);
        if self.current != Some(owner) {
            if let Some(done) = self.current
                && let Some(stamp) = self.recorder.mark()
            {
                self.marks.push((done, stamp));
            }
            self.current = Some(owner);
            let name = self.layers.get(owner).map_or("loss", |l| l.name.as_str());
            crate::device::streams::set_label(&format!("{name} (backward)"));
        }
    }

    /// Marks the end of the last layer's backward and turns the marks into milliseconds.
    pub(super) fn finish(mut self) -> Result<StepProfile> {
        if let Some(done) = self.current
            && let Some(stamp) = self.recorder.mark()
        {
            self.marks.push((done, stamp));
        }
        if let Some(e) = self.recorder.error.take() {
            return Err(e);
        }
        let r = &self.recorder;
        let n = self.layers.len();
        let (mut forward_ms, mut forward_start_ms) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut previous = &r.start;
        for (_, stamp) in &r.forward {
            forward_ms.push(stamp.ms_since(previous)?);
            forward_start_ms.push(previous.ms_since(&r.start)?);
            previous = stamp;
        }
        let backward_start = self.start.as_ref().unwrap_or(previous);
        let loss_forward_ms = backward_start.ms_since(previous)?;
        let (mut backward_ms, mut backward_start_ms) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        let mut previous = backward_start;
        for (owner, stamp) in &self.marks {
            backward_ms[*owner] += stamp.ms_since(previous)?;
            backward_start_ms[*owner] = previous.ms_since(&r.start)?;
            previous = stamp;
        }
        let streams = r.stream_spans()?;
        crate::device::streams::set_label("");
        let (loss_backward_ms, loss_backward_start_ms, loss_kept_bytes) =
            (backward_ms[n], backward_start_ms[n], self.kept[n]);
        backward_ms.truncate(n);
        backward_start_ms.truncate(n);
        self.kept.truncate(n);
        Ok(StepProfile {
            layers: self.layers,
            forward_ms,
            backward_ms,
            kept_bytes: self.kept,
            loss_forward_ms,
            loss_backward_ms,
            loss_kept_bytes,
            forward_start_ms,
            backward_start_ms,
            loss_backward_start_ms,
            streams,
        })
    }
}

/// The layer a tape node belongs to: the first whose mark came after the node was pushed
/// (`marks.len()`, the loss, for nodes after the last layer).
fn owner_of(marks: &[(usize, Stamp)], node: usize) -> usize {
    marks.partition_point(|(len, _)| *len <= node)
}

/// Per fork and join of a step: the label, how long each stream worked and how long the
/// whole took from the first start to the last end. Their difference is the time the
/// streams ran side by side.
pub fn stream_regions(spans: &[StreamSpanMs]) -> Vec<(String, Vec<f64>, f64)> {
    let mut regions: Vec<(u64, String, Vec<f64>, f64, f64)> = Vec::new();
    for s in spans {
        let end = s.start_ms + s.ms;
        match regions.iter_mut().find(|r| r.0 == s.region) {
            Some(r) => {
                r.2.push(s.ms);
                r.3 = r.3.min(s.start_ms);
                r.4 = r.4.max(end);
            }
            None => regions.push((s.region, s.label.clone(), vec![s.ms], s.start_ms, end)),
        }
    }
    regions.into_iter().map(|(_, label, busy, first, last)| (label, busy, last - first)).collect()
}

/// One profiled step's forward and backward, per layer.
#[derive(Debug)]
pub struct StepProfile {
    /// The layers in forward order.
    pub layers: Vec<LayerRecord>,
    /// Milliseconds of each layer's forward pass.
    pub forward_ms: Vec<f64>,
    /// Milliseconds of each layer's backward pass.
    pub backward_ms: Vec<f64>,
    /// Bytes each layer keeps alive for the backward pass.
    pub kept_bytes: Vec<usize>,
    /// The loss (and anything after the last layer): forward, backward, kept bytes.
    pub loss_forward_ms: f64,
    pub loss_backward_ms: f64,
    pub loss_kept_bytes: usize,
    /// Start of each layer's forward and backward, in ms from the step's start (for traces).
    pub forward_start_ms: Vec<f64>,
    pub backward_start_ms: Vec<f64>,
    pub loss_backward_start_ms: f64,
    /// Work the layers queued on side streams (empty when they used none).
    pub streams: Vec<StreamSpanMs>,
}

impl StepProfile {
    pub fn forward_total_ms(&self) -> f64 {
        self.forward_ms.iter().sum::<f64>() + self.loss_forward_ms
    }

    pub fn backward_total_ms(&self) -> f64 {
        self.backward_ms.iter().sum::<f64>() + self.loss_backward_ms
    }
}

/// NVTX ranges through the NVTX library's C entry points, loaded at run time: CUDA 13's
/// `libnvtx3interop.so.1`, or `libnvToolsExt.so.1` of earlier toolkits, or the file named by
/// `$SCRATCHNET_NVTX_LIBRARY`. A profiler that is not attached makes them cost next to nothing;
/// without the library they are not emitted at all.
pub mod nvtx {
    use std::ffi::{CString, c_char, c_int};
    use std::sync::OnceLock;

    struct Library {
        push: unsafe extern "C" fn(*const c_char) -> c_int,
        pop: unsafe extern "C" fn() -> c_int,
        _lib: libloading::Library,
    }

    fn library() -> Option<&'static Library> {
        static LIB: OnceLock<Option<Library>> = OnceLock::new();
        LIB.get_or_init(|| {
            let mut names: Vec<String> = std::env::var("SCRATCHNET_NVTX_LIBRARY").into_iter().collect();
            names.extend(
                ["libnvtx3interop.so.1", "libnvtx3interop.so", "libnvToolsExt.so.1", "libnvToolsExt.so"]
                    .map(String::from),
            );
            names.into_iter().find_map(|name| {
                // SAFETY: loading a library runs its initialisers; the NVTX libraries have none
                // beyond their own setup. The symbols have the C signatures of nvToolsExt.h.
                unsafe {
                    let lib = libloading::Library::new(&name).ok()?;
                    let push = *lib.get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"nvtxRangePushA\0").ok()?;
                    let pop = *lib.get::<unsafe extern "C" fn() -> c_int>(b"nvtxRangePop\0").ok()?;
                    Some(Library { push, pop, _lib: lib })
                }
            })
        })
        .as_ref()
    }

    /// Whether ranges are emitted.
    pub fn available() -> bool {
        library().is_some()
    }

    pub fn push(name: &str) {
        if let (Some(lib), Ok(name)) = (library(), CString::new(name)) {
            // SAFETY: a NUL-terminated string that outlives the call.
            unsafe { (lib.push)(name.as_ptr()) };
        }
    }

    pub fn pop() {
        if let Some(lib) = library() {
            // SAFETY: pops the range pushed by the matching `push`.
            unsafe { (lib.pop)() };
        }
    }
}
