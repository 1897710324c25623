// runtime.cpp — the emulator's scheduler: runs a CUDA grid on the CPU, with the threads of
// each block as fibers. Compile this one file (it includes fiber.h) together with the
// kernels, which include cuda_emu.h.
//
// In one paragraph: the blocks of a grid run one after another on the calling OS thread;
// the threads of a block are fibers (each with its own small stack) on that same thread,
// switched only at barriers. Fibers, not OS threads, because a barrier then costs a few
// nanoseconds per thread instead of a wake-up through the kernel (~1 ms per barrier for
// 256 OS threads), and because a fixed order makes every run bit-identical. Since a block
// never shares its OS thread with another block at the same time, `__shared__` can simply
// be `static thread_local`. Warp intrinsics are built on a per-warp barrier with a value
// exchange (below). What is not emulated (inline PTX, `extern __shared__`, cooperative
// groups, warp-synchronous code without __syncwarp, spin-waiting, ...) is listed
// precisely at the top of cuda_emu.h. fiber.h has the stacks and the context switch.
//
// A launch (scratchnet_emu_launch, at the bottom) checks the launch configuration, then
// runs the blocks of the grid one after another (x fastest, then y, then z). A block is
// run by run_block():
//
//   1. Make one fiber per CUDA thread: fibers[t] is the thread with linear id
//      t = threadIdx.x + threadIdx.y*blockDim.x + threadIdx.z*blockDim.x*blockDim.y;
//      lanes of warp w are fibers 32w .. 32w+31 (the last warp may have fewer lanes).
//      Each fiber starts in fiber_entry(), which calls the kernel (through the generated
//      wrapper) and, when the kernel returns, marks the fiber finished.
//   2. Rounds. In each round the scheduler resumes every runnable fiber once, in order
//      0, 1, 2, .... A fiber runs until it finishes or calls a barrier; the barrier
//      records what the fiber waits for and switches back to the scheduler. After a
//      round no fiber is runnable: each one has finished or waits at a barrier.
//   3. Release. A block barrier (__syncthreads) is released when every live (not
//      finished) thread of the block waits at it: threads that returned count as having
//      arrived, as on Volta and later GPUs. A warp barrier (__syncwarp and every *_sync
//      intrinsic) is released for a group of lanes: the live lanes named in the mask,
//      when all of them wait at a warp barrier with that same mask. Released fibers are
//      runnable in the next round.
//   4. If nothing could be released, no fiber can ever run again: that is a deadlock
//      (for example some threads at __syncthreads while others wait at a warp barrier).
//      The launch stops with a message that says who waits where, instead of hanging.
//      The fibers are abandoned; their stacks go back to the pool and are reset on reuse.
//
// Data exchange between lanes (shuffles, ballots) uses the warp barrier: each lane
// deposits a 64-bit value when it arrives; at release the scheduler copies the deposits
// of the group into the warp's snapshot, and each lane reads the snapshot when it
// resumes. This needs only one barrier per shuffle, because of an invariant of the
// round structure: releases happen only between rounds, and every released fiber runs in
// the next round, so every lane reads the snapshot before the warp can be released
// again and the snapshot overwritten.
//
// The order of fibers and rounds is fixed, so two runs of a kernel are bit-identical.
#include "cuda_emu.h"
#include "fiber.h"

#include <cstdarg>
#include <exception>
#include <new>
#include <vector>

