//! General matrix multiply on the CPU: `C = A·B` or `C += A·B`.
//!
//! Convolution (through im2col) and the fully connected layers spend nearly all their time
//! here, so this is the one CPU routine written for speed. It follows the blocking of Goto &
//! van de Geijn ("Anatomy of high-performance matrix multiplication", 2008), also used by
//! BLIS:
//!
//! ```text
//! for jc in steps of NC over the columns of C        (a block of B that fits in L3/L2)
//!   for pc in steps of KC over the shared dimension   (one rank-KC update)
//!     pack B[pc.., jc..] into column panels NR wide   (contiguous, in the order it is read)
//!     for ic in steps of MC over the rows of C        (a block of A that fits in L2)
//!       pack A[ic.., pc..] into row panels MR tall    (or find them packed already)
//!       for each NR panel, for each MR panel:
//!         micro-kernel: an MR×NR tile of C in registers, KC rank-1 updates
//! ```
//!
//! The left operand comes through [`PackA`] (`packed_a.rs`): a plain matrix is packed block by
//! block, a [`super::PackedMatrix`] (a convolution's weights during inference) was packed once
//! and is read where it lies. The right operand likewise comes through [`PackB`]: packed per
//! block (a matrix, or a convolution's im2col gathered from the image), or a
//! [`super::PackedBMatrix`] (a linear layer's `Wᵀ` during inference) read in place. The `ic` blocks are walked on one thread, or, for a C with few
//! columns and many rows, shared among the threads ([`RowBlocks`]), which then all read one
//! packed block of B.
//!
//! Everything but the micro-kernel is plain, portable Rust. For f32 on x86-64 the
//! micro-kernel is written with vector intrinsics ([`x86`](super::x86)): an 8×32 tile in
//! sixteen AVX-512 registers, or a 6×16 tile in twelve AVX2 registers, chosen at run time from
//! what the CPU reports. (Left to itself, LLVM vectorised the generic kernel across the wrong dimension,
//! with gathers and scatters, at a tenth of the speed.) Both vector kernels sum each element
//! of C in the same order with fused multiply-adds, so results are the same on AVX2 and
//! AVX-512 machines and for any number of threads. Other types (f64, used by the gradient
//! checks) and other CPUs use the generic [`micro_kernel`], which has no FMA and so rounds
//! differently.
//!
//! Matrices are passed as strided views ([`MatRef`]), so a transposed operand costs nothing:
//! `a.t()` swaps the strides and packing reads it in whatever order it lies.

use rayon::prelude::*;

use super::packed_a::PackA;
use super::views::{MatMut, MatRef};
#[cfg(target_arch = "x86_64")]
use super::x86;
use crate::tensor::Float;

// Blocking parameters (elements). During a micro-kernel the A panel (KC·MR·4 B = 8 KiB at
// MR = 8) stays in L1 while the B panel (KC·NR·4 B = 32 KiB at NR = 32) streams from L2,
// whose 2 MiB also hold the MC×KC block of A (96·256·4 B = 96 KiB) and most of the KC×NC
// block of B (256·2048·4 B = 2 MiB).
pub(crate) const KC: usize = 256;
const MC: usize = 96;
const NC: usize = 2048;

/// The right-hand operand B of a product, as [`gemm`] reads it: anything that can write a
/// block of itself in the packed layout. A [`MatRef`] is one. So is a convolution's im2col
/// matrix (`conv2d::Im2col`), which is then gathered from the image straight into the packing
/// buffer and never stored as a whole.
pub trait PackB<T>: Copy + Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The columns `c0..c0 + nc` as an operand of their own (to share C among threads).
    fn cols_range(self, c0: usize, nc: usize) -> Self;
    /// Packs `B[p0..p0+kc, j0..j0+nc]` as column panels of `NR`: panel `q`, step `p`, column
    /// `c` goes to `out[q*NR*kc + p*NR + c]`, zero past `nc` (`out` holds whole panels).
    fn pack<const NR: usize>(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]);
    /// The panels of `B[p0..p0+kc, j0..j0+nc]` (`p0` a multiple of `KC`) in the layout of
    /// [`PackB::pack`]: packed into `scratch`, which holds `nc.div_ceil(NR)·NR·kc` values, or
    /// borrowed where they are kept packed ([`super::PackedBMatrix`]).
    fn panels<'s, const NR: usize>(
        &'s self,
        p0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        self.pack::<NR>(p0, kc, j0, nc, scratch);
        scratch
    }
}

