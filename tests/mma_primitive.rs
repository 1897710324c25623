//! The tensor-core primitive of kernels/mma.cuh (mma.sync, ldmatrix, cp.async, operand
//! rounding), through the emulator: the test kernels of kernels/emu/tests/mma_tests.cu and the
//! real kernel `round_precision_f32` of kernels/precision.cu, against references computed here.
//!
//! - An mma gathered by the documented fragment layouts gives C + A·B of the rounded operands
//!   within FP32 accumulation error, and exactly the sequential FP32 sum the emulator
//!   documents; each of five plausible layout mistakes fails that same check, so the check
//!   can tell a right layout from a wrong one.
//! - A lane that returns before the mma turns exactly the results that depend on its
//!   registers into NaN.
//! - ldmatrix .x4, .x2 and .x2.trans deliver to every lane the elements the layout names.
//! - cp.async copies 16 and 4 bytes and zero-fills (without reading) where it is told to.
//! - The rounding kernel agrees with `Precision::round` to the bit, ties and edges included.

use std::sync::Arc;

use scratchnet::device::GpuDevice;
use scratchnet::device::gpu::{GpuBuffer, KernelCall};
use scratchnet::ops::precision::{Precision, round_tf32};
use scratchnet::{DType, Device};

fn emu() -> Arc<GpuDevice> {
    Device::Emu(0).gpu().expect("emu opens").expect("emu is a GPU-like device")
}

fn upload_f32(gpu: &Arc<GpuDevice>, v: &[f32]) -> GpuBuffer {
    gpu.upload(DType::F32, v.len(), bytemuck::cast_slice(v)).expect("upload")
}

fn download<T: bytemuck::Pod>(gpu: &Arc<GpuDevice>, b: &GpuBuffer) -> Vec<T> {
    let mut bytes = vec![0u8; b.bytes()];
    gpu.download(b, &mut bytes).expect("download");
    bytes.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
}

/// SplitMix64: a fixed stream of random numbers, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An integer in lo..=hi.
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
}

/// The precision's number in the kernels (its index in `Precision::ALL`: 1 TF32, 2 BF16, 3 FP16).
fn code(p: Precision) -> i32 {
    Precision::ALL.iter().position(|&q| q == p).expect("a precision of ALL") as i32
}

/// The shared dimension of the precision's mma shape: m16n8k8 for TF32, m16n8k16 otherwise.
fn k_len(p: Precision) -> usize {
    if p == Precision::Tf32 { 8 } else { 16 }
}

/// An operand as the tensor core sees it.
fn rounded(p: Precision, x: f32) -> f32 {
    match p {
        Precision::Tf32 => round_tf32(x),
        _ => p.round(x),
    }
}

/// A random value with a full 23-bit mantissa (so rounding it matters) and a random sign,
/// whose binary exponent is near 0 most of the time but sometimes large or tiny: up to ±40
/// for TF32 and BF16 (FP32's exponent range), and for FP16 up to 14 (A·B stays below
/// 65504 per operand) and down to −26 (FP16's subnormals, and values that round to zero).
fn operand(rng: &mut Rng, p: Precision) -> f32 {
    let (tiny, large) = if p == Precision::Fp16 { ((-26, -14), (8, 14)) } else { ((-40, -20), (20, 40)) };
    let e = match rng.next() % 8 {
        0 => rng.range(large.0, large.1),
        1 => rng.range(tiny.0, tiny.1),
        _ => rng.range(-3, 3),
    };
    let mantissa = 1.0 + (rng.next() >> 41) as f32 / (1u32 << 23) as f32;
    let sign = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
    sign * mantissa * 2f32.powi(e)
}

/// A (16×K), B (K×8) and C (16×8) of one mma, row-major.
type Abc = (Vec<f32>, Vec<f32>, Vec<f32>);

/// A random problem for the precision's shape.
fn problem(p: Precision, seed: u64) -> Abc {
    let mut rng = Rng(seed);
    let k = k_len(p);
    let a = (0..16 * k).map(|_| operand(&mut rng, p)).collect();
    let b = (0..k * 8).map(|_| operand(&mut rng, p)).collect();
    let c = (0..16 * 8).map(|_| operand(&mut rng, p)).collect();
    (a, b, c)
}

/// What emu_test_mma writes where it writes nothing (the cells of an absent lane).
const UNWRITTEN: f32 = 12345.0;

