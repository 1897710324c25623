//! The transposing gather of conv2d's `Im2colT` panels (`src/ops/conv2d/im2col.rs`) with AVX-512:
//! where sixteen steps are neighbouring pixels, sixteen loads and a 16×16 transpose in registers;
//! elsewhere the gather instruction, which fetches 16 taps of one pixel. Both beat the scalar loop
//! by far, since every value of a step comes from a different input row. It lives beside the GEMM's
//! micro-kernels so that the engine's intrinsics are in one place.

use std::arch::x86_64::*;

use crate::tensor::{DType, Float};

/// `panel[p·NR + t] = x[pixels[p] + taps[t]]`, zero for `t ≥ taps.len()`, where NR is the
/// panel's width (`panel.len() / pixels.len()`). Returns false, having done nothing, where
/// it does not apply: not f32, a width not a multiple of 16, no AVX-512, or indices that
/// do not fit the instruction's 32-bit offsets.
pub(crate) fn gather_panel<T: Float>(x: &[T], pixels: &[usize], taps: &[usize], panel: &mut [T]) -> bool {
    let nr = panel.len() / pixels.len().max(1);
    let (Some(&last_pixel), Some(&last_tap)) = (pixels.iter().max(), taps.iter().max()) else {
        return false;
    };
    let fits = x.len() <= i32::MAX as usize && last_pixel + last_tap < x.len();
    if T::DTYPE != DType::F32 || !nr.is_multiple_of(16) || !fits || !std::arch::is_x86_feature_detected!("avx512f") {
        return false;
    }
    let mut offsets = vec![0i32; nr];
    for (o, &t) in offsets.iter_mut().zip(taps) {
        *o = t as i32; // fits: t < x.len() ≤ i32::MAX
    }
    // SAFETY: AVX-512F is present; T is f32; every index read, pixels[p] + taps[t], is at
    // most last_pixel + last_tap < x.len(); the stores stay inside panel (p·NR + NR ≤ len).
    unsafe {
        gather_avx512(bytemuck::cast_slice(x), pixels, &offsets, taps.len(), bytemuck::cast_slice_mut(panel));
    }
    true
}

/// # Safety
/// As checked by [`gather_panel`].
#[target_feature(enable = "avx512f")]
unsafe fn gather_avx512(x: &[f32], pixels: &[usize], offsets: &[i32], width: usize, panel: &mut [f32]) {
    let nr = offsets.len();
    let mut p = 0;
    while p < pixels.len() {
        // Sixteen steps whose pixels lie side by side in memory (a run of an output row at
        // unit stride) read, for each tap, sixteen neighbouring values: one load per tap,
        // then a transpose in registers, instead of sixteen gathers.
        if p + 16 <= pixels.len() && (0..16).all(|i| pixels[p + i] == pixels[p] + i) {
            for g in (0..nr).step_by(16) {
                let lanes = width.saturating_sub(g).min(16);
                let mut rows = [_mm512_setzero_ps(); 16];
                for (t, row) in rows.iter_mut().enumerate().take(lanes) {
                    // SAFETY: values pixels[p + i] + taps[g + t], i < 16, are read; all
                    // are in bounds (see gather_panel).
                    *row = unsafe { _mm512_loadu_ps(x.as_ptr().add(pixels[p] + offsets[g + t] as usize)) };
                }
                transpose_16x16(&mut rows);
                for (i, row) in rows.iter().enumerate() {
                    // SAFETY: step p + i < pixels.len() of the panel, lanes g..g + 16 ≤ nr.
                    unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add((p + i) * nr + g), *row) };
                }
            }
            p += 16;
            continue;
        }
        for g in (0..nr).step_by(16) {
            let lanes = width.saturating_sub(g).min(16);
            let mask = ((1u32 << lanes) - 1) as u16;
            // SAFETY: see gather_panel; lanes off in the mask are not read.
            unsafe {
                let idx = _mm512_loadu_si512(offsets.as_ptr().add(g).cast());
                let base = x.as_ptr().add(pixels[p]);
                let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, base.cast());
                _mm512_storeu_ps(panel.as_mut_ptr().add(p * nr + g), v);
            }
        }
        p += 1;
    }
}

/// Transposes the 16×16 matrix whose rows are `r`, in registers: interleave pairs of rows,
/// then pairs of pairs, then swap 128-bit quarters twice (the usual four stages).
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for b in (0..16).step_by(4) {
        r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        r[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        r[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    for b in [0, 8] {
        for j in 0..4 {
            t[b + j] = _mm512_shuffle_f32x4::<0x88>(r[b + j], r[b + 4 + j]);
            t[b + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(r[b + j], r[b + 4 + j]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]);
    }
}
