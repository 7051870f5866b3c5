/*
 * emu.h - enough of CUDA to run csoftmax's kernels on the CPU, for the test suite.
 *
 * Included (with CSM_EMULATE defined) before src/backends/cuda/csoftmax_kernels.cu by the
 * harness that tests/cuda_emu/emulator.py generates and compiles with the host C++
 * compiler. Every thread of a block is a coroutine: its stack is set up with ucontext,
 * and switches go through _setjmp/_longjmp (no signal-mask system call each time); blocks
 * run one after another. __syncthreads() and the warp shuffles are barriers: a coroutine that reaches
 * one yields, and the scheduler releases the barrier when every thread of the block (or
 * warp) still running has reached it. A barrier that can never be released (threads of
 * one block waiting at different barriers) is reported as a deadlock. This checks the
 * kernels' indexing, their reductions and their logic on any machine; it cannot find data
 * races or measure anything.
 */
#ifndef CSM_EMU_H
#define CSM_EMU_H

#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#define CSM_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define CSM_DYNAMIC_SMEM(type, name) type *name = (type *)emu::dynamic_smem()

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};

namespace emu {
dim3 threadIdx_, blockIdx_, blockDim_, gridDim_;
}
#define threadIdx emu::threadIdx_
#define blockIdx emu::blockIdx_
#define blockDim emu::blockDim_
#define gridDim emu::gridDim_

using std::fma;
using std::fabs;
using std::fmax;
using std::ldexp;
using std::log;
using std::log1p;
using std::expm1;
using std::exp;
using std::rint;

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, 4); return i; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline long long __double_as_longlong(double v) { long long i; std::memcpy(&i, &v, 8); return i; }

