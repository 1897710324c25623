//! What the training loop reports as it goes ([`Progress`]): the start of the run, each step
//! and each epoch. The command line draws its progress bar and its log from these; the loop
//! knows nothing of either.

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress {
    Start {
        model: String,
        params: usize,
        train_images: usize,
        test_images: usize,
        total_steps: usize,
        steps_per_epoch: usize,
    },
    Step(StepReport),
    Epoch(EpochReport),
}

#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// The loss of this step's batch.
    pub loss: f64,
    /// Training accuracy over the epoch so far.
    pub accuracy: f64,
    pub lr: f64,
    /// Over the epoch so far.
    pub images_per_sec: f64,
}

#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    /// The step count at the end of the epoch.
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the held-out images; `None` when none are held out.
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub images_per_sec: f64,
    /// With `--precision fp16`: the loss scale at the end of the epoch and the steps skipped
    /// so far because their gradients overflowed.
    pub loss_scale: Option<(f64, usize)>,
}
