//! The suites a bench run is made of ([`Suite`]) and the problems of each: the networks'
//! layers at the bench's batch size (traced in `layers`), with a whole training step of each;
//! the memory suite's large activations; the GEMM suite's large square product and AlexNet's
//! classifier; the inference suite's whole networks in eval mode.

use super::layers::{dedupe, layer_problems, trace};
use super::{BenchOptions, Inference, Pass, Problem, TrainStep};
use crate::error::{Error, Result};
use crate::ops::pool::Pool2dParams;
use crate::tensor::Shape;

/// A group of problems, named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    AlexNet,
    ResNet18,
    ResNet50,
    DenseNet121,
    /// The memory-bound ops on large tensors.
    Memory,
    /// Large square SGEMM and the fully connected layers' products.
    Gemm,
    /// Whole networks' eval-mode forward passes, at the shapes of `INFERENCE`.
    Inference,
}

/// The inference suite: model, images per batch, and one image's size. Small images, so that
/// the CPU, where `scripts/cpu_baseline.py` times the same in ONNX Runtime, runs each in a
/// fraction of a second; `--batch` replaces the batch sizes (the emulator's default is 1).
pub const INFERENCE: [(&str, usize, [usize; 3]); 5] = [
    ("resnet18", 8, [3, 64, 64]),
    ("resnet50", 8, [3, 64, 64]),
    ("densenet121", 8, [3, 64, 64]),
    ("alexnet", 8, [3, 227, 227]),
    ("resnet20", 32, [3, 32, 32]),
];

impl Suite {
    pub const ALL: [Suite; 7] = [
        Suite::AlexNet,
        Suite::ResNet18,
        Suite::ResNet50,
        Suite::DenseNet121,
        Suite::Memory,
        Suite::Gemm,
        Suite::Inference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AlexNet => "alexnet",
            Suite::ResNet18 => "resnet18",
            Suite::ResNet50 => "resnet50",
            Suite::DenseNet121 => "densenet121",
            Suite::Memory => "memory",
            Suite::Gemm => "gemm",
            Suite::Inference => "inference",
        }
    }

    /// Parses a comma-separated list (`all` for every suite).
    pub fn parse_list(text: &str) -> Result<Vec<Suite>> {
        if text == "all" {
            return Ok(Suite::ALL.to_vec());
        }
        let mut suites = Vec::new();
        for name in text.split(',').map(str::trim) {
            let suite = Suite::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
                Error::argument("bench", format!("unknown suite '{name}' (expected all or {})", names.join(", ")))
            })?;
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        Ok(suites)
    }
}

/// The memory suite's problems on tensors of about `bytes` bytes: activations shaped like a
/// ResNet stage, `[N, 64, 28, 28]`.
fn memory_problems(bytes: usize) -> Vec<Problem> {
    let per_image = 64 * 28 * 28;
    let n = (bytes / 4 / per_image).max(1);
    let x = Shape::new([n, 64, 28, 28]);
    let numel = x.numel();
    let both = |make: &dyn Fn(Pass) -> Problem| [make(Pass::Forward), make(Pass::Backward)];
    let mut p = vec![Problem::Copy { numel }];
    p.extend(both(&|pass| Problem::Relu { numel, pass }));
    p.push(Problem::Add { numel });
    p.push(Problem::AddAssign { numel });
    for (residual, relu) in [(false, false), (false, true), (true, true)] {
        p.extend(both(&|pass| Problem::BatchNorm { x: x.clone(), residual, relu, pass }));
    }
    p.extend(both(&|pass| Problem::MaxPool { x: x.clone(), p: Pool2dParams::new(3, 2).padding(1), pass }));
    p.extend(both(&|pass| Problem::AvgPool { x: x.clone(), p: Pool2dParams::new(2, 2), pass }));
    p.extend(both(&|pass| Problem::GlobalAvgPool { x: x.clone(), pass }));
    p.extend(both(&|pass| Problem::Concat { n, h: 28, w: 28, channels: vec![32, 32], pass }));
    p.extend(both(&|pass| Problem::Lrn { x: x.clone(), p: crate::ops::lrn::LrnParams::alexnet(), pass }));
    p.extend(both(&|pass| Problem::Dropout { x: x.clone(), p: 0.5, pass }));
    p.push(Problem::Sgd { numel });
    p
}

/// Every problem of one suite, with its layer counts.
pub fn suite_problems(suite: Suite, opts: &BenchOptions) -> Result<Vec<(Problem, usize)>> {
    let batch = opts.batch();
    let network = |model: &str| -> Result<Vec<(Problem, usize)>> {
        let (layers, input, num_classes) = trace(model)?;
        let mut problems = dedupe(layer_problems(&layers, batch));
        if opts.train_steps {
            let step =
                |memory_efficient| TrainStep { model: model.into(), batch, input, num_classes, memory_efficient };
            problems.push((Problem::TrainStep(step(false)), 1));
            if model.starts_with("densenet") {
                problems.push((Problem::TrainStep(step(true)), 1));
            }
        }
        Ok(problems)
    };
    let problems = match suite {
        Suite::AlexNet => network("alexnet")?,
        Suite::ResNet18 => network("resnet18")?,
        Suite::ResNet50 => network("resnet50")?,
        Suite::DenseNet121 => network("densenet121")?,
        Suite::Memory => memory_problems(opts.size_bytes()).into_iter().map(|p| (p, 1)).collect(),
        Suite::Gemm => {
            let s = opts.gemm_size();
            let mut p = vec![(Problem::Matmul { m: s, n: s, k: s }, 1)];
            // AlexNet's classifier: 9216 → 4096 → 4096 → 1000.
            for (inputs, outputs) in [(9216, 4096), (4096, 4096), (4096, 1000)] {
                for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
                    let relu = outputs == 4096;
                    p.push((Problem::Linear { n: batch, inputs, outputs, bias: true, relu, pass }, 1));
                }
            }
            p
        }
        Suite::Inference => INFERENCE
            .iter()
            .map(|&(model, batch, input)| {
                let batch = opts.batch.unwrap_or(opts.by_device(batch, batch, 1));
                (Problem::Inference(Inference::new(model, batch, input)), 1)
            })
            .collect(),
    };
    let kept = match &opts.filter {
        Some(f) => problems.into_iter().filter(|(p, _)| p.label().contains(f.as_str())).collect(),
        None => problems,
    };
    // Whole networks are counted once kept: counting builds the model.
    kept.into_iter()
        .map(|(p, n)| match p {
            Problem::Inference(i) => Ok((Problem::Inference(i.counted()?), n)),
            p => Ok((p, n)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_parse_and_bad_names_are_refused() {
        assert_eq!(Suite::parse_list("memory,gemm,memory").unwrap(), vec![Suite::Memory, Suite::Gemm]);
        assert_eq!(Suite::parse_list("all").unwrap().len(), 7);
        let e = Suite::parse_list("resnet51").unwrap_err().to_string();
        assert!(e.contains("unknown suite 'resnet51'"), "{e}");
    }
}
