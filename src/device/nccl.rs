//! NCCL, the collective library of NVIDIA GPUs, as a [`Collective`]: loaded at run time
//! through cudarc (like the driver), so a build needs no NCCL and a machine without it gets
//! an error that names the library, never a panic.
//!
//! Two ways to make the communicators:
//!
//! - [`Nccl::in_process`]: one process drives every GPU of the run (`--devices
//!   cuda:0,cuda:1`), one thread per GPU; `ncclCommInitAll` makes the communicators at once;
//! - [`Nccl::one_rank`]: one process per GPU, on one machine or several (`--rank R
//!   --world-size W`, as `torchrun` sets `RANK` and `WORLD_SIZE`). Rank 0 draws the
//!   communicators' unique id (`ncclGetUniqueId`) and passes it through a file that every
//!   rank can read (a shared file system across machines) or the launcher passes it in
//!   `SCRATCHNET_NCCL_ID` ([`unique_id`]); each rank then joins with `ncclCommInitRank`.
//!
//! Every all-reduce of a bucket is one NCCL group (`ncclGroupStart`/`ncclGroupEnd`) of
//! in-place sums on the device's current stream, which the data-parallel step makes a side
//! stream so that the sums overlap the rest of the backward pass.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::nccl::{result, sys};

use super::collective::Collective;
use super::{Device, GpuDevice};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The NCCL library found here, as "2.27.3", or why there is none.
pub fn probe() -> std::result::Result<String, String> {
    // SAFETY: only tries to open the library.
    let present = super::cuda::quietly(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err("no NCCL: libnccl.so could not be loaded (install NCCL, or put the directory of its \
                    libnccl.so on LD_LIBRARY_PATH; a libnccl.so.2 alone needs a libnccl.so link to it)"
            .into());
    }
    let version = super::cuda::quietly(result::get_nccl_version)
        .ok_or_else(|| "libnccl.so loaded, but it has no ncclGetVersion: it is not NCCL".to_string())?
        .map_err(|e| format!("ncclGetVersion: {e:?}"))?;
    // Since NCCL 2.9 the code is major·10000 + minor·100 + patch.
    Ok(format!("{}.{}.{}", version / 10000, (version / 100) % 100, version % 100))
}

/// A communicator handle, sendable between the threads that drive the devices.
struct Comm(sys::ncclComm_t);
// SAFETY: a communicator may be used from any thread, one call at a time; each is used only
// by the thread that drives its device.
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Sync for Comm {}

/// NCCL communicators for this process's devices.
pub struct Nccl {
    comms: Vec<Comm>,
    devices: Vec<Arc<GpuDevice>>,
    world: usize,
    version: String,
    /// Set once the communicators are aborted: NCCL frees them then, so they are not
    /// destroyed again.
    aborted: std::sync::atomic::AtomicBool,
}

fn nccl_error(what: &str, e: result::NcclError) -> Error {
    Error::Device(format!("NCCL: {what}: {e:?}"))
}

impl Nccl {
    /// Communicators for several GPUs of this process (`ncclCommInitAll`).
    pub fn in_process(devices: &[Arc<GpuDevice>]) -> Result<Nccl> {
        let version = probe().map_err(Error::Device)?;
        let ordinals = devices
            .iter()
            .map(|d| match d.device() {
                Device::Cuda(n) => Ok(n as i32),
                other => Err(Error::Device(format!("NCCL runs on CUDA GPUs, not on {other}"))),
            })
            .collect::<Result<Vec<i32>>>()?;
        let mut comms = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: room for one communicator per device; the ordinals are GPUs of this machine.
        super::cuda::quietly(|| unsafe {
            result::comm_init_all(comms.as_mut_ptr(), ordinals.len() as i32, ordinals.as_ptr())
        })
        .ok_or_else(|| Error::Device("NCCL: ncclCommInitAll is missing from libnccl.so".into()))?
        .map_err(|e| nccl_error("ncclCommInitAll", e))?;
        Ok(Nccl {
            comms: comms.into_iter().map(Comm).collect(),
            devices: devices.to_vec(),
            world: devices.len(),
            version,
            aborted: Default::default(),
        })
    }

    /// This process's one rank of `world`, joining the others with the unique id rank 0 drew.
    pub fn one_rank(device: Arc<GpuDevice>, rank: usize, world: usize, id: sys::ncclUniqueId) -> Result<Nccl> {
        let version = probe().map_err(Error::Device)?;
        let mut comm = std::ptr::null_mut();
        device.synchronize()?; // makes the device's context current on this thread
        // SAFETY: one communicator; NCCL blocks until all `world` ranks have joined.
        super::cuda::quietly(|| unsafe { result::comm_init_rank(&mut comm, world as i32, id, rank as i32) })
            .ok_or_else(|| Error::Device("NCCL: ncclCommInitRank is missing from libnccl.so".into()))?
            .map_err(|e| nccl_error(&format!("ncclCommInitRank (rank {rank} of {world})"), e))?;
        Ok(Nccl { comms: vec![Comm(comm)], devices: vec![device], world, version, aborted: Default::default() })
    }
}

impl Collective for Nccl {
    fn world_size(&self) -> usize {
        self.world
    }

    fn describe(&self) -> String {
        format!("NCCL {}", self.version)
    }

