//! scratchnet: a deep-learning engine written from scratch.
//!
//! The layers, from the bottom up (a lower layer never imports a higher one):
//!
//! - [`device`]: where memory lives (host memory in this build);
//! - [`tensor`]: shape + storage + dtype;
//! - [`ops`]: one module per op family, with its shape rules, its plain reference forward
//!   and backward, written to be read;
//! - [`autograd`]: the tape of [`autograd::Var`]s that turns forward calls into gradients;
//! - [`nn`]: layers with parameters (Conv2d, Linear, BatchNorm2d, …) and the optimizer;
//! - [`models`]: the networks, built from layers;
//! - [`data`] and [`train`]: data sets and the training loop that the CLI drives.

pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod input;
pub mod models;
pub mod nn;
pub mod ops;
pub mod output;
pub mod profile_report;
pub mod report;
pub mod rng;
pub mod selftest;
pub mod summary;
pub mod tensor;
pub mod train;

pub use autograd::{Graph, Param, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Shape, Tensor};
