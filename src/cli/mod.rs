//! The parts of the `scratchnet` command line that `main.rs` (the binary's root, which parses
//! the arguments and runs a command) keeps in files of their own: `args`, every command's
//! flags as clap reads them; `train`, the train command and how it shows a run; `bench`, the
//! bench and kernel commands. These are the binary's modules, not the library's: `lib.rs`
//! declares no `cli`.

pub mod args;
pub mod bench;
pub mod train;
