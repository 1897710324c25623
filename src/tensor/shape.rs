//! Tensor shapes. Activations are NCHW, convolution weights OIHW, linear weights out×in:
//! the layouts of PyTorch, so weights move between the two without transposing.

use std::fmt;
use std::ops::Deref;

/// The extent of each dimension, outermost first. A shape of rank 0 (`[]`) holds one
/// element: the scalar a loss returns.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// Number of elements: the product of the dimensions (1 for a scalar). A product too
    /// large for `usize` saturates at `usize::MAX`, so it can never match a real buffer.
    pub fn numel(&self) -> usize {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX)
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The four dimensions of an NCHW (or OIHW) shape, or `None` when the rank is not 4.
    pub fn dims4(&self) -> Option<(usize, usize, usize, usize)> {
        match self.0[..] {
            [a, b, c, d] => Some((a, b, c, d)),
            _ => None,
        }
    }

    /// The two dimensions of a matrix shape, or `None` when the rank is not 2.
    pub fn dims2(&self) -> Option<(usize, usize)> {
        match self.0[..] {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }
}

impl Deref for Shape {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.0
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl fmt::Display for Shape {
    /// `[2, 3, 32, 32]`: the form PyTorch prints, so messages read familiar.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numel_and_display() {
        let s = Shape::from([2, 3, 4, 5]);
        assert_eq!(s.numel(), 120);
        assert_eq!(s.to_string(), "[2, 3, 4, 5]");
        assert_eq!(s.dims4(), Some((2, 3, 4, 5)));
        assert_eq!(s.dims2(), None);
        let scalar = Shape::scalar();
        assert_eq!(scalar.numel(), 1);
        assert_eq!(scalar.to_string(), "[]");
    }
}