namespace scratchnet_emu {

__thread ThreadContext* tls_thread = nullptr;

namespace {

// Limits of an H100 (compute capability 9.0), with the opt-in dynamic shared memory.
constexpr unsigned long long max_threads_per_block = 1024;
constexpr unsigned max_block_x = 1024, max_block_y = 1024, max_block_z = 64;
constexpr unsigned long long max_grid_x = 2147483647ull, max_grid_y = 65535, max_grid_z = 65535;
constexpr unsigned long long max_dynamic_shared_bytes = 227 * 1024;
constexpr std::size_t dynamic_shared_alignment = 256;

enum class FiberState : unsigned char { runnable, at_block_barrier, at_warp_barrier, finished };

struct Block;

// One emulated CUDA thread. The ThreadContext part is what kernel code sees.
struct Fiber : ThreadContext {
    MachineContext context;       // where to continue it (saved by the context switch)
    Block* owner = nullptr;
    FiberState state = FiberState::runnable;
    int predicate = 0;            // at a block barrier: the __syncthreads_count/and/or predicate
    unsigned warp_mask = 0;       // at a warp barrier: the lanes it waits for (always includes itself)
    unsigned long long deposit = 0;  // at a warp barrier: its value for the exchange
    unsigned warp_group = 0;      // after a warp barrier: the lanes released together with it
    void* asan_fake_stack = nullptr;
};

struct Warp {
    unsigned live = 0;     // lanes that exist and have not returned
    unsigned waiting = 0;  // lanes waiting at a warp barrier
    unsigned long long snapshot[32] = {};  // deposits of the last released groups
};

// The state of a launch; reset for each block.
struct Block : BlockContext {
    scratchnet_emu_kernel_fn kernel = nullptr;
    void** args = nullptr;
    unsigned long long dynamic_shared_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<Stack> stacks;  // stacks[t] belongs to fibers[t]
    unsigned live = 0;              // fibers not finished
    unsigned at_block_barrier = 0;  // fibers waiting at __syncthreads
    int reduction[4] = {};          // results of the last block barrier, indexed by BlockReduction
    // The scheduler's own context (the launching OS thread's stack).
    MachineContext scheduler;
    void* scheduler_fake_stack = nullptr;
    const void* scheduler_stack_bottom = nullptr;
    std::size_t scheduler_stack_size = 0;
};

// ---------------------------------------------------------------------------------------
// Switching between the scheduler and a fiber
// ---------------------------------------------------------------------------------------

// Scheduler side: run fiber f until it finishes or waits at a barrier.
void resume(Block& b, Fiber& f) {
    tls_thread = &f;
    const Stack& stack = b.stacks[f.linear_tid];
    asan_start_switch(&b.scheduler_fake_stack, stack.bottom, stack.size);
    context_switch(b.scheduler, f.context);
    asan_finish_switch(b.scheduler_fake_stack, nullptr, nullptr);
}

// Fiber side: give control back to the scheduler; returns when the scheduler resumes us.
void suspend(Fiber& self) {
    Block& b = *self.owner;
    asan_start_switch(&self.asan_fake_stack, b.scheduler_stack_bottom, b.scheduler_stack_size);
    context_switch(self.context, b.scheduler);
    asan_finish_switch(self.asan_fake_stack, nullptr, nullptr);
}

// Every fiber starts here, on its own stack (context_init makes the first switch land here).
void fiber_entry() noexcept {
    Fiber& self = *static_cast<Fiber*>(tls_thread);
    Block& b = *self.owner;
    // We came from the scheduler: tell ASan we arrived, and learn the scheduler's stack.
    asan_finish_switch(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);

    b.kernel(b.args);

    self.state = FiberState::finished;
    --b.live;
    b.warps[self.warp].live &= ~(1u << self.lane);
    // Leave for good: nullptr tells ASan this fiber's fake stack can be freed.
    asan_start_switch(nullptr, b.scheduler_stack_bottom, b.scheduler_stack_size);
    context_switch(self.context, b.scheduler);
    die("a finished fiber was resumed");
}

Fiber& running_fiber(const char* what) {
    if (tls_thread == nullptr) outside_kernel(what);
    return *static_cast<Fiber*>(tls_thread);
}

// ---------------------------------------------------------------------------------------
// Releasing barriers (scheduler side, between rounds)
// ---------------------------------------------------------------------------------------

void release_block_barrier(Block& b) {
    int count = 0;
    for (Fiber& f : b.fibers) {
        if (f.state != FiberState::at_block_barrier) continue;
        count += f.predicate;
        f.state = FiberState::runnable;
    }
    b.reduction[static_cast<int>(BlockReduction::none)] = 0;
    b.reduction[static_cast<int>(BlockReduction::count)] = count;
    b.reduction[static_cast<int>(BlockReduction::all)] = count == static_cast<int>(b.at_block_barrier);
    b.reduction[static_cast<int>(BlockReduction::any)] = count > 0;
    b.at_block_barrier = 0;
}

// The group lane `lane` waits for, if it can be released now; 0 otherwise.
unsigned ready_group(const Block& b, const Warp& w, unsigned warp_index, unsigned lane) {
    const unsigned group = b.fibers[warp_index * 32 + lane].warp_mask & w.live;
    if ((group & ~w.waiting) != 0) return 0;  // a lane of the group is elsewhere (block barrier)
    for (unsigned l = 0; l < 32; ++l)          // all of them must wait for the same group
        if (((group >> l) & 1u) && (b.fibers[warp_index * 32 + l].warp_mask & w.live) != group) return 0;
    return group;
}

bool release_warp_barriers(Block& b, unsigned warp_index) {
    Warp& w = b.warps[warp_index];
    bool released = false;
    unsigned candidates = w.waiting;
    while (candidates != 0) {
        const unsigned lane = static_cast<unsigned>(__builtin_ctz(candidates));
        const unsigned group = ready_group(b, w, warp_index, lane);
        if (group == 0) {
            candidates &= ~(1u << lane);
            continue;
        }
        for (unsigned l = 0; l < 32; ++l) {
            if (((group >> l) & 1u) == 0) continue;
            Fiber& f = b.fibers[warp_index * 32 + l];
            w.snapshot[l] = f.deposit;
            f.warp_group = group;
            f.state = FiberState::runnable;
        }
        w.waiting &= ~group;
        candidates &= ~group;
        released = true;
    }
    return released;
}

bool release_barriers(Block& b) {
    if (b.at_block_barrier == b.live) {  // every live thread is at __syncthreads
        release_block_barrier(b);
        return true;
    }
    bool released = false;
    for (unsigned w = 0; w < b.warps.size(); ++w)
        if (b.warps[w].waiting != 0) released |= release_warp_barriers(b, w);
    return released;
}

// ---------------------------------------------------------------------------------------
// Error messages
// ---------------------------------------------------------------------------------------

int fail(char* err, unsigned long long err_len, const char* format, ...) __attribute__((format(printf, 3, 4)));
int fail(char* err, unsigned long long err_len, const char* format, ...) {
    if (err != nullptr && err_len > 0) {
        va_list ap;
        va_start(ap, format);
        std::vsnprintf(err, static_cast<std::size_t>(err_len), format, ap);
        va_end(ap);
    }
    return 1;
}

int report_deadlock(const Block& b, char* err, unsigned long long err_len) {
    const Fiber* at_warp = nullptr;
    for (const Fiber& f : b.fibers)
        if (f.state == FiberState::at_warp_barrier) {
            at_warp = &f;
            break;
        }
    const uint3 bi = b.block_idx;
    if (at_warp == nullptr)  // cannot happen: then every live thread is at the block barrier
        return fail(err, err_len, "deadlock in block (%u,%u,%u)", bi.x, bi.y, bi.z);
    const uint3 t = at_warp->thread_idx;
    if (b.at_block_barrier > 0)
        return fail(err, err_len,
                    "__syncthreads() reached by %u of %u live threads of block (%u,%u,%u); the other %u wait at a warp "
                    "barrier (__syncwarp or a *_sync warp intrinsic), e.g. thread (%u,%u,%u) with mask 0x%08x",
                    b.at_block_barrier, b.live, bi.x, bi.y, bi.z, b.live - b.at_block_barrier, t.x, t.y, t.z,
                    at_warp->warp_mask);
    // Everyone waits at warp barriers, but no group agrees on its mask.
    const Warp& w = b.warps[at_warp->warp];
    const unsigned group = at_warp->warp_mask & w.live;
    const Fiber* other = at_warp;
    for (unsigned l = 0; l < 32; ++l) {
        const Fiber& f = b.fibers[at_warp->warp * 32 + l];
        if (((group >> l) & 1u) && (f.warp_mask & w.live) != group) {
            other = &f;
            break;
        }
    }
    const uint3 o = other->thread_idx;
    return fail(err, err_len,
                "warp barrier deadlock in block (%u,%u,%u): thread (%u,%u,%u) waits at a warp barrier with mask 0x%08x, "
                "thread (%u,%u,%u) of the same warp with mask 0x%08x",
                bi.x, bi.y, bi.z, t.x, t.y, t.z, at_warp->warp_mask, o.x, o.y, o.z, other->warp_mask);
}

// ---------------------------------------------------------------------------------------
// Running a block
// ---------------------------------------------------------------------------------------

// Returns 0, or 1 with a message in err after a deadlock.
int run_block(Block& b, char* err, unsigned long long err_len) {
    const unsigned n = static_cast<unsigned>(b.fibers.size());
    const unsigned bx = b.block_dim.x, by = b.block_dim.y;
    if (b.dynamic_shared_bytes > 0) std::memset(b.dynamic_shared, 0xff, b.dynamic_shared_bytes);
    for (Warp& w : b.warps) w.live = w.waiting = 0;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.thread_idx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        f.linear_tid = t;
        f.lane = t % 32;
        f.warp = t / 32;
        f.block = &b;
        f.owner = &b;
        f.state = FiberState::runnable;
        f.asan_fake_stack = nullptr;
        context_init(f.context, b.stacks[t], fiber_entry);
        b.warps[f.warp].live |= 1u << f.lane;
    }
    b.live = n;
    b.at_block_barrier = 0;

