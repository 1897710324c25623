//! Deterministic random numbers.
//!
//! Everything random in scratchnet (initial weights, data order, augmentation, dropout masks)
//! comes from a seed, so a run can be repeated exactly. The generator is SplitMix64
//! (Steele, Lea & Flood, 2014): a 64-bit counter advanced by a fixed odd constant and passed
//! through a mixing function. Because output `i` depends only on `(seed, i)`, a GPU thread
//! can compute element `i` of a dropout mask on its own and get the very bits the CPU does.

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijection on u64 that spreads every input bit over the output.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Output number `index` of the SplitMix64 stream started at `seed`, computed directly.
#[inline]
pub fn counter_u64(seed: u64, index: u64) -> u64 {
    mix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// A uniform float in `[0, 1)` with 24 random bits: exactly representable in f32, so the
/// CPU and a GPU kernel compare it with a threshold and agree.
#[inline]
pub fn counter_uniform_f32(seed: u64, index: u64) -> f32 {
    (counter_u64(seed, index) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A sequential generator over the same stream.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    index: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, index: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let v = counter_u64(self.seed, self.index);
        self.index += 1;
        v
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift (Lemire): the bias is below 2^-32 for the sizes used here.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// A fresh generator whose stream does not overlap this one in practice.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_splitmix64_values() {
        // Reference outputs of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn counter_form_equals_sequential_form() {
        let mut r = Rng::new(42);
        for i in 0..100 {
            assert_eq!(r.next_u64(), counter_u64(42, i));
        }
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut r = Rng::new(3);
        let mut counts = [0usize; 5];
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            counts[r.below(5)] += 1;
        }
        for c in counts {
            assert!((1800..2200).contains(&c), "{counts:?}");
        }
        let f = counter_uniform_f32(1, 2);
        assert!((0.0..1.0).contains(&f));
    }
}
