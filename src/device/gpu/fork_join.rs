//! Work on side streams: [`GpuDevice::on_streams`] forks the side streams off the main one,
//! runs one closure per side stream with that stream current, and joins them back however the
//! closures end (see [`crate::device::streams`] for why code outside it never sees more
//! than one stream).
//!
//! A file of its own because the join is where two other parts meet the streams: the
//! allocator holds back the blocks freed on a side stream until the join, since that stream's
//! kernels may still read them, and the profiler's log of what each side stream ran
//! ([`StreamSpan`]) is kept here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::GpuDevice;
use crate::device::streams::{self, SIDE_STREAMS, StreamGuard, StreamSpan};
use crate::error::{Error, Result};

impl GpuDevice {
    /// Runs `f(0)`, …, `f(count − 1)`, each with its own side stream current (stream i + 1),
    /// so that the work they queue can run side by side on the GPU; returns their results in
    /// order. Before: every side stream waits for what the main stream has queued (the fork);
    /// after: the main stream waits for every side stream (the join), so what the caller
    /// queues next sees all their results. The closures run one after another on the calling
    /// thread: only the device runs them in parallel. Inside a capture the fork and the join
    /// become edges of the graph, whose two branches then replay side by side. The join
    /// happens however the closures end (an error, a panic).
    pub fn on_streams<T>(self: &Arc<Self>, count: usize, mut f: impl FnMut(usize) -> Result<T>) -> Result<Vec<T>> {
        if count == 0 || count > SIDE_STREAMS {
            return Err(Error::Device(format!(
                "{}: work for {count} side streams (1 to {SIDE_STREAMS} allowed)",
                self.device()
            )));
        }
        if streams::forked() {
            return Err(Error::Device(format!("{}: side streams cannot fork again", self.device())));
        }
        let _one_fork_at_a_time = self.forking.lock().unwrap_or_else(|p| p.into_inner());
        static NEXT_REGION: AtomicU64 = AtomicU64::new(1);
        let region = NEXT_REGION.fetch_add(1, Ordering::Relaxed);
        // Spans are timed with events, which a graph being captured cannot hold.
        let logging =
            self.spans.lock().unwrap_or_else(|p| p.into_inner()).is_some() && self.lock().capturing_here().is_none();
        let label = if logging { streams::label() } else { String::new() };
        let mut join = JoinOnDrop { device: self, count, done: false };
        self.backend.fork(count)?;
        let mut results = Vec::with_capacity(count);
        let mut spans = Vec::new();
        for i in 0..count {
            let _on = StreamGuard::enter(self.device(), i + 1);
            let start = if logging { Some(self.record_event()?) } else { None };
            results.push(f(i)?);
            if let Some(start) = start {
                let end = self.record_event()?;
                spans.push(StreamSpan { region, stream: i + 1, label: label.clone(), start, end });
            }
        }
        join.join()?;
        if let Some(log) = self.spans.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            log.extend(spans);
        }
        Ok(results)
    }

    /// The end of [`GpuDevice::on_streams`]: the main stream waits for the side streams, then
    /// the blocks this thread freed on them go back to the cache. If the join itself fails,
    /// the blocks are not reused (nothing orders later work after the side streams' any more).
    fn join_side_streams(&self, count: usize) -> Result<()> {
        let joined = self.backend.join(count);
        let me = std::thread::current().id();
        let mine: Vec<(u64, usize)> = {
            let mut a = self.lock();
            let (mine, others) = a.deferred.drain(..).partition(|(t, _, _)| *t == me);
            a.deferred = others;
            mine.into_iter().map(|(_, ptr, class)| (ptr, class)).collect()
        };
        joined?;
        for (ptr, class) in mine {
            let mut a = self.lock();
            a.stats.cached -= class;
            self.place_free_block(a, ptr, class);
        }
        Ok(())
    }

    /// Runs `f` with the communication stream ([`streams::COMM_STREAM`]) current, after
    /// making it wait for what the main stream has queued so far; unlike
    /// [`GpuDevice::on_streams`], the main stream does not wait for it until
    /// [`GpuDevice::join_comm_stream`], so the main stream's later work (the rest of a backward
    /// pass) runs while the collectives `f` queued (a bucket's all-reduce) are in flight.
    pub fn on_comm_stream<T>(self: &Arc<Self>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if streams::forked() {
            return Err(Error::Device(format!("{}: the communication stream cannot fork again", self.device())));
        }
        // Every side stream waits for the main one: harmless for those that have no work.
        self.backend.fork(streams::COMM_STREAM)?;
        let _on = StreamGuard::enter(self.device(), streams::COMM_STREAM);
        f()
    }

    /// Makes the main stream wait for everything queued on the communication stream (before
    /// the optimizer reads the summed gradients); the blocks freed on it go back to the cache.
    pub fn join_comm_stream(&self) -> Result<()> {
        self.join_side_streams(streams::COMM_STREAM)
    }

    /// Starts keeping a [`StreamSpan`] for each side stream of each later
    /// [`GpuDevice::on_streams`] (the profiler's view of the streams).
    pub fn start_stream_log(&self) {
        *self.spans.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The spans kept since [`GpuDevice::start_stream_log`], which stops keeping them.
    pub fn take_stream_log(&self) -> Vec<StreamSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }
}

/// Joins the side streams of a fork when dropped, if [`JoinOnDrop::join`] has not.
struct JoinOnDrop<'a> {
    device: &'a GpuDevice,
    count: usize,
    done: bool,
}

impl JoinOnDrop<'_> {
    fn join(&mut self) -> Result<()> {
        self.done = true;
        self.device.join_side_streams(self.count)
    }
}

impl Drop for JoinOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Waiting on a side stream that never waited for the fork is harmless.
            let _ = self.device.join_side_streams(self.count);
        }
    }
}
