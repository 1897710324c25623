// fiber.h — the two low-level pieces under the emulator's scheduler (runtime.cpp, the only
// file that includes this one):
//
//   1. Fiber stacks. Every emulated CUDA thread runs on its own small stack, so that it can
//      stop in the middle of the kernel (at a barrier) while the others run. Stacks are
//      mmap'd, with an inaccessible guard page below each one (a kernel that overflows its
//      stack crashes with SIGSEGV instead of silently overwriting its neighbour), and are
//      kept in a process-wide pool so that a launch does not pay for mmap/munmap.
//      Size: 64 KiB, or 512 KiB under AddressSanitizer (its red zones make frames bigger);
//      the environment variable SCRATCHNET_EMU_STACK_KIB overrides it.
//
//   2. The context switch: stop running one stack and continue another. On x86-64 it is
//      a dozen instructions of assembly. The System V ABI says a called function must
//      preserve rsp, rbx, rbp, r12-r15 and the control bits of the x87 and SSE units
//      (fpucw, mxcsr); everything else may be clobbered by any call. So switching is: push
//      those on the current stack, store rsp, load the other fiber's rsp, pop its saved
//      registers, `ret` into it. The C++ compiler sees an ordinary opaque function call
//      and saves whatever else it needs itself. (glibc's swapcontext would also work, and
//      is the fallback on other architectures, but it makes a sigprocmask system call at
//      every switch, which is ~20x slower.)
//
// Under AddressSanitizer every switch is announced with __sanitizer_start_switch_fiber /
// __sanitizer_finish_switch_fiber, otherwise ASan would believe the program jumped to a
// random stack and report false errors.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SCRATCHNET_EMU_ASAN 1
#else
#define SCRATCHNET_EMU_ASAN 0
#endif

#if !defined(__x86_64__) || defined(SCRATCHNET_EMU_USE_UCONTEXT)
#include <ucontext.h>
#define SCRATCHNET_EMU_UCONTEXT 1
#else
#define SCRATCHNET_EMU_UCONTEXT 0
#endif

namespace scratchnet_emu {

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "scratchnet emulator: %s\n", what);
    std::abort();
}

// ---------------------------------------------------------------------------------------
// Stacks
// ---------------------------------------------------------------------------------------
struct Stack {
    unsigned char* bottom = nullptr;  // lowest usable byte (just above the guard page)
    std::size_t size = 0;             // usable bytes; the stack grows down from bottom + size
    bool dirty = false;               // abandoned mid-kernel (deadlock): ASan shadow may be stale
};

inline std::size_t fiber_stack_size() {
    static const std::size_t size = [] {
        std::size_t kib = SCRATCHNET_EMU_ASAN ? 512 : 64;
        if (const char* env = std::getenv("SCRATCHNET_EMU_STACK_KIB")) {
            const long v = std::strtol(env, nullptr, 10);
            if (v >= 16 && v <= 1 << 20) kib = static_cast<std::size_t>(v);
        }
        return kib * 1024;
    }();
    return size;
}

// Process-wide pool of stacks, shared by all OS threads that launch kernels. Stacks are
// never unmapped (a block of 1024 threads needs 64 MiB of address space, of which only
// the pages actually touched use memory).
class StackPool {
public:
    static StackPool& instance() {
        static StackPool* pool = new StackPool;  // never destroyed: launches may run during exit
        return *pool;
    }

    void acquire(std::size_t n, std::vector<Stack>& out) {
        out.clear();
        out.reserve(n);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            while (out.size() < n && !free_.empty()) {
                out.push_back(free_.back());
                free_.pop_back();
            }
        }
        while (out.size() < n) out.push_back(map_stack());
        for (Stack& s : out) {
#if SCRATCHNET_EMU_ASAN
            // A fiber abandoned at a deadlock left the red zones of its frames poisoned.
            if (s.dirty) __asan_unpoison_memory_region(s.bottom, s.size);
#endif
            s.dirty = false;
        }
    }

    void release(std::vector<Stack>& stacks) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const Stack& s : stacks) free_.push_back(s);
        stacks.clear();
    }