namespace emu {

enum State { RUN, AT_BLOCK, AT_WARP, DONE };

struct Block {
    int n = 0;
    std::vector<ucontext_t> ctx; /* to start a thread on its own stack */
    struct Jb {
        jmp_buf b;
    };
    std::vector<Jb> jb; /* to switch to it afterwards */
    std::vector<char> started;
    jmp_buf sched_jb;
    std::vector<State> state;
    std::vector<dim3> tid;
    std::vector<uint64_t> slot; /* shuffle exchange */
    std::vector<char> stacks;
    std::vector<unsigned char> smem;
    ucontext_t sched;
    int cur = -1;
    std::string error;
};

inline Block &blk()
{
    static Block b;
    return b;
}

inline void *dynamic_smem() { return blk().smem.data(); }

inline void yield_as(State s)
{
    Block &b = blk();
    int me = b.cur;
    b.state[me] = s;
    if (!_setjmp(b.jb[me].b)) _longjmp(b.sched_jb, 1);
    threadIdx_ = b.tid[me]; /* the scheduler ran others meanwhile */
}

inline void warp_barrier() { yield_as(AT_WARP); }

template <typename T> inline T shfl_xor(T v, int lane_mask)
{
    Block &b = blk();
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    int me = b.cur;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    b.slot[me] = bits;
    warp_barrier();
    int other = (me & ~31) | ((me & 31) ^ lane_mask);
    uint64_t ob = other < b.n ? b.slot[other] : bits;
    warp_barrier(); /* everyone has read before the slots are reused */
    T r;
    std::memcpy(&r, &ob, sizeof(T));
    return r;
}

/* run thread body `fn(arg)` for every thread of one block; returns an error or "" */
typedef void (*body_fn)(void *);
struct Trampoline {
    static body_fn fn;
    static void *arg;
    static void entry()
    {
        fn(arg);
        Block &b = blk();
        b.state[b.cur] = DONE;
        _longjmp(b.sched_jb, 1); /* never resumed */
    }
};
inline body_fn Trampoline::fn;
inline void *Trampoline::arg;

inline std::string run_block(dim3 block, size_t shmem, body_fn fn, void *arg)
{
    Block &b = blk();
    const size_t stack = 64 * 1024;
    b.n = (int)(block.x * block.y * block.z);
    b.ctx.assign(b.n, ucontext_t());
    b.jb.resize(b.n);
    b.started.assign(b.n, 0);
    b.state.assign(b.n, RUN);
    b.tid.assign(b.n, dim3());
    b.slot.assign(b.n, 0);
    if (b.stacks.size() < (size_t)b.n * stack) b.stacks.resize((size_t)b.n * stack);
    b.smem.assign(shmem + 16, 0);
    Trampoline::fn = fn;
    Trampoline::arg = arg;
    for (int t = 0; t < b.n; t++) {
        b.tid[t].x = t % block.x;
        b.tid[t].y = (t / block.x) % block.y;
        b.tid[t].z = t / (block.x * block.y);
        getcontext(&b.ctx[t]);
        b.ctx[t].uc_stack.ss_sp = b.stacks.data() + (size_t)t * stack;
        b.ctx[t].uc_stack.ss_size = stack;
        b.ctx[t].uc_link = nullptr;
        makecontext(&b.ctx[t], (void (*)())Trampoline::entry, 0);
    }
    for (;;) {
        bool ran = false;
        for (int t = 0; t < b.n; t++) {
            if (b.state[t] != RUN) continue;
            b.cur = t;
            threadIdx_ = b.tid[t];
            if (!_setjmp(b.sched_jb)) {
                if (!b.started[t]) {
                    b.started[t] = 1;
                    setcontext(&b.ctx[t]); /* first run: onto its stack */
                }
                _longjmp(b.jb[t].b, 1);
            }
            ran = true;
        }
        bool all_done = true, any_block = false, release = false;
        for (int t = 0; t < b.n; t++) {
            all_done &= b.state[t] == DONE;
            any_block |= b.state[t] == AT_BLOCK;
        }
        if (all_done) return "";
        /* a block barrier: every thread still running waits at it */
        bool block_ready = any_block;
        for (int t = 0; t < b.n && block_ready; t++) block_ready = b.state[t] == AT_BLOCK || b.state[t] == DONE;
        if (block_ready) {
            for (int t = 0; t < b.n; t++)
                if (b.state[t] == AT_BLOCK) b.state[t] = RUN;
            release = true;
        }
        /* warp barriers: every thread still running in the warp waits at one */
        for (int w0 = 0; w0 < b.n; w0 += 32) {
            bool any_warp = false, ready = true;
            for (int t = w0; t < w0 + 32 && t < b.n; t++) {
                any_warp |= b.state[t] == AT_WARP;
                ready &= b.state[t] == AT_WARP || b.state[t] == DONE;
            }
            if (any_warp && ready) {
                for (int t = w0; t < w0 + 32 && t < b.n; t++)
                    if (b.state[t] == AT_WARP) b.state[t] = RUN;
                release = true;
            }
        }
        if (!ran && !release) return "deadlock: threads of a block wait at barriers that cannot be released";
    }
}

} // namespace emu

inline void __syncthreads() { emu::yield_as(emu::AT_BLOCK); }

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    (void)mask;
    return emu::shfl_xor(v, lane_mask);
}

/* ---- launching: args as cudaLaunchKernel takes them, an array of pointers ---- */
namespace emu {
template <typename... A, size_t... I>
void invoke_impl(void (*f)(A...), void **args, std::index_sequence<I...>)
{
    f(*(typename std::remove_cv<typename std::remove_reference<A>::type>::type *)args[I]...);
}
template <typename... A> void invoke(void (*f)(A...), void **args) { invoke_impl(f, args, std::index_sequence_for<A...>{}); }

struct Launch {
    void (*thunk)(void **);
    void **args;
};
inline void body(void *p)
{
    Launch *l = (Launch *)p;
    l->thunk(l->args);
}

inline std::string launch(void (*thunk)(void **), dim3 grid, dim3 block, size_t shmem, void **args)
{
    gridDim_ = grid;
    blockDim_ = block;
    Launch l = {thunk, args};
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx_.x = x;
                blockIdx_.y = y;
                blockIdx_.z = z;
                std::string err = run_block(block, shmem, body, &l);
                if (!err.empty()) return err;
            }
    return "";
}
} // namespace emu

#endif /* CSM_EMU_H */
