//! Running out of host memory as an error, not an abort.
//!
//! Rust's collections abort the process when the allocator says no ("memory allocation of
//! N bytes failed", SIGABRT). A training run that asks for more memory than the machine has
//! (a batch too large, an image size too large) must instead say how much it needed, for
//! what, and what to try, and exit like any other bad input. Two parts do that:
//!
//! - **Tensor storage is allocated fallibly.** [`filled`], [`collect_exact`] and [`reserve`]
//!   reserve with `try_reserve_exact` and turn a refusal into [`Error::OutOfMemory`], which
//!   travels up like any error; the training loop adds the layer and the batch size, and the
//!   command line prints it and exits with code 2. The activations are what grows with the
//!   batch, so almost every large allocation of a run goes through here.
//! - **Everything else is guarded.** [`GuardedAllocator`], the command line's global
//!   allocator, passes every request to the system allocator. When one fails outside a
//!   fallible reservation (a scratch buffer, a small vector), it writes one `error:` line
//!   with the size and what the process was doing ([`set_activity`]) and exits with code 2,
//!   instead of aborting. Output files are renamed into place only when complete, so nothing
//!   half-written is left; a temporary file is removed by the next write to the same path.
//!
//! A fallible reservation marks its thread while it runs, so that the guard lets its
//! failure through to `try_reserve` instead of exiting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

thread_local! {
    /// Whether this thread is inside a fallible reservation. Const-initialised and without
    /// a destructor, so the allocator may read it without allocating.
    static FALLIBLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with allocation failures on this thread reported to the caller (a null pointer
/// or a `try_reserve` error) rather than ending the process.
pub fn fallible<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the mark back as it was, even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = FALLIBLE.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FALLIBLE.try_with(|c| c.replace(true)).unwrap_or(false));
    f()
}

/// Whether this thread is inside [`fallible`]. `try_with`, because the allocator may run
/// while the thread's locals are being torn down; then nothing is fallible.
fn in_fallible() -> bool {
    FALLIBLE.try_with(Cell::get).unwrap_or(false)
}

/// Bytes, for a person: `22.5 MB`.
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} bytes")
    }
}

/// The host's memory and swap, in bytes (`MemTotal` + `SwapTotal` of `/proc/meminfo`), where
/// the system says; `None` elsewhere.
pub fn total_host_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<usize>().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)).saturating_mul(1024))
}

fn refused<T>(n: usize) -> Error {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    Error::out_of_memory(
        "cpu",
        bytes,
        format!("a tensor of {n} {}", std::any::type_name::<T>().rsplit("::").next().unwrap_or("values")),
    )
}

/// Makes room for `additional` more elements in `v`, or says how much memory was missing.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<()> {
    fallible(|| v.try_reserve_exact(additional)).map_err(|_| refused::<T>(additional))
}

/// `n` copies of `value` in a new vector, or an out-of-memory error.
pub fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n)?;
    v.resize(n, value);
    Ok(v)
}

/// The `n` items of `items` in a new vector allocated once, or an out-of-memory error.
pub fn collect_exact<T>(n: usize, items: impl IntoIterator<Item = T>) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n)?;
    v.extend(items);
    Ok(v)
}

/// What the process is doing, named in the guard's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    Starting,
    LoadingData,
    BuildingModel,
    TrainingStep,
    Evaluating,
    Inference,
    Profiling,
    Benchmarking,
    Saving,
}

impl Activity {
    const ALL: [Activity; 9] = [
        Activity::Starting,
        Activity::LoadingData,
        Activity::BuildingModel,
        Activity::TrainingStep,
        Activity::Evaluating,
        Activity::Inference,
        Activity::Profiling,
        Activity::Benchmarking,
        Activity::Saving,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::LoadingData => "loading the data",
            Activity::BuildingModel => "building the model",
            Activity::TrainingStep => "a training step",
            Activity::Evaluating => "evaluating the held-out images",
            Activity::Inference => "running the model",
            Activity::Profiling => "profiling",
            Activity::Benchmarking => "benchmarking",
            Activity::Saving => "saving",
        }
    }
}

/// Kept as a number, which the allocator can read without allocating or locking.
static ACTIVITY: AtomicU8 = AtomicU8::new(Activity::Starting as u8);

/// Says what the process is doing, for the message printed if memory runs out where no
/// error can be returned.
pub fn set_activity(what: Activity) {
    ACTIVITY.store(what as u8, Ordering::Relaxed);
}

fn activity() -> &'static str {
    let i = ACTIVITY.load(Ordering::Relaxed) as usize;
    Activity::ALL.get(i).map_or("", |a| a.as_str())
}

/// A fixed buffer that formats without allocating (the allocator just failed).
struct StackText {
    buf: [u8; 512],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes the one-line message to stderr and ends the process with code 2, touching no lock
/// and allocating nothing.
fn exit_out_of_memory(bytes: usize) -> ! {
    use std::fmt::Write as _;
    let mut text = StackText { buf: [0; 512], len: 0 };
    let mb = bytes as f64 / 1e6;
    let _ = write!(text, "error: out of memory: {mb:.1} MB of host memory could not be allocated");
    let _ = write!(text, " while {}", activity());
    let _ = writeln!(text, "; try a smaller --batch-size, image size or model");
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn write(fd: i32, buf: *const u8, count: usize) -> isize;
            fn _exit(status: i32) -> !;
        }
        // SAFETY: writes bytes of a live stack buffer to stderr, then ends the process
        // without running anything else (no destructors, no atexit handlers, no locks).
        unsafe {
            let _ = write(2, text.buf.as_ptr(), text.len);
            _exit(2)
        }
    }
    #[cfg(not(unix))]
    {
        std::process::abort()
    }
}

/// The command line's global allocator: the system's, with the guard described above.
pub struct GuardedAllocator;

// SAFETY: every method forwards to `System` unchanged; only the handling of a null result
// differs, and it either returns that null or ends the process.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() && !in_fallible() {
            exit_out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() && !in_fallible() {
            exit_out_of_memory(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() && !in_fallible() {
            exit_out_of_memory(new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_reservations_are_errors_that_say_how_much() {
        // More than any machine has, but not more than a Vec may hold (isize::MAX bytes).
        let n = (isize::MAX as usize / 8) - 1;
        let e = filled(n, 0.0f64).unwrap_err().to_string();
        assert!(e.starts_with("out of memory on cpu: "), "{e}");
        assert!(e.contains("GB") && e.contains("a tensor of"), "{e}");
        let e = collect_exact(usize::MAX / 2, std::iter::empty::<u8>()).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
        assert_eq!(filled(3, 1.5f32).unwrap(), vec![1.5; 3]);
        assert_eq!(collect_exact(3, [1, 2, 3]).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(22_478_848), "22.5 MB");
        assert_eq!(human_bytes(3_200_000_000), "3.2 GB");
    }

    #[test]
    fn the_fallible_mark_is_restored() {
        assert!(!in_fallible());
        fallible(|| {
            assert!(in_fallible());
            fallible(|| ());
            assert!(in_fallible());
        });
        assert!(!in_fallible());
        let _ = std::panic::catch_unwind(|| fallible(|| panic!("inside")));
        assert!(!in_fallible(), "a panic inside leaves the mark as it was");
    }
}
