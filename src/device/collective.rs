//! Collectives: the sums that several devices make together, for data-parallel training
//! (the gradients of every replica) and synchronised batch norm (the batch statistics).
//!
//! A [`Collective`] has `world_size` ranks, one per device; each rank calls it from the
//! thread that drives its device, with tensors of the same shapes in the same order, and
//! gets back the element-wise sum over the ranks. Two implementations:
//!
//! - NCCL ([`super::nccl`]) on CUDA GPUs: what PyTorch's DDP and every other framework use,
//!   loaded at run time like the driver;
//! - [`HostSum`], for emulated devices only: every rank hands its tensors to the host, the
//!   last to arrive adds them up in rank order, and every rank takes the same sum back. It
//!   stands in for NCCL in the tests, which prove on two emulated devices what NCCL would
//!   do on two GPUs. Adding in rank order makes every rank's result the same bits, as NCCL's
//!   all-reduce does.
//!
//! A rank that fails between two collectives would leave the others waiting for it forever,
//! so it calls [`Collective::abort`]: every wait in progress or to come returns an error.

use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Sums across devices (see the module's comment).
pub trait Collective: Send + Sync {
    /// How many ranks take part.
    fn world_size(&self) -> usize;

    /// What carries the sums, for messages and `scratchnet devices` ("NCCL 2.27.3").
    fn describe(&self) -> String;

    /// Replaces each of `tensors` with its element-wise sum over the ranks (a float dtype).
    /// One call is one bucket: NCCL sums them in one fused group. Every rank must call it
    /// with tensors of the same shapes, in the same order.
    fn all_reduce_sum(&self, rank: usize, tensors: &mut [Tensor]) -> Result<()>;

    /// Ends every wait of every rank with an error that gives `why`: a rank that failed calls
    /// it so that the others stop waiting for it.
    fn abort(&self, why: &str);
}

/// The host-side sum that stands in for NCCL on emulated devices.
pub struct HostSum {
    world: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

#[derive(Default)]
struct Round {
    /// Each rank's tensors of the round being filled, as f64 (exact for f32 parts).
    parts: Vec<Option<Vec<Vec<f64>>>>,
    /// The sums, once every rank has arrived; ranks take them until all have.
    sums: Option<std::sync::Arc<Vec<Vec<f64>>>>,
    taken: usize,
    aborted: Option<String>,
}

impl HostSum {
    pub fn new(world: usize) -> HostSum {
        HostSum {
            world,
            round: Mutex::new(Round { parts: vec![None; world], ..Round::default() }),
            changed: Condvar::new(),
        }
    }

    fn wait<'a>(&self, guard: std::sync::MutexGuard<'a, Round>) -> Result<std::sync::MutexGuard<'a, Round>> {
        let guard = self.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        match &guard.aborted {
            Some(why) => Err(Error::Device(format!("the all-reduce was abandoned: {why}"))),
            None => Ok(guard),
        }
    }
}

impl Collective for HostSum {
    fn world_size(&self) -> usize {
        self.world
    }

    fn describe(&self) -> String {
        "a host-side sum (emulated devices)".into()
    }