impl<T: Float> PackB<T> for MatRef<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn cols_range(self, c0: usize, nc: usize) -> Self {
        MatRef::cols_range(self, c0, nc)
    }
    fn pack<const NR: usize>(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]) {
        pack_b::<T, NR>(self, p0, kc, j0, nc, out)
    }
}

/// `C = A·B` (or `C += A·B` when `accumulate`), single-threaded.
pub fn gemm<T: Float, A: PackA<T>, B: PackB<T>>(a: A, b: B, c: MatMut<T>, accumulate: bool) {
    check_dims(&a, &b, &c);
    gemm_rows(a, b, c, accumulate, RowBlocks::InTurn);
}

/// [`gemm`], its row blocks walked as `rows` says, with the micro-kernel this CPU runs best.
fn gemm_rows<T: Float, A: PackA<T>, B: PackB<T>>(a: A, b: B, c: MatMut<T>, accumulate: bool, rows: RowBlocks) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::tensor::DType::F32 {
        gemm_f32_with(Isa::detect(), a, b, c, accumulate, rows);
        return;
    }
    gemm_blocked::<T, 4, 8, A, B>(a, b, c, accumulate, micro_kernel::<T, 4, 8>, rows)
}

/// An f32 micro-kernel as one for `T`, when `T` is f32 (and `None` otherwise): the vector
/// kernels exist for f32 only, while the blocking around them is generic.
#[cfg(target_arch = "x86_64")]
fn f32_kernel<T: Float>(k: MicroKernel<f32>) -> Option<MicroKernel<T>> {
    (&k as &dyn std::any::Any).downcast_ref::<MicroKernel<T>>().copied()
}

/// The f32 micro-kernel this CPU uses, for `scratchnet devices`.
pub fn cpu_kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match Isa::detect() {
            Isa::Avx512 => "AVX-512 8×32",
            Isa::Avx2Fma => "AVX2+FMA 6×16",
            Isa::Portable => "portable 4×16",
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable 4×16"
    }
}

/// The micro-kernel's tile this CPU runs for `T`, rows × columns (`MR×NR`): what callers
/// that choose between two ways of posing a product count in whole tiles.
pub fn cpu_tile<T: Float>() -> (usize, usize) {
    (panel_rows::<T>(), panel_cols::<T>())
}

/// The rows of the micro-kernel's tile this CPU runs for `T`: the panel height of A.
pub(super) fn panel_rows<T: Float>() -> usize {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::tensor::DType::F32 {
        return Isa::detect().panel_rows();
    }
    4
}

/// The columns of the micro-kernel's tile this CPU runs for `T`: the panel width of B.
pub(super) fn panel_cols<T: Float>() -> usize {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::tensor::DType::F32 {
        return Isa::detect().panel_cols();
    }
    8
}

/// [`gemm`] for `T` = f32 with the micro-kernel of `isa`.
#[cfg(target_arch = "x86_64")]
fn gemm_f32_with<T: Float, A: PackA<T>, B: PackB<T>>(
    isa: Isa,
    a: A,
    b: B,
    c: MatMut<T>,
    accumulate: bool,
    rows: RowBlocks,
) {
    if let (Isa::Avx512, Some(k)) = (isa, f32_kernel::<T>(x86::kernel_avx512_8x32)) {
        gemm_blocked::<T, 8, 32, A, B>(a, b, c, accumulate, k, rows)
    } else if let (Isa::Avx2Fma, Some(k)) = (isa, f32_kernel::<T>(x86::kernel_avx2_6x16)) {
        gemm_blocked::<T, 6, 16, A, B>(a, b, c, accumulate, k, rows)
    } else {
        gemm_blocked::<T, 4, 16, A, B>(a, b, c, accumulate, micro_kernel::<T, 4, 16>, rows)
    }
}