    fn all_reduce_sum(&self, local: usize, tensors: &mut [Tensor]) -> Result<()> {
        let (Some(comm), Some(device)) = (self.comms.get(local), self.devices.get(local)) else {
            return Err(Error::Device(format!("NCCL: no device {local} in this process")));
        };
        let stream = device.raw_stream() as sys::cudaStream_t;
        result::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        let mut queued = Ok(());
        for t in tensors.iter_mut() {
            let dtype = match t.dtype() {
                DType::F32 => sys::ncclDataType_t::ncclFloat32,
                DType::F64 => sys::ncclDataType_t::ncclFloat64,
                other => {
                    queued = Err(Error::Device(format!("NCCL all-reduce of a {other} tensor (f32 or f64 only)")));
                    break;
                }
            };
            let n = t.numel();
            let ptr = t.gpu_buffer_mut()?.ptr() as *mut std::ffi::c_void;
            // SAFETY: an in-place sum over `n` elements of this device's buffer, on its stream.
            if let Err(e) = unsafe { result::all_reduce(ptr, ptr, n, dtype, sys::ncclRedOp_t::ncclSum, comm.0, stream) }
            {
                queued = Err(nccl_error("ncclAllReduce", e));
                break;
            }
        }
        // The group is closed whatever happened, so NCCL is not left inside one.
        let ended = result::group_end().map_err(|e| nccl_error("ncclGroupEnd", e));
        queued.and(ended.map(|_| ()))
    }

    fn abort(&self, _why: &str) {
        if self.aborted.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for comm in &self.comms {
            // SAFETY: our communicator; aborting makes the other ranks' calls fail, not hang.
            let _ = unsafe { result::comm_abort(comm.0) };
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if *self.aborted.get_mut() {
            return;
        }
        for comm in &self.comms {
            // SAFETY: our communicator, destroyed once.
            let _ = unsafe { result::comm_destroy(comm.0) };
        }
    }
}

/// How long a rank waits for rank 0's unique id before it gives up (exit 2).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// The communicators' unique id for rank `rank`: from `SCRATCHNET_NCCL_ID` (256 hex
/// digits) when the launcher sets it; else rank 0 draws one and writes it to `file`
/// (whole, through a rename) and the other ranks wait for that file, at most `timeout`.
pub fn unique_id(rank: usize, file: Option<&Path>, timeout: Duration) -> Result<sys::ncclUniqueId> {
    if let Ok(hex) = std::env::var("SCRATCHNET_NCCL_ID") {
        return decode_id(hex.trim()).map_err(|why| Error::Device(format!("SCRATCHNET_NCCL_ID: {why}")));
    }
    let file = file.ok_or_else(|| {
        Error::Device(
            "a run of several processes needs the NCCL id's file (--nccl-id FILE, on a file system every rank \
             reads) or SCRATCHNET_NCCL_ID"
                .into(),
        )
    })?;
    if rank == 0 {
        probe().map_err(Error::Device)?;
        let id = super::cuda::quietly(result::get_uniqueid)
            .ok_or_else(|| Error::Device("NCCL: ncclGetUniqueId is missing from libnccl.so".into()))?
            .map_err(|e| nccl_error("ncclGetUniqueId", e))?;
        crate::output::write_atomically(file, encode_id(&id).as_bytes())?;
        return Ok(id);
    }
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(id) = decode_id(text.trim())
        {
            return Ok(id);
        }
        if started.elapsed() > timeout {
            return Err(Error::Device(format!(
                "rank {rank}: rank 0 wrote no NCCL id to {} within {} s (is rank 0 running, with the same --nccl-id?)",
                file.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn encode_id(id: &sys::ncclUniqueId) -> String {
    id.internal.iter().map(|&b| format!("{:02x}", b as u8)).collect()
}

fn decode_id(hex: &str) -> std::result::Result<sys::ncclUniqueId, String> {
    let mut id = sys::ncclUniqueId { internal: [0; 128] };
    if hex.len() != 2 * id.internal.len() {
        return Err(format!("{} hex digits, expected {}", hex.len(), 2 * id.internal.len()));
    }
    for (i, byte) in id.internal.iter_mut().enumerate() {
        let b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "not hexadecimal".to_string())?;
        *byte = b as std::ffi::c_char;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_survives_its_text_form() {
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (i, b) in id.internal.iter_mut().enumerate() {
            *b = (i * 7 % 256) as u8 as std::ffi::c_char;
        }
        let back = decode_id(&encode_id(&id)).unwrap();
        assert_eq!(back.internal, id.internal);
        assert!(decode_id("abc").unwrap_err().contains("3 hex digits"));
        assert!(decode_id(&"zz".repeat(128)).unwrap_err().contains("hexadecimal"));
    }

    #[test]
    fn a_rank_waiting_for_an_id_that_never_comes_gives_up() {
        let dir = std::env::temp_dir().join(format!("scratchnet-nccl-{}", std::process::id()));
        let e = unique_id(1, Some(&dir.join("id")), Duration::from_millis(50)).unwrap_err().to_string();
        assert!(e.contains("rank 0 wrote no NCCL id"), "{e}");
        let e = unique_id(1, None, Duration::from_millis(50)).unwrap_err().to_string();
        assert!(e.contains("--nccl-id"), "{e}");
    }

    #[test]
    fn without_nccl_the_probe_says_what_is_missing() {
        // Whether NCCL is here depends on the machine; it must never panic.
        match probe() {
            Ok(v) => assert!(v.split('.').count() == 3, "{v}"),
            Err(why) => assert!(why.contains("libnccl.so"), "{why}"),
        }
    }
}
