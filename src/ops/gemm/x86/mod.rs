//! The f32 micro-kernels for x86-64, written with vector intrinsics.
//!
//! Both compute a tile `C[MR×NR] = Σ_p A[:, p] · B[p, :]` as `kc` rank-1 updates. Each step
//! loads one row of the packed B panel (NR floats: two vectors), broadcasts each of the MR
//! values of the packed A column in turn, and issues one fused multiply-add per accumulator.
//! The tile sizes fill the register file: the accumulators plus the two B vectors plus one
//! broadcast must fit, and there must be enough independent accumulators to cover the FMA
//! latency (4 cycles × 2 FMA ports = at least 8 in flight).
//!
//! - AVX-512: 8×32 → 16 zmm accumulators + 2 + 1 of 32 registers.
//! - AVX2:    6×16 → 12 ymm accumulators + 2 + 1 of 16 registers.
//!
//! A full tile is added to (or stored into) C straight from the registers; a partial tile at
//! the edge of C goes through a small buffer and is clipped by [`store_tile`].
//!
//! [`kernel_avx512_8x32_indirect`] is the AVX-512 kernel reading B in place, at a
//! per-step offset, for the convolution that skips im2col (`conv2d/indirect.rs`).
//!
//! `gather.rs` holds the engine's other intrinsics: the AVX-512 gather that packs conv2d's
//! transposed im2col panels.

pub(crate) mod gather;

use std::arch::x86_64::*;

use super::cpu::store_tile;

/// # Safety
/// The CPU supports AVX-512F; see [`super::cpu::MicroKernel`] for the rest.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel_avx512_8x32(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    const MR: usize = 8;
    const NR: usize = 32;
    assert!(a.len() >= MR * kc && b.len() >= NR * kc && mr <= MR && nr <= NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kc {
        // SAFETY: the assert above keeps every read inside the panels.
        unsafe {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store_accumulators(&acc, c, ldc, mr, nr, accumulate) }
}

/// Writes (or adds) the `mr×nr` corner of the 8×32 accumulators to C: a full tile straight
/// from the registers, a partial one through a buffer.
///
/// # Safety
/// As for [`super::cpu::MicroKernel`]'s `c`; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn store_accumulators(acc: &[[__m512; 2]; 8], c: *mut f32, ldc: usize, mr: usize, nr: usize, accumulate: bool) {
    const MR: usize = 8;
    const NR: usize = 32;
    if mr == MR && nr == NR {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row i of C holds NR writable values at c + i·ldc.
            unsafe {
                let p = c.add(i * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p.add(16)));
                }
                _mm512_storeu_ps(p, v0);
                _mm512_storeu_ps(p.add(16), v1);
            }
        }
    } else {
        let mut tile = [0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the buffer holds MR·NR values.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), row[1]);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store_tile::<f32, NR>(&tile, c, ldc, mr, nr, accumulate) }
    }
}

/// [`kernel_avx512_8x32`] with B read in place rather than from a packed panel: step `p`'s
/// 32 values are the `32/PARTS` at `parts[q] + offsets[p]` for each part `q` (two halves of
/// 16, or four quarters of 8). A stride-1 convolution's im2col matrix is such a B, read
/// straight from the padded images (`conv2d/indirect.rs`). The multiply-adds are those of
/// the packed kernel, in the same order, so the results are the same bits.
///
/// # Safety
/// The CPU supports AVX-512F; `parts[q].add(offsets[p])` points at `32/PARTS` readable
/// values for every `q < PARTS` and `p < kc`; see [`super::cpu::MicroKernel`] for the rest.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_avx512_8x32_indirect<const PARTS: usize>(
    kc: usize,
    a: &[f32],
    parts: [*const f32; PARTS],
    offsets: &[usize],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    const MR: usize = 8;
    const NR: usize = 32;
    assert!(a.len() >= MR * kc && offsets.len() >= kc && mr <= MR && nr <= NR && (PARTS == 2 || PARTS == 4));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut ap = a.as_ptr();
    for &offset in &offsets[..kc] {
        // SAFETY: the assert keeps the reads of A inside its panel; the caller vouches for B.
        unsafe {
            let (b0, b1) = if PARTS == 2 {
                (_mm512_loadu_ps(parts[0].add(offset)), _mm512_loadu_ps(parts[1].add(offset)))
            } else {
                let quarter = |q: usize| _mm256_loadu_ps(parts[q].add(offset));
                // (insertf64x4 is AVX-512F; the f32 form would need AVX-512DQ.)
                let joined = |lo: __m256, hi: __m256| {
                    let lo = _mm512_castps_pd(_mm512_castps256_ps512(lo));
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
                };
                (joined(quarter(0), quarter(1)), joined(quarter(2), quarter(3)))
            };
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
            ap = ap.add(MR);
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store_accumulators(&acc, c, ldc, mr, nr, accumulate) }
}

/// # Safety
/// The CPU supports AVX2 and FMA; see [`super::cpu::MicroKernel`] for the rest.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel_avx2_6x16(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    const NR: usize = 16;
    assert!(a.len() >= MR * kc && b.len() >= NR * kc && mr <= MR && nr <= NR);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kc {
        // SAFETY: the assert above keeps every read inside the panels.
        unsafe {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_ps(*ap.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    if mr == MR && nr == NR {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row i of C holds NR writable values at c + i·ldc.
            unsafe {
                let p = c.add(i * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                }
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            }
        }
    } else {
        let mut tile = [0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the buffer holds MR·NR values.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), row[1]);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store_tile::<f32, NR>(&tile, c, ldc, mr, nr, accumulate) }
    }
}