/// As [`gemm`], with the columns (or rows) of C shared among the rayon threads. Each element
/// of C is still computed by one thread in the same order, so the result is identical.
///
/// A wide C is cut into column pieces, each a product of its own (B's columns are packed by
/// the piece that uses them). A C with fewer columns than a couple of micro-tiles and rows
/// to share packs each block of B once, and the threads take its row blocks
/// (`RowBlocks::InParallel`): cut into row pieces, every piece would pack all of B again.
pub fn gemm_parallel<T: Float, A: PackA<T>, B: PackB<T>>(a: A, b: B, c: MatMut<T>, accumulate: bool) {
    check_dims(&a, &b, &c);
    // Below about a million multiply-adds the threads cost more than they save.
    const MIN_WORK: usize = 1 << 20;
    let work = a.rows() * b.cols() * a.cols();
    let threads = rayon::current_num_threads();
    if threads <= 1 || work < 2 * MIN_WORK {
        gemm(a, b, c, accumulate);
        return;
    }
    if c.cols < 64 && c.rows >= 48 {
        // Two row blocks per thread at least, in whole micro-tiles of this CPU's kernel (128
        // rows on two threads: four blocks of 32, not 48, 48 and 32, which leave a thread idle
        // for a third of the product).
        let mr = panel_rows::<T>();
        let rows = c.rows.div_ceil(2 * threads).div_ceil(mr) * mr;
        gemm_rows(a, b, c, accumulate, RowBlocks::InParallel(rows));
        return;
    }
    let pieces = (work / MIN_WORK).min(4 * threads);
    split_and_run(a, b, c, accumulate, pieces);
}

fn split_and_run<T: Float, A: PackA<T>, B: PackB<T>>(a: A, b: B, c: MatMut<T>, accumulate: bool, pieces: usize) {
    if pieces <= 1 {
        gemm(a, b, c, accumulate);
        return;
    }
    let left_pieces = pieces / 2;
    if c.cols >= c.rows && c.cols >= 64 {
        // Cut at a multiple of 32, the widest micro-tile, so no piece starts mid-tile.
        let cut = (c.cols * left_pieces / pieces).div_ceil(32) * 32;
        let cut = cut.min(c.cols);
        let (cl, cr) = c.split_at_col(cut);
        let (bl, br) = (b.cols_range(0, cut), b.cols_range(cut, b.cols() - cut));
        rayon::join(
            || split_and_run(a, bl, cl, accumulate, left_pieces),
            || split_and_run(a, br, cr, accumulate, pieces - left_pieces),
        );
    } else if c.rows >= 48 {
        // A multiple of 24 is a whole number of 6- and of 8-row micro-tiles.
        let cut = (c.rows * left_pieces / pieces).div_ceil(24) * 24;
        let cut = cut.min(c.rows);
        let (ct, cb) = c.split_at_row(cut);
        let (at, ab) = (a.rows_range(0, cut), a.rows_range(cut, a.rows() - cut));
        rayon::join(
            || split_and_run(at, b, ct, accumulate, left_pieces),
            || split_and_run(ab, b, cb, accumulate, pieces - left_pieces),
        );
    } else {
        gemm(a, b, c, accumulate);
    }
}

fn check_dims<T: Copy, A: PackA<T>, B: PackB<T>>(a: &A, b: &B, c: &MatMut<T>) {
    assert!(
        a.cols() == b.rows() && c.rows == a.rows() && c.cols == b.cols(),
        "gemm: A {}x{} · B {}x{} into C {}x{}",
        a.rows(),
        a.cols(),
        b.rows(),
        b.cols(),
        c.rows,
        c.cols
    );
}

/// The vector instruction sets the f32 kernels are written for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

#[cfg(target_arch = "x86_64")]
impl Isa {
    /// Every kernel this CPU can run, fastest first (the tests compare them).
    #[cfg(test)]
    fn all_supported() -> Vec<Isa> {
        let mut v = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2Fma);
        }
        v.push(Isa::Portable);
        v
    }

    /// The rows of the f32 micro-kernel's tile (the panel height of A) on this instruction set.
    fn panel_rows(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2Fma => 6,
            Isa::Portable => 4,
        }
    }

    /// The columns of the f32 micro-kernel's tile (the panel width of B).
    fn panel_cols(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2Fma | Isa::Portable => 16,
        }
    }

    /// The widest instruction set this CPU supports (a property of the machine, not a choice:
    /// the tests run every supported one, `Isa::all_supported`).
    fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Isa::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                Isa::Avx2Fma
            } else {
                Isa::Portable
            }
        })
    }
}