fn run_mma(gpu: &Arc<GpuDevice>, p: Precision, abc: &Abc, variant: i32, absent_lane: i32) -> Vec<f32> {
    let (a, b, c) = abc;
    let (ab, bb, cb) = (upload_f32(gpu, a), upload_f32(gpu, b), upload_f32(gpu, c));
    let out = upload_f32(gpu, &[UNWRITTEN; 128]);
    gpu.launch(
        KernelCall::new("emu_test_mma")
            .block(32, 1, 1)
            .buf(&out)
            .buf(&ab)
            .buf(&bb)
            .buf(&cb)
            .i32(code(p))
            .i32(variant)
            .i32(absent_lane),
    )
    .expect("emu_test_mma launches");
    download(gpu, &out)
}

/// The cells (row, column, got, reference, bound) where `got` is not C + A·B of the rounded
/// operands within FP32 accumulation error.
///
/// The bound: the exact result is s = c + Σ_k a_k·b_k over K products. Each product of two
/// rounded operands is exact in FP32 (at most 11 + 11 significant bits, within FP32's 24, and
/// no product leaves FP32's exponent range here), so the only rounding is that of the K FP32
/// additions. For any order of K additions of K + 1 terms x_i, |ŝ − s| ≤ γ_K·Σ|x_i| with
/// γ_K = K·u / (1 − K·u) and u = 2^-24 (Higham, Accuracy and Stability of Numerical
/// Algorithms, §4.2). The reference is summed in f64 from the same exact products; its own
/// error, below K·2^-53·Σ|x_i|, is covered by adding 2^-48·Σ|x_i|.
fn out_of_bound(p: Precision, abc: &Abc, got: &[f32]) -> Vec<(usize, usize, f32, f64, f64)> {
    let (a, b, c) = abc;
    let k = k_len(p);
    let u = 2f64.powi(-24);
    let gamma = k as f64 * u / (1.0 - k as f64 * u) + 2f64.powi(-48);
    let mut bad = Vec::new();
    for r in 0..16 {
        for n in 0..8 {
            let c0 = c[r * 8 + n] as f64;
            let (mut sum, mut magnitude) = (c0, c0.abs());
            for kk in 0..k {
                let prod = rounded(p, a[r * k + kk]) as f64 * rounded(p, b[kk * 8 + n]) as f64;
                sum += prod;
                magnitude += prod.abs();
            }
            let g = got[r * 8 + n];
            let bound = gamma * magnitude;
            let within = (g as f64 - sum).abs() <= bound; // false for NaN
            if !within {
                bad.push((r, n, g, sum, bound));
            }
        }
    }
    bad
}

/// C + A·B as the emulator documents it: c, then + a_0·b_0, + a_1·b_1, … one FP32 addition at
/// a time (the products are exact, so an FMA would give the same).
fn sequential_fp32(p: Precision, abc: &Abc) -> Vec<f32> {
    let (a, b, c) = abc;
    let k = k_len(p);
    let mut out = c.clone();
    for r in 0..16 {
        for n in 0..8 {
            for kk in 0..k {
                out[r * 8 + n] += rounded(p, a[r * k + kk]) * rounded(p, b[kk * 8 + n]);
            }
        }
    }
    out
}

const TENSOR_CORE_PRECISIONS: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];

/// The documented layout passes both checks for every precision; every wrong layout fails
/// the error bound (on at least one of the 128 cells), which shows that passing it proves the
/// layout.
#[test]
fn mma_with_the_documented_layout_is_c_plus_a_times_b_and_wrong_layouts_are_not() {
    let gpu = emu();
    for (i, p) in TENSOR_CORE_PRECISIONS.into_iter().enumerate() {
        let abc = problem(p, 0x5eed + i as u64);
        // The operands do lose bits to rounding (otherwise the reference proves less).
        assert!(abc.0.iter().any(|&x| rounded(p, x) != x), "{p}");

        let got = run_mma(&gpu, p, &abc, 0, -1);
        let bad = out_of_bound(p, &abc, &got);
        assert!(bad.is_empty(), "{p}: {} cells out of the FP32 error bound, first {:?}", bad.len(), bad[0]);
        let want = sequential_fp32(p, &abc);
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{p}: C({}, {}) = {g}, sequential FP32 sum {w}", j / 8, j % 8);
        }

        let wrong_variants: &[i32] = if p == Precision::Tf32 { &[1, 2, 3, 4] } else { &[1, 2, 3, 4, 5] };
        for &variant in wrong_variants {
            let got = run_mma(&gpu, p, &abc, variant, -1);
            let bad = out_of_bound(p, &abc, &got);
            assert!(!bad.is_empty(), "{p}: layout variant {variant} is wrong but passes the check");
        }
    }
}

