//! The one error type of the engine.
//!
//! Every fallible operation returns [`Result`]. Messages are written for the person at the
//! terminal: they name the op (or file) and say what was expected and what was found, on one
//! line, so the CLI can print them as they are.

use crate::tensor::{DType, Shape};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input shapes do not fit the op.
    #[error("{op}: expected {expected}, got {actual}")]
    Shape { op: &'static str, expected: String, actual: String },

    /// The op does not run on this element type.
    #[error("{op}: dtype {actual} is not supported here (supported: {supported})")]
    DType { op: &'static str, actual: DType, supported: &'static str },

    /// Inputs of one op disagree on dtype or device.
    #[error("{op}: inputs disagree: {detail}")]
    Mismatch { op: &'static str, detail: String },

    /// A hyper-parameter or argument outside its domain (a negative stride, p > 1, …).
    #[error("{op}: {msg}")]
    Argument { op: &'static str, msg: String },

    /// A device is unknown or unusable.
    #[error("device: {0}")]
    Device(String),

    /// Misuse of the autograd tape (a Var from another graph, backward from a non-scalar, …).
    #[error("autograd: {0}")]
    Autograd(String),

    /// Memory ran out: `bytes` more were needed on `device` for `what`. The training loop
    /// adds where it happened and what to try ([`Error::in_context`]).
    #[error("out of memory on {device}: {needed} more were needed for {what}{context}")]
    OutOfMemory { device: String, bytes: usize, needed: String, what: String, context: String },

    /// A file could not be read or written, or its content is malformed.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

impl Error {
    pub fn shape(op: &'static str, expected: impl Into<String>, actual: impl Into<String>) -> Self {
        Error::Shape { op, expected: expected.into(), actual: actual.into() }
    }

    /// A shape error whose "actual" part is a tensor shape.
    pub fn shape_of(op: &'static str, expected: impl Into<String>, what: &str, s: &Shape) -> Self {
        Error::shape(op, expected, format!("{what} of shape {s}"))
    }

    pub fn argument(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Argument { op, msg: msg.into() }
    }

    pub fn out_of_memory(device: impl std::fmt::Display, bytes: usize, what: impl Into<String>) -> Self {
        Error::OutOfMemory {
            device: device.to_string(),
            bytes,
            needed: crate::device::host_memory::human_bytes(bytes),
            what: what.into(),
            context: String::new(),
        }
    }

    /// Adds to an out-of-memory error where it happened and what to try (`; in
    /// layer3.1.conv2 at batch 64; try ...`); other errors pass unchanged.
    pub fn in_context(self, context: impl FnOnce() -> String) -> Self {
        match self {
            Error::OutOfMemory { device, bytes, needed, what, context: mut c } => {
                c.push_str(&context());
                Error::OutOfMemory { device, bytes, needed, what, context: c }
            }
            other => other,
        }
    }

    pub fn file(path: impl AsRef<std::path::Path>, msg: impl std::fmt::Display) -> Self {
        Error::File { path: path.as_ref().display().to_string(), msg: msg.to_string() }
    }
}

/// `text` made fit for a one-line message: control characters and line breaks escaped
/// (`\n`), cut after `max` characters with `…`. For text quoted from a file or a library.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() || (c.is_whitespace() && c != ' ') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    let mut out = out.trim_end().to_string();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_text_stays_on_one_line() {
        assert_eq!(super::one_line("a\nb\tc", 10), "a\\nb\\tc");
        assert_eq!(super::one_line("abcdef", 3), "abc…");
        assert_eq!(super::one_line("ab  ", 10), "ab");
    }
}