/// Computes one `MR×NR` tile of `A_panel · B_panel` over `kc` steps and writes (or, with
/// `accumulate`, adds) its top-left `mr×nr` corner to C at `c`, whose rows are `ldc` apart.
/// Panels are packed so that step `p` reads `MR` consecutive values of A and `NR` consecutive
/// values of B.
///
/// # Safety
/// `a` holds at least `kc·MR` values, `b` at least `kc·NR`; `c` points at an `mr×nr` block
/// (mr ≤ MR, nr ≤ NR) of writable memory with row stride `ldc` that nothing else accesses;
/// the CPU supports the instructions the kernel was compiled for.
pub(super) type MicroKernel<T> =
    unsafe fn(kc: usize, a: &[T], b: &[T], c: *mut T, ldc: usize, mr: usize, nr: usize, accumulate: bool);

/// Writes (or adds) the `mr×nr` corner of a row-major `tile` with `NR` values per row to C.
///
/// # Safety
/// As for [`MicroKernel`]'s `c`.
#[inline(always)]
pub(super) unsafe fn store_tile<T: Float, const NR: usize>(
    tile: &[T],
    c: *mut T,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    for (i, row) in tile.chunks_exact(NR).take(mr).enumerate() {
        // SAFETY: row i of the block is nr writable values at c + i·ldc.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        if accumulate {
            dst.iter_mut().zip(row).for_each(|(d, &v)| *d += v);
        } else {
            dst.copy_from_slice(&row[..nr]);
        }
    }
}

fn gemm_blocked<T: Float, const MR: usize, const NR: usize, A: PackA<T>, B: PackB<T>>(
    a: A,
    b: B,
    mut c: MatMut<T>,
    accumulate: bool,
    kernel: MicroKernel<T>,
    rows: RowBlocks,
) {
    let (m, n, k) = (a.rows(), b.cols(), a.cols());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside C.
                    unsafe { *c.ptr_at(i, j) = T::ZERO };
                }
            }
        }
        return;
    }
    let block_rows = match rows {
        RowBlocks::InTurn => MC,
        RowBlocks::InParallel(rows) => rows.clamp(1, MC),
    };
    let b_len = n.min(NC).div_ceil(NR) * NR * k.min(KC);
    with_scratch(&PACKED_B, b_len, |scratch: &mut [T]| {
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let packed_b = b.panels::<NR>(pc, kc, jc, nc, scratch);
                // The first rank-KC update overwrites C unless the caller asked to accumulate.
                let step = Step { a: &a, packed_b, pc, kc, jc, nc, add_to_c: accumulate || pc > 0, kernel };
                let blocks = row_blocks(c.reborrow(), block_rows);
                match rows {
                    RowBlocks::InTurn => blocks.for_each(|(ic, block)| step.rows::<MR, NR>(ic, block)),
                    RowBlocks::InParallel(_) => blocks
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .for_each(|(ic, block)| step.rows::<MR, NR>(ic, block)),
                }
            }
        }
    });
}

/// C cut into blocks of `rows` rows (the last may be shorter), each with its first row.
fn row_blocks<T: Copy>(c: MatMut<'_, T>, rows: usize) -> impl Iterator<Item = (usize, MatMut<'_, T>)> {
    let (mut rest, mut first) = (Some(c), 0);
    std::iter::from_fn(move || {
        let r = rest.take().filter(|r| r.rows > 0)?;
        let n = rows.min(r.rows);
        let (block, below) = r.split_at_row(n);
        let ic = first;
        first += block.rows;
        rest = Some(below);
        Some((ic, block))
    })
}

/// How [`gemm_blocked`] walks the row blocks of C for each packed block of B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowBlocks {
    /// One after the other, MC rows each, on this thread.
    InTurn,
    /// Blocks of (at most) this many rows, shared among the rayon threads, which all read the
    /// one packed block of B: for a C with few columns and many rows (a convolution of small
    /// maps: 512 channels × 32 pixels), where cutting C into row pieces that each pack B
    /// again, im2col gather included, would do that work once per piece.
    InParallel(usize),
}

/// One rank-KC update of the blocked product: B's block packed, and what each row block of C
/// needs to multiply it by its rows of A.
struct Step<'s, T, A> {
    a: &'s A,
    packed_b: &'s [T],
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    add_to_c: bool,
    kernel: MicroKernel<T>,
}