/// A lane that returns before the mma never deposits its registers; the emulator reads them
/// as NaN, so the results that use them are NaN and the rest are unchanged. Lane 31 (g = 7,
/// t = 3) holds A's rows 7 and 15 and B's column 7 (in both shapes): rows 7 and 15 and
/// column 7 of the result become NaN. Its own four cells (rows 7 and 15, columns 6 and 7)
/// are not written at all.
#[test]
fn a_lane_that_skips_the_mma_poisons_exactly_the_results_that_depend_on_it() {
    let gpu = emu();
    for (i, p) in TENSOR_CORE_PRECISIONS.into_iter().enumerate() {
        let abc = problem(p, 0xabc + i as u64);
        let full = run_mma(&gpu, p, &abc, 0, -1);
        let got = run_mma(&gpu, p, &abc, 0, 31);
        for r in 0..16 {
            for n in 0..8 {
                let (g, f) = (got[r * 8 + n], full[r * 8 + n]);
                if r % 8 == 7 && n / 2 == 3 {
                    assert_eq!(g, UNWRITTEN, "{p}: C({r}, {n}) belongs to the absent lane");
                } else if r % 8 == 7 || n == 7 {
                    assert!(g.is_nan(), "{p}: C({r}, {n}) = {g} depends on lane 31 and should be NaN");
                } else {
                    assert_eq!(g.to_bits(), f.to_bits(), "{p}: C({r}, {n}) does not depend on lane 31");
                }
            }
        }
    }
}

/// Element (matrix m, row r, column c) of the shared-memory tiles of emu_test_ldmatrix.
fn tile_value(m: usize, r: usize, c: usize) -> u32 {
    (m * 64 + r * 8 + c) as u32
}

/// Lane l receives row l/4, columns 2(l%4) and 2(l%4)+1 of each matrix (the lower column in
/// the low half); with .trans, column l/4, rows 2(l%4) and 2(l%4)+1. .x2 takes the row
/// addresses of lanes 0..15 only (lanes 16..31 point into matrices 2 and 3 in this kernel).
#[test]
fn ldmatrix_gives_every_lane_the_documented_elements() {
    let gpu = emu();
    let out = gpu.zeros(DType::F32, 32 * 8).expect("alloc");
    gpu.launch(KernelCall::new("emu_test_ldmatrix").block(32, 1, 1).buf(&out)).expect("emu_test_ldmatrix launches");
    let got = download::<u32>(&gpu, &out);
    let pair = |lo: u32, hi: u32| lo | (hi << 16);
    let mut seen = vec![[false; 64]; 4];
    for lane in 0..32 {
        let (q, p) = (lane / 4, 2 * (lane % 4));
        let regs = &got[8 * lane..8 * lane + 8];
        for m in 0..4 {
            assert_eq!(regs[m], pair(tile_value(m, q, p), tile_value(m, q, p + 1)), "x4 lane {lane} matrix {m}");
            for half in [regs[m] & 0xffff, regs[m] >> 16] {
                seen[m][(half % 64) as usize] = true;
            }
        }
        for m in 0..2 {
            assert_eq!(regs[4 + m], pair(tile_value(m, q, p), tile_value(m, q, p + 1)), "x2 lane {lane} matrix {m}");
            assert_eq!(
                regs[6 + m],
                pair(tile_value(m, p, q), tile_value(m, p + 1, q)),
                "x2.trans lane {lane} matrix {m}"
            );
        }
    }
    // The 32 lanes hold each matrix once over: every element of every matrix arrives somewhere.
    assert!(seen.iter().all(|s| s.iter().all(|&x| x)));
}

