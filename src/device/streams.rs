//! Several queues of work on one GPU: the main stream and a few side streams, for work that
//! can run side by side (AlexNet's two towers: the two groups of a grouped convolution).
//!
//! Every thread queues its work on one stream at a time, the *current* one, which is the main
//! stream (0) except inside [`super::GpuDevice::on_streams`]. That call forks (each side
//! stream waits for what the main stream has queued so far), runs one closure per side
//! stream with that stream current, and joins (the main stream waits for every side stream).
//! So code outside it never sees more than one stream, and the side streams' work is always
//! ordered before whatever the main stream queues next, as the allocator relies on: a block
//! freed while a side stream is current could still be read by that stream's kernels, so it
//! is kept out of the cache until the join ([`super::gpu`]).
//!
//! The emulator runs every launch before it returns, so its streams are only labels; the
//! launches per stream are counted on every device, which is what the tests check.
//!
//! One thread at a time may fork a device's streams (the others wait for it), and a thread
//! that works on a CUDA device while another thread is inside a fork of it is not ordered
//! with the towers' work: with towers on, give each CUDA device to one thread, as the command
//! line does.

use std::cell::Cell;

use super::{Device, GpuEvent};

/// Side streams a device offers (streams 1 to `SIDE_STREAMS`; 0 is the main one).
pub const SIDE_STREAMS: usize = 4;

/// The side stream that carries the collectives of data-parallel training (the last one),
/// so that they overlap the backward pass on the main stream.
pub const COMM_STREAM: usize = SIDE_STREAMS;

thread_local! {
    /// The device whose side stream is current on this thread, and which one.
    static CURRENT: Cell<Option<(Device, usize)>> = const { Cell::new(None) };
    static LABEL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The stream of `device` that this thread's work goes to (0: the main stream). Work for
/// any other device than the one being forked goes to that device's main stream.
pub fn current_on(device: Device) -> usize {
    match CURRENT.with(Cell::get) {
        Some((d, stream)) if d == device => stream,
        _ => 0,
    }
}

/// Whether this thread is inside a fork of any device.
pub fn forked() -> bool {
    CURRENT.with(Cell::get).is_some()
}

/// Makes a side stream of `device` current for as long as the guard lives; the main stream
/// again after.
pub(super) struct StreamGuard;

impl StreamGuard {
    pub(super) fn enter(device: Device, stream: usize) -> StreamGuard {
        CURRENT.with(|c| c.set(Some((device, stream))));
        StreamGuard
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// Names the work this thread queues from now on (the layer being run), for the spans of
/// [`super::GpuDevice::on_streams`]. The profiler sets it; it costs nothing otherwise.
pub fn set_label(label: &str) {
    LABEL.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(label);
    });
}

pub(super) fn label() -> String {
    LABEL.with(|l| l.borrow().clone())
}

/// What one side stream ran inside one fork and join, between two events on that stream.
pub struct StreamSpan {
    /// Which fork and join it belongs to (spans of one region can overlap each other).
    pub region: u64,
    pub stream: usize,
    /// What was running when the region started (the layer and direction, when profiling).
    pub label: String,
    pub start: GpuEvent,
    pub end: GpuEvent,
}
