//! How the ops of one run execute: which convolution kernel, in which precision, whether
//! grouped convolutions run as towers, whether layers use the fused kernels.
//!
//! A run decides once, from its command line (`--conv-algo`, `--precision`, `--towers`,
//! `--no-fuse`), and
//! the choice travels down as a value: the [`crate::autograd::Graph`] carries an
//! [`ExecOptions`], the layers read the fusion choice from the graph, and the convolution ops
//! receive the options as an argument, forward and backward. Nothing inside the ops reads
//! the environment or a process-wide flag, so two graphs in one process can run different
//! kernels side by side (the benchmarks and the tests compare them that way), and a reader
//! can follow a layer to the kernel it launches by following the arguments.

use super::conv2d::ConvAlgo;
use super::precision::Precision;

/// The execution choices a graph carries and the ops receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    /// Which convolution kernels run on cuda and emu (the CPU has one path).
    pub conv_algo: ConvAlgo,
    /// The precision of the convolutions and matrix products (see [`Precision`]): the
    /// tensor-core kernels on a GPU, the same rounding of the operands on the CPU.
    pub precision: Precision,
    /// Whether each group of a grouped convolution runs on its own stream, as AlexNet's
    /// two towers (cuda; see `src/ops/conv2d/gpu.rs`).
    pub towers: bool,
    /// Whether layers use the fused kernels (BN+ReLU, BN+add+ReLU, bias+ReLU) or run each
    /// op on its own, as written in the papers.
    pub fuse: bool,
    /// Whether a BF16 or FP16 graph keeps the activations its backward pass reads in FP32
    /// instead of in its 16-bit type (see `src/autograd/keep.rs`); for comparisons of the
    /// two, off by default.
    pub keep_activations_fp32: bool,
    /// Whether the weights stay as they are while this graph's ops run and until they are
    /// next trained (an eval graph: inference, validation). The CPU's convolutions then keep
    /// them packed for the GEMM between calls (`src/ops/conv2d/packed_weights.rs`); the graph
    /// sets it, not the command line.
    pub weights_fixed: bool,
}

impl Default for ExecOptions {
    /// The engine's defaults: the autotuner picks the convolution kernel, FP32, one launch per
    /// grouped convolution, fused kernels.
    fn default() -> Self {
        ExecOptions {
            conv_algo: ConvAlgo::Auto,
            precision: Precision::Fp32,
            towers: false,
            fuse: true,
            keep_activations_fp32: false,
            weights_fixed: false,
        }
    }
}

impl ExecOptions {
    /// The defaults with the convolution kernel `algo`.
    pub fn with_conv_algo(algo: ConvAlgo) -> Self {
        ExecOptions { conv_algo: algo, ..ExecOptions::default() }
    }

    /// The defaults in precision `precision`.
    pub fn with_precision(precision: Precision) -> Self {
        ExecOptions { precision, ..ExecOptions::default() }
    }
}