/// Valid copies carry their 16 or 4 bytes; invalid ones give zeros (and read nothing: their
/// source addresses past the end of the buffers would be reported under AddressSanitizer).
#[test]
fn cp_async_copies_and_zero_fills() {
    let gpu = emu();
    let (n16, n4) = (4 * 45, 50);
    let src16: Vec<f32> = (0..n16).map(|j| 1000.0 + j as f32).collect();
    let src4: Vec<f32> = (0..n4).map(|j| -5000.0 - j as f32).collect();
    let (s16, s4) = (upload_f32(&gpu, &src16), upload_f32(&gpu, &src4));
    let (out16, out4) = (upload_f32(&gpu, &[f32::NAN; 256]), upload_f32(&gpu, &[f32::NAN; 64]));
    gpu.launch(
        KernelCall::new("emu_test_cp_async")
            .block(64, 1, 1)
            .buf(&out16)
            .buf(&out4)
            .buf(&s16)
            .buf(&s4)
            .i32(n16 as i32)
            .i32(n4 as i32),
    )
    .expect("emu_test_cp_async launches");
    let (got16, got4) = (download::<f32>(&gpu, &out16), download::<f32>(&gpu, &out4));
    for i in 0..64 {
        let valid = 4 * i < n16 && i % 7 != 3;
        for j in 0..4 {
            let want = if valid { src16[4 * i + j] } else { 0.0 };
            assert_eq!(got16[4 * i + j].to_bits(), want.to_bits(), "16-byte copy {i}, float {j}");
        }
        let want = if i < n4 && i % 5 != 2 { src4[i] } else { 0.0 };
        assert_eq!(got4[i].to_bits(), want.to_bits(), "4-byte copy {i}");
    }
}