    for (;;) {
        for (Fiber& f : b.fibers)
            if (f.state == FiberState::runnable) resume(b, f);
        tls_thread = nullptr;
        if (b.live == 0) return 0;
        if (!release_barriers(b)) {
            for (Stack& s : b.stacks) s.dirty = true;
            return report_deadlock(b, err, err_len);
        }
    }
}

// Hands the launch's stacks back to the pool however the launch ends.
struct StackLease {
    std::vector<Stack>& stacks;
    ~StackLease() { StackPool::instance().release(stacks); }
};

struct DynamicShared {
    void* p;
    explicit DynamicShared(unsigned long long bytes)
        : p(::operator new(static_cast<std::size_t>(bytes), std::align_val_t{dynamic_shared_alignment})) {}
    ~DynamicShared() { ::operator delete(p, std::align_val_t{dynamic_shared_alignment}); }
    DynamicShared(const DynamicShared&) = delete;
    DynamicShared& operator=(const DynamicShared&) = delete;
};

// Runs every block of a checked launch, in order x, then y, then z.
int run_grid(scratchnet_emu_kernel_fn fn, dim3 grid, dim3 block, unsigned long long dynamic_shared_bytes, void** args,
             char* err, unsigned long long err_len) {
    const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
    Block b;
    b.kernel = fn;
    b.args = args;
    b.grid_dim = grid;
    b.block_dim = block;
    // Exactly the requested size, so that AddressSanitizer sees reads past its end.
    DynamicShared dynamic_shared(dynamic_shared_bytes);
    b.dynamic_shared = dynamic_shared.p;
    b.dynamic_shared_bytes = dynamic_shared_bytes;
    b.fibers.resize(threads);
    b.warps.resize((threads + 31) / 32);
    StackPool::instance().acquire(threads, b.stacks);
    StackLease lease{b.stacks};

    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                b.block_idx = uint3{x, y, z};
                if (run_block(b, err, err_len) != 0) return 1;
            }
    return 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Called from kernel code (declared in cuda_emu.h)
// ---------------------------------------------------------------------------------------

void outside_kernel(const char* what) {
    std::fprintf(stderr, "scratchnet emulator: %s used outside a running kernel\n", what);
    std::abort();
}

int block_barrier(BlockReduction how, int predicate) {
    Fiber& self = running_fiber("__syncthreads");
    Block& b = *self.owner;
    self.predicate = predicate != 0;
    self.state = FiberState::at_block_barrier;
    ++b.at_block_barrier;
    suspend(self);
    return b.reduction[static_cast<int>(how)];
}

const unsigned long long* warp_barrier(unsigned mask, unsigned long long value, unsigned* group) {
    Fiber& self = running_fiber("__syncwarp or a warp intrinsic");
    Block& b = *self.owner;
    Warp& w = b.warps[self.warp];
    self.warp_mask = mask | (1u << self.lane);
    self.deposit = value;
    self.state = FiberState::at_warp_barrier;
    w.waiting |= 1u << self.lane;
    suspend(self);
    *group = self.warp_group;
    return w.snapshot;
}

unsigned live_lanes() {
    Fiber& self = running_fiber("__activemask");
    return self.owner->warps[self.warp].live;
}

}  // namespace scratchnet_emu

