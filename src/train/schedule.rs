//! How the learning rate moves over a run ([`Schedule`], [`learning_rate`]): a linear
//! warm-up (Goyal et al., 2017: it keeps the first steps of a freshly initialised network from
//! diverging at a large rate), then a cosine to zero (Loshchilov & Hutter, 2017), steps of ×γ
//! every few epochs (the schedule of the AlexNet and ResNet papers), or a constant rate. A
//! pure function of the step, kept apart so that it can be read and tested on its own.

use crate::error::{Error, Result};

/// How the learning rate moves after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Half a cosine from the peak towards zero, which it would reach one step after the last.
    Cosine,
    /// Multiplied by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: f64,
        gamma: f64,
    },
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    /// `cosine`, `constant`, or `step:EPOCHS:GAMMA` (e.g. `step:30:0.1`, the ResNet paper's).
    fn from_str(s: &str) -> Result<Schedule> {
        let bad = || {
            Error::argument(
                "--lr-schedule",
                format!("'{s}' is not cosine, constant or step:EPOCHS:GAMMA (e.g. step:30:0.1)"),
            )
        };
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            _ => {
                let mut parts = s.strip_prefix("step:").ok_or_else(bad)?.split(':');
                let every: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let gamma: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if parts.next().is_some() || !(every > 0.0 && every.is_finite()) || !(gamma > 0.0 && gamma.is_finite())
                {
                    return Err(bad());
                }
                Ok(Schedule::Step { every_epochs: every, gamma })
            }
        }
    }
}

/// The learning rate at `step` of `total`: a linear warm-up over `warmup` steps, then
/// `schedule` (whose epochs are `steps_per_epoch` steps long).
pub fn learning_rate(
    peak: f64,
    schedule: Schedule,
    step: usize,
    total: usize,
    warmup: usize,
    steps_per_epoch: usize,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => peak,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let t = (step - warmup) as f64 / span;
            0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step { every_epochs, gamma } => {
            let epoch = step as f64 / steps_per_epoch.max(1) as f64;
            peak * gamma.powi((epoch / every_epochs).floor() as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_follow_their_shape() {
        let cos = |s| learning_rate(0.1, Schedule::Cosine, s, 100, 10, 10);
        assert!((cos(0) - 0.01).abs() < 1e-12);
        assert!((cos(9) - 0.1).abs() < 1e-12);
        assert!((cos(10) - 0.1).abs() < 1e-12);
        assert!((cos(55) - 0.05).abs() < 1e-12);
        assert!(cos(99) < 1e-3);
        let step = Schedule::Step { every_epochs: 3.0, gamma: 0.1 };
        assert!((learning_rate(0.1, step, 29, 100, 0, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, step, 30, 100, 0, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(0.1, step, 65, 100, 0, 10) - 0.001).abs() < 1e-12);
        assert_eq!(learning_rate(0.1, Schedule::Constant, 70, 100, 5, 10), 0.1);
        assert_eq!("step:30:0.1".parse::<Schedule>().unwrap(), Schedule::Step { every_epochs: 30.0, gamma: 0.1 });
        assert!("step:30".parse::<Schedule>().is_err());
        assert!("linear".parse::<Schedule>().is_err());
    }
}