/// Values at the edges of every format's rounding: for each number of dropped mantissa bits
/// (13 for TF32 and FP16's normal range, 16 for BF16), the ties below and above an odd and an
/// even last kept bit, one ulp either side of each tie, for both signs and several exponents;
/// then zeros, infinities, NaN, FP32's subnormals and extremes, FP16's overflow and
/// subnormals, BF16's and TF32's rounding to infinity.
fn edge_values() -> Vec<f32> {
    let mut v = Vec::new();
    for base in [1.0f32, 1.75, 3.0, 1e-3, 1e3, 6e4, 2e-5, 1e30, 1e-30] {
        for dropped in [13u32, 16] {
            let kept = base.to_bits() & !((1u32 << dropped) - 1);
            for odd in [0, 1u32 << dropped] {
                let tie = (kept ^ odd) | (1u32 << (dropped - 1));
                for bits in [tie - 1, tie, tie + 1, kept ^ odd] {
                    v.push(f32::from_bits(bits));
                    v.push(-f32::from_bits(bits));
                }
            }
        }
    }
    v.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, -f32::MAX]);
    v.extend([f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
    for bits in [1u32, 0x0fff, 0x1000, 0x1001, 0x3000, 0x7fff, 0x8000, 0x8001, 0x1_8000, 0x7f_ffff, 0x7f_f000] {
        v.push(f32::from_bits(bits));
        v.push(-f32::from_bits(bits));
    }
    // FP16: the largest finite value, the tie above it (to even: infinity), around them.
    let h = 2f32.powi(-24); // FP16's smallest subnormal
    let fp16_tie = 65520.0f32;
    let (below, above) = (f32::from_bits(fp16_tie.to_bits() - 1), f32::from_bits(fp16_tie.to_bits() + 1));
    v.extend([65504.0, below, fp16_tie, above, 65536.0, 70000.0, -fp16_tie, -70000.0]);
    v.extend([h, h / 2.0, h / 2.0 * 1.0001, 1.5 * h, 2.5 * h, 3.0 * h / 2.0, -h / 2.0, 1e-8, -1e-8]);
    v.extend([2f32.powi(-14), 2f32.powi(-14) - h / 2.0, 2f32.powi(-15) + h / 2.0]);
    // BF16: the largest finite value, the tie above it (odd last bit: up, to infinity), below it.
    v.extend([0x7f7f_0000u32, 0x7f7f_7fff, 0x7f7f_8000, 0xff7f_8000].map(f32::from_bits));
    // TF32: below and at the tie above the largest finite TF32 value (ties away: infinity).
    v.extend([0x7f7f_efff_u32, 0x7f7f_f000, 0x7f7f_e000, 0xff7f_f000].map(f32::from_bits));
    // Random bit patterns of every kind.
    let mut rng = Rng(7);
    v.extend((0..100_000).map(|_| f32::from_bits(rng.next() as u32)));
    v
}

#[test]
fn the_rounding_kernel_agrees_with_precision_round_to_the_bit() {
    let gpu = emu();
    let x = edge_values();
    let n = x.len();
    let xb = upload_f32(&gpu, &x);
    for p in Precision::ALL {
        let y = gpu.zeros(DType::F32, n).expect("alloc");
        gpu.launch(KernelCall::elementwise("round_precision_f32", n).buf(&y).buf(&xb).i64(n as i64).i32(code(p)))
            .expect("round_precision_f32 launches");
        let got = download::<f32>(&gpu, &y);
        let wrong: Vec<(f32, f32, f32)> = x
            .iter()
            .zip(&got)
            .filter(|&(&v, &g)| {
                let want = p.round(v);
                if want.is_nan() { !g.is_nan() } else { g.to_bits() != want.to_bits() }
            })
            .map(|(&v, &g)| (v, g, p.round(v)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{p}: {} of {n} differ (x, kernel, reference), first {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    // The list reaches the cases it is meant to: ties that round differently with ties away
    // from zero (TF32) and ties to even (BF16, FP16), overflow to infinity, subnormals.
    let tie = 1.0 + 2f32.powi(-11);
    assert!(x.contains(&tie) && round_tf32(tie) == 1.0 + 2f32.powi(-10) && Precision::Fp16.round(tie) == 1.0);
    assert!(x.iter().any(|&v| v.is_finite() && Precision::Fp16.round(v).is_infinite()));
    assert!(x.iter().any(|&v| v.is_finite() && Precision::Bf16.round(v).is_infinite()));
    assert!(x.iter().any(|&v| v.is_finite() && round_tf32(v).is_infinite()));
    assert!(x.iter().any(|&v| Precision::Fp16.round(v) != 0.0 && Precision::Fp16.round(v).abs() < 2f32.powi(-14)));
}

/// The 16-bit storage of kept activations: `narrow` on emu (the kernel `narrow_f32`) gives the
/// bits the `half` crate gives on the CPU, and `widen` (`widen_16`) reads them back as the
/// FP32 value `Precision::round` names, for every edge value.
#[test]
fn narrowing_to_16_bits_and_back_agrees_with_the_cpu_and_with_precision_round() {
    use scratchnet::Tensor;
    use scratchnet::ops::precision::{narrow, widen};
    let x = edge_values();
    let n = x.len();
    let on_cpu = Tensor::from_vec([n], x.clone()).unwrap();
    let on_emu = on_cpu.to_device(Device::Emu(0)).unwrap();
    let same_bits = |a: &[u16], b: &[u16], nan: &dyn Fn(u16) -> bool| {
        a.iter().zip(b).filter(|&(&a, &b)| if nan(a) { !nan(b) } else { a != b }).count()
    };
    for p in [Precision::Bf16, Precision::Fp16] {
        let (cpu16, emu16) = (narrow(&on_cpu, p).unwrap(), narrow(&on_emu, p).unwrap());
        assert_eq!((cpu16.dtype(), emu16.dtype()), (p.half_dtype().unwrap(), p.half_dtype().unwrap()));
        assert!(emu16.device() == Device::Emu(0));
        let bits = |t: &Tensor| -> Vec<u16> {
            match p {
                Precision::Bf16 => t.to_vec::<half::bf16>().unwrap().iter().map(|h| h.to_bits()).collect(),
                _ => t.to_vec::<half::f16>().unwrap().iter().map(|h| h.to_bits()).collect(),
            }
        };
        let nan: &dyn Fn(u16) -> bool = match p {
            Precision::Bf16 => &|b| half::bf16::from_bits(b).is_nan(),
            _ => &|b| half::f16::from_bits(b).is_nan(),
        };
        assert_eq!(same_bits(&bits(&cpu16), &bits(&emu16), nan), 0, "{p}: narrow on emu and on the cpu");
        for wide in [widen(&cpu16).unwrap(), widen(&emu16).unwrap()] {
            assert_eq!(wide.dtype(), DType::F32);
            let got = wide.to_vec::<f32>().unwrap();
            let wrong = x
                .iter()
                .zip(&got)
                .filter(|&(&v, &g)| {
                    let want = p.round(v);
                    if want.is_nan() { !g.is_nan() } else { g.to_bits() != want.to_bits() }
                })
                .count();
            assert_eq!(wrong, 0, "{p}: widen(narrow(x)) is Precision::round(x) on {}", wide.device());
        }
    }
    // FP32 and TF32 have no 16-bit type: the tensor itself comes back, shared.
    assert!(narrow(&on_emu, Precision::Tf32).unwrap().shares_storage_with(&on_emu));
    assert!(widen(&on_emu).unwrap().shares_storage_with(&on_emu));
    assert!(widen(&Tensor::from_vec([2], vec![1i64, 2]).unwrap()).is_err());
}