    fn all_reduce_sum(&self, rank: usize, tensors: &mut [Tensor]) -> Result<()> {
        if rank >= self.world {
            return Err(Error::Device(format!("all-reduce: rank {rank} of a world of {}", self.world)));
        }
        if let Some(t) = tensors.iter().find(|t| !t.dtype().is_float()) {
            return Err(Error::Device(format!("all-reduce: a {} tensor; sums are of floats", t.dtype())));
        }
        let mine = tensors.iter().map(Tensor::to_f64_vec).collect::<Result<Vec<_>>>()?;
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        // The ranks of the last round may still be taking its sums.
        while round.sums.is_some() && round.aborted.is_none() {
            round = self.wait(round)?;
        }
        if let Some(why) = &round.aborted {
            return Err(Error::Device(format!("the all-reduce was abandoned: {why}")));
        }
        if round.parts[rank].is_some() {
            return Err(Error::Device(format!("all-reduce: rank {rank} arrived twice in one round")));
        }
        round.parts[rank] = Some(mine);
        if round.parts.iter().all(Option::is_some) {
            let parts: Vec<Vec<Vec<f64>>> = round.parts.iter_mut().filter_map(Option::take).collect();
            let shapes_agree = parts
                .iter()
                .all(|p| p.len() == parts[0].len() && p.iter().zip(&parts[0]).all(|(a, b)| a.len() == b.len()));
            if !shapes_agree {
                let why = "the ranks passed tensors of different sizes".to_string();
                round.aborted = Some(why.clone());
                self.changed.notify_all();
                return Err(Error::Device(format!("all-reduce: {why}")));
            }
            // In rank order, so that every rank gets the same bits.
            let mut sums = parts[0].clone();
            for part in &parts[1..] {
                for (sum, values) in sums.iter_mut().zip(part) {
                    for (s, v) in sum.iter_mut().zip(values) {
                        *s += v;
                    }
                }
            }
            round.sums = Some(std::sync::Arc::new(sums));
            self.changed.notify_all();
        }
        while round.sums.is_none() {
            round = self.wait(round)?;
        }
        let sums = round.sums.clone().unwrap_or_default();
        round.taken += 1;
        if round.taken == self.world {
            round.sums = None;
            round.taken = 0;
            self.changed.notify_all();
        }
        drop(round);
        for (t, sum) in tensors.iter_mut().zip(sums.iter()) {
            let summed = Tensor::from_vec(t.shape().clone(), sum.clone())?;
            let summed = if t.dtype() == DType::F64 { summed } else { summed.to_dtype(t.dtype())? };
            *t = summed.to_device(t.device())?;
        }
        Ok(())
    }

    fn abort(&self, why: &str) {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        round.aborted.get_or_insert_with(|| why.to_string());
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_rank_gets_the_sum_of_every_round() {
        let sum = Arc::new(HostSum::new(3));
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    let sum = Arc::clone(&sum);
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for round in 0..4 {
                            let v = (rank * 10 + round) as f32;
                            let mut ts = vec![
                                Tensor::from_vec([2], vec![v, 0.5]).unwrap(),
                                Tensor::from_vec([1], vec![1.0f32]).unwrap(),
                            ];
                            sum.all_reduce_sum(rank, &mut ts).unwrap();
                            out.push(ts[0].to_vec::<f32>().unwrap());
                            out.push(ts[1].to_vec::<f32>().unwrap());
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            for round in 0..4 {
                // ranks 0, 1, 2 hold round, 10 + round, 20 + round.
                assert_eq!(r[2 * round], vec![(30 + 3 * round) as f32, 1.5]);
                assert_eq!(r[2 * round + 1], vec![3.0]);
            }
        }
    }

    #[test]
    fn an_abort_ends_the_wait_of_the_other_ranks() {
        let sum = Arc::new(HostSum::new(2));
        let waiting = {
            let sum = Arc::clone(&sum);
            std::thread::spawn(move || sum.all_reduce_sum(0, &mut [Tensor::from_vec([1], vec![1.0f32]).unwrap()]))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        sum.abort("rank 1 ran out of memory");
        let e = waiting.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("abandoned: rank 1 ran out of memory"), "{e}");
        let e = sum.all_reduce_sum(1, &mut [Tensor::from_vec([1], vec![1.0f32]).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
    }

    #[test]
    fn different_sizes_are_an_error_for_every_rank() {
        let sum = Arc::new(HostSum::new(2));
        let other = {
            let sum = Arc::clone(&sum);
            std::thread::spawn(move || sum.all_reduce_sum(0, &mut [Tensor::from_vec([1], vec![1.0f32]).unwrap()]))
        };
        let mine = sum.all_reduce_sum(1, &mut [Tensor::from_vec([2], vec![1.0f32, 2.0]).unwrap()]);
        let theirs = other.join().unwrap();
        assert!(mine.is_err() && theirs.is_err(), "{mine:?} {theirs:?}");
    }
}