impl<T: Float, A: PackA<T>> Step<'_, T, A> {
    /// Packs rows `ic..` of A (as many as `block` has) in this thread's scratch and runs the
    /// micro-kernel over every MR×NR tile of the block.
    fn rows<const MR: usize, const NR: usize>(&self, ic: usize, mut block: MatMut<T>) {
        let (mc, kc) = (block.rows, self.kc);
        with_scratch(&PACKED_A, mc.div_ceil(MR) * MR * kc, |scratch: &mut [T]| {
            let packed_a = self.a.panels::<MR>(ic, mc, self.pc, kc, scratch);
            for jr in (0..self.nc).step_by(NR) {
                let nr = NR.min(self.nc - jr);
                let b_panel = &self.packed_b[(jr / NR) * NR * kc..][..NR * kc];
                for ir in (0..mc).step_by(MR) {
                    let mr = MR.min(mc - ir);
                    let a_panel = &packed_a[(ir / MR) * MR * kc..][..MR * kc];
                    let c_tile = block.ptr_at(ir, self.jc + jr);
                    // SAFETY: the panels hold kc steps; the mr×nr block at c_tile lies inside
                    // this row block of C, which this call borrows exclusively; the kernel was
                    // chosen for what this CPU supports.
                    unsafe { (self.kernel)(kc, a_panel, b_panel, c_tile, block.row_stride, mr, nr, self.add_to_c) };
                }
            }
        });
    }
}

/// Runs `f` on `len` values of this thread's space for packing blocks of A, as the GEMM's
/// own row blocks do: for a product driven outside [`gemm`] (`conv2d/indirect.rs`).
pub(crate) fn with_packing_space_for_a<T: Float>(len: usize, f: impl FnOnce(&mut [T])) {
    with_scratch(&PACKED_A, len, f)
}

/// Runs `f` on `len` values of this thread's packing space `cell` (grown as needed, kept for
/// the next call). Packing writes every element it later reads (padding included), so the
/// space is reused without clearing; allocating and zeroing it per call costs as much as the
/// arithmetic for the small products of a CIFAR network.
fn with_scratch<T: Float>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<Vec<f64>>>,
    len: usize,
    f: impl FnOnce(&mut [T]),
) {
    let mut scratch = cell.take();
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    if scratch.len() < words {
        scratch.resize(words, 0.0);
    }
    f(&mut bytemuck::cast_slice_mut::<f64, T>(&mut scratch[..words])[..len]);
    cell.set(scratch);
}