private:
    static Stack map_stack() {
        const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        const std::size_t size = (fiber_stack_size() + page - 1) / page * page;
        void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (p == MAP_FAILED) die("cannot mmap a fiber stack");
        if (mprotect(p, page, PROT_NONE) != 0) die("cannot protect the guard page of a fiber stack");
        Stack s;
        s.bottom = static_cast<unsigned char*>(p) + page;
        s.size = size;
        return s;
    }

    std::mutex mutex_;
    std::vector<Stack> free_;
};

// ---------------------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------------------
#if !SCRATCHNET_EMU_UCONTEXT

// A suspended fiber is fully described by its stack pointer: everything else it needs
// was pushed on its stack by scratchnet_emu_switch_stack.
struct MachineContext {
    void* sp = nullptr;
};

extern "C" void scratchnet_emu_switch_stack(void** save_sp, void* load_sp);

// scratchnet_emu_switch_stack(&from_sp, to_sp): saves the callee-saved state on the
// current stack, stores rsp in *from_sp, continues with the state saved on to_sp's stack.
// Frame, from low to high addresses: [mxcsr|fpucw] r15 r14 r13 r12 rbx rbp return-address.
asm(R"(
    .pushsection .text
    .globl scratchnet_emu_switch_stack
    .hidden scratchnet_emu_switch_stack
    .type scratchnet_emu_switch_stack, @function
    .p2align 4
scratchnet_emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size scratchnet_emu_switch_stack, .-scratchnet_emu_switch_stack
    .popsection
)");

// Prepares `ctx` so that the first switch to it "returns" into entry(), at the top of
// `stack`, with the stack aligned as the ABI requires at a function's first instruction
// (rsp + 8 a multiple of 16) and the current thread's mxcsr/fpucw.
inline void context_init(MachineContext& ctx, const Stack& stack, void (*entry)()) {
    auto top = reinterpret_cast<std::uintptr_t>(stack.bottom + stack.size) & ~std::uintptr_t{15};
    auto* frame = reinterpret_cast<std::uint64_t*>(top) - 9;
    std::uint32_t mxcsr;
    std::uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    frame[0] = mxcsr | (static_cast<std::uint64_t>(fpucw) << 32);  // popped by ldmxcsr/fldcw
    for (int i = 1; i <= 6; ++i) frame[i] = 0;                     // r15 r14 r13 r12 rbx rbp (rbp = 0 ends backtraces)
    frame[7] = reinterpret_cast<std::uint64_t>(entry);             // `ret` jumps here, rsp becomes top - 8
    frame[8] = 0;                                                  // entry's (never used) return address
    ctx.sp = frame;
}

inline void context_switch(MachineContext& from, MachineContext& to) { scratchnet_emu_switch_stack(&from.sp, to.sp); }

#else  // ucontext fallback (slower: a system call per switch)

struct MachineContext {
    ucontext_t uc;
};

inline void context_init(MachineContext& ctx, const Stack& stack, void (*entry)()) {
    if (getcontext(&ctx.uc) != 0) die("getcontext failed");
    ctx.uc.uc_stack.ss_sp = stack.bottom;
    ctx.uc.uc_stack.ss_size = stack.size;
    ctx.uc.uc_link = nullptr;  // entry never returns
    makecontext(&ctx.uc, entry, 0);
}

inline void context_switch(MachineContext& from, MachineContext& to) {
    if (swapcontext(&from.uc, &to.uc) != 0) die("swapcontext failed");
}

#endif

// ---------------------------------------------------------------------------------------
// AddressSanitizer annotations (no-ops without ASan)
// ---------------------------------------------------------------------------------------
// Before a switch: the stack we are going to. fake_stack_save receives the current
// fiber's "fake stack" (ASan's home for locals when detecting use-after-return), or is
// nullptr when the current fiber will never run again.
inline void asan_start_switch(void** fake_stack_save, const void* bottom, std::size_t size) {
#if SCRATCHNET_EMU_ASAN
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
    (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
// After a switch, on the new stack: restore its fake stack; optionally learn the bounds of
// the stack we came from.
inline void asan_finish_switch(void* fake_stack, const void** old_bottom, std::size_t* old_size) {
#if SCRATCHNET_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
#else
    (void)fake_stack, (void)old_bottom, (void)old_size;
#endif
}

}  // namespace scratchnet_emu