// ---------------------------------------------------------------------------------------
// The C ABI
// ---------------------------------------------------------------------------------------
extern "C" int scratchnet_emu_launch(scratchnet_emu_kernel_fn fn,
                                     unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                     unsigned block_x, unsigned block_y, unsigned block_z,
                                     unsigned long long dynamic_shared_bytes,
                                     void** args, char* err, unsigned long long err_len) {
    using namespace scratchnet_emu;
    if (err != nullptr && err_len > 0) err[0] = '\0';
    if (fn == nullptr) return fail(err, err_len, "kernel function is null");
    if (tls_thread != nullptr) return fail(err, err_len, "a kernel cannot launch a kernel in the emulator");
    if (grid_x == 0 || grid_y == 0 || grid_z == 0)
        return fail(err, err_len, "grid has a zero dimension (%u,%u,%u)", grid_x, grid_y, grid_z);
    if (block_x == 0 || block_y == 0 || block_z == 0)
        return fail(err, err_len, "block has a zero dimension (%u,%u,%u)", block_x, block_y, block_z);
    const unsigned long long threads = static_cast<unsigned long long>(block_x) * block_y * block_z;
    if (threads > max_threads_per_block)
        return fail(err, err_len, "block of %llu threads exceeds the limit of %llu", threads, max_threads_per_block);
    if (block_x > max_block_x || block_y > max_block_y || block_z > max_block_z)
        return fail(err, err_len, "block (%u,%u,%u) exceeds the limits (%u,%u,%u)", block_x, block_y, block_z,
                    max_block_x, max_block_y, max_block_z);
    if (grid_x > max_grid_x || grid_y > max_grid_y || grid_z > max_grid_z)
        return fail(err, err_len, "grid (%u,%u,%u) exceeds the limits (%llu,%llu,%llu)", grid_x, grid_y, grid_z,
                    max_grid_x, max_grid_y, max_grid_z);
    if (dynamic_shared_bytes > max_dynamic_shared_bytes)
        return fail(err, err_len, "dynamic shared memory of %llu bytes exceeds the limit of %llu bytes (227 KiB)",
                    dynamic_shared_bytes, max_dynamic_shared_bytes);

    try {
        return run_grid(fn, dim3(grid_x, grid_y, grid_z), dim3(block_x, block_y, block_z), dynamic_shared_bytes, args, err,
                        err_len);
    } catch (const std::exception& e) {  // out of memory while setting up; kernels themselves must not throw
        return fail(err, err_len, "emulator error: %s", e.what());
    }
}