thread_local! {
    /// Packing space of this thread for blocks of A and of B, kept as f64 so it is aligned
    /// for f32 and f64 alike. Two, because a thread that packed a block of B for its
    /// product also packs blocks of A while the other threads share that block of B.
    static PACKED_A: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
    static PACKED_B: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The portable micro-kernel: plain loops over the tile, for any float type.
///
/// # Safety
/// As for [`MicroKernel`]; the panel lengths are checked here.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: *mut T,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    let mut tile = [[T::ZERO; NR]; MR];
    for (a_col, b_row) in a[..kc * MR].chunks_exact(MR).zip(b[..kc * NR].chunks_exact(NR)) {
        for (row, &ai) in tile.iter_mut().zip(a_col) {
            for (t, &bj) in row.iter_mut().zip(b_row) {
                *t += ai * bj;
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store_tile::<T, NR>(tile.as_flattened(), c, ldc, mr, nr, accumulate) }
}

/// Packs `B[p0..p0+kc, j0..j0+nc]` as column panels of `NR`: panel `q`, step `p`, column `c`
/// goes to `out[q*NR*kc + p*NR + c]`, zero past `nc`.
#[inline(always)]
fn pack_b<T: Float, const NR: usize>(b: &MatRef<T>, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]) {
    for (q, panel) in out.chunks_exact_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
        let cols = NR.min(nc - q * NR);
        if b.row_stride == 1 && b.col_stride != 1 {
            // A transposed row-major matrix (a linear layer's Wᵀ): each column of B lies
            // contiguous. Reading it column by column and writing across the panel, which
            // fits in L1, is several times faster than gathering each step's NR values from
            // NR columns a whole row of W apart.
            for cc in 0..NR {
                if cc < cols {
                    let column = &b.data[(j0 + q * NR + cc) * b.col_stride + p0..][..kc];
                    for (p, &v) in column.iter().enumerate() {
                        panel[p * NR + cc] = v;
                    }
                } else {
                    (0..kc).for_each(|p| panel[p * NR + cc] = T::ZERO);
                }
            }
            continue;
        }
        for (p, slot) in panel.chunks_exact_mut(NR).enumerate() {
            if cols == NR && b.col_stride == 1 {
                // The common case: a contiguous run of B's row.
                let start = (p0 + p) * b.row_stride + j0 + q * NR;
                slot.copy_from_slice(&b.data[start..start + NR]);
            } else {
                for (cc, v) in slot.iter_mut().enumerate() {
                    *v = if cc < cols { b.at(p0 + p, j0 + q * NR + cc) } else { T::ZERO };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(a: &MatRef<f64>, b: &MatRef<f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|p| a.at(i, p) * b.at(p, j)).sum();
            }
        }
        c
    }

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
    }

    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    #[test]
    fn matches_naive_on_odd_sizes_and_transposes() {
        // Sizes chosen to cross every block edge: m past MC, k past KC, n past NR panels.
        for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (97, 33, 257), (130, 70, 300), (3, 2049, 2)] {
            let a_data = random(m * k, 1);
            let b_data = random(k * n, 2);
            let a = MatRef::row_major(&a_data, m, k);
            let b = MatRef::row_major(&b_data, k, n);
            let want = naive(&a, &b);
            let mut c = vec![f64::NAN; m * n];
            gemm(a, b, MatMut::row_major(&mut c, m, n), false);
            assert!(rel_err(&c, &want) < 1e-14, "{m}x{n}x{k}");

            // The same product through transposed views of transposed storage.
            let at_data: Vec<f64> = (0..k * m).map(|x| a_data[(x % m) * k + x / m]).collect();
            let bt_data: Vec<f64> = (0..n * k).map(|x| b_data[(x % k) * n + x / k]).collect();
            let at = MatRef::row_major(&at_data, k, m).t();
            let bt = MatRef::row_major(&bt_data, n, k).t();
            let mut c2 = vec![f64::NAN; m * n];
            gemm_parallel(at, bt, MatMut::row_major(&mut c2, m, n), false);
            assert!(rel_err(&c2, &want) < 1e-14, "transposed {m}x{n}x{k}");
        }
    }

    #[test]
    fn accumulate_adds_to_c() {
        let (m, n, k) = (5, 9, 4);
        let a_data = random(m * k, 3);
        let b_data = random(k * n, 4);
        let a = MatRef::row_major(&a_data, m, k);
        let b = MatRef::row_major(&b_data, k, n);
        let mut c = vec![1.0; m * n];
        gemm(a, b, MatMut::row_major(&mut c, m, n), true);
        let want: Vec<f64> = naive(&a, &b).iter().map(|v| v + 1.0).collect();
        assert!(rel_err(&c, &want) < 1e-14);
    }

    #[test]
    fn parallel_f32_is_bit_identical_to_sequential() {
        let (m, n, k) = (64, 300, 200);
        let a_data: Vec<f32> = random(m * k, 5).iter().map(|&v| v as f32).collect();
        let b_data: Vec<f32> = random(k * n, 6).iter().map(|&v| v as f32).collect();
        let a = MatRef::row_major(&a_data, m, k);
        let b = MatRef::row_major(&b_data, k, n);
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        gemm(a, b, MatMut::row_major(&mut c1, m, n), false);
        gemm_parallel(a, b, MatMut::row_major(&mut c2, m, n), false);
        assert_eq!(c1, c2);
    }

    /// A tall, narrow C (a convolution of small maps) is shared by row blocks over one packed
    /// B: the same bits as one thread, and with blocks of every size, those that cut micro-tiles
    /// and MC blocks too.
    #[test]
    fn row_blocks_in_parallel_give_the_bits_of_one_thread() {
        for &(m, n, k) in &[(300, 20, 600), (512, 32, 300), (50, 3, 7)] {
            let a: Vec<f32> = random(m * k, 9).iter().map(|&v| v as f32).collect();
            let b: Vec<f32> = random(k * n, 10).iter().map(|&v| v as f32).collect();
            let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let mut one = vec![f32::NAN; m * n];
            gemm(am, bm, MatMut::row_major(&mut one, m, n), false);
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let want = naive(&MatRef::row_major(&a64, m, k), &MatRef::row_major(&b64, k, n));
            let got: Vec<f64> = one.iter().map(|&v| v as f64).collect();
            assert!(rel_err(&got, &want) < 1e-5, "{m}x{n}x{k}");
            for rows in [1, 5, 24, 96, 200] {
                let mut shared = vec![f32::NAN; m * n];
                gemm_rows(am, bm, MatMut::row_major(&mut shared, m, n), false, RowBlocks::InParallel(rows));
                assert_eq!(shared, one, "{m}x{n}x{k} in blocks of {rows} rows");
            }
            let mut through_api = vec![f32::NAN; m * n];
            gemm_parallel(am, bm, MatMut::row_major(&mut through_api, m, n), false);
            assert_eq!(through_api, one, "{m}x{n}x{k} through gemm_parallel");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_f32_kernel_matches_and_the_vector_ones_agree_bitwise() {
        // 8 and 6 row tiles, 32 and 16 column tiles, and KC: every edge is crossed.
        for &(m, n, k) in &[(13, 37, 300), (8, 32, 5), (1, 1, 1), (50, 3, 7)] {
            let a: Vec<f32> = random(m * k, 7).iter().map(|&v| v as f32).collect();
            let b: Vec<f32> = random(k * n, 8).iter().map(|&v| v as f32).collect();
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let want = naive(&MatRef::row_major(&a64, m, k), &MatRef::row_major(&b64, k, n));
            let mut results = Vec::new();
            for isa in Isa::all_supported() {
                for accumulate in [false, true] {
                    let mut c = vec![if accumulate { 0.5f32 } else { f32::NAN }; m * n];
                    let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
                    gemm_f32_with(isa, am, bm, MatMut::row_major(&mut c, m, n), accumulate, RowBlocks::InTurn);
                    let got: Vec<f64> = c.iter().map(|&v| v as f64 - if accumulate { 0.5 } else { 0.0 }).collect();
                    assert!(rel_err(&got, &want) < 1e-5, "{isa:?} {m}x{n}x{k} accumulate={accumulate}");
                    if !accumulate {
                        results.push((isa, c));
                    }
                }
            }
            let vector: Vec<_> = results.iter().filter(|(isa, _)| *isa != Isa::Portable).collect();
            for pair in vector.windows(2) {
                assert_eq!(pair[0].1, pair[1].1, "{:?} and {:?} differ", pair[0].0, pair[1].0);
            }
        }
    }

    /// A matrix packed once multiplies as the plain one does on every micro-kernel this CPU
    /// has: packed for that kernel's panels (read where they lie), and packed for another
    /// kernel's (packed again as it goes).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_f32_kernel_takes_matrices_packed_once() {
        use super::super::PackedMatrix;
        let (m, n, k) = (29, 45, 300);
        let a: Vec<f32> = random(m * k, 11).iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = random(k * n, 12).iter().map(|&v| v as f32).collect();
        let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        for isa in Isa::all_supported() {
            let mut want = vec![f32::NAN; m * n];
            gemm_f32_with(isa, am, bm, MatMut::row_major(&mut want, m, n), false, RowBlocks::InTurn);
            for mr in [8, 6, 4] {
                let packed = PackedMatrix::with_panel_rows(am, mr);
                let mut got = vec![f32::NAN; m * n];
                gemm_f32_with(isa, packed.view(), bm, MatMut::row_major(&mut got, m, n), false, RowBlocks::InTurn);
                assert_eq!(got, want, "{isa:?} with panels of {mr} rows");
            }
            // And a right-hand operand packed once, in the panels of every kernel's width.
            for nr in [32, 16, 8] {
                let packed = super::super::PackedBMatrix::with_panel_cols(bm, nr);
                let mut got = vec![f32::NAN; m * n];
                gemm_f32_with(isa, am, packed.view(), MatMut::row_major(&mut got, m, n), false, RowBlocks::InTurn);
                assert_eq!(got, want, "{isa:?} with B in panels of {nr} columns");
            }
        }
    }

    #[test]
    fn empty_shared_dimension_gives_zeros() {
        let a: Vec<f32> = vec![];
        let mut c = vec![5f32; 6];
        gemm(MatRef::row_major(&a, 2, 0), MatRef::row_major(&a, 0, 3), MatMut::row_major(&mut c, 2, 3), false);
        assert_eq!(c, vec![0.0; 6]);
    }
}
