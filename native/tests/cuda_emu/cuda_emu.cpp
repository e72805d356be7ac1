// The host emulation declared in cuda_emu.h: fibers, barriers, shared-memory checks, cp.async, mma.sync.
#include "cuda_emu.h"

#if !(defined(__x86_64__) && defined(__linux__)) || defined(SW_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <memory>
#include <sstream>
#include <unordered_map>

namespace sw::emu {
namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kMaxFindings = 20;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, AtGroupBarrier, Done };

// ---- fibers: a context switch that saves only what the ABI asks a callee to keep (x86-64 Linux), or ucontext
// elsewhere. (swapcontext also saves the signal mask, a system call per switch; the mma emulation switches a few
// million times.)
#if defined(__x86_64__) && defined(__linux__) && !defined(SW_EMU_UCONTEXT)
extern "C" void sw_emu_switch(void** save_sp, void* load_sp);
// Pushes the callee-saved registers, MXCSR and the x87 control word, stores rsp in *save_sp, loads load_sp and pops
// the same from there. A new fiber's stack is laid out as if it had switched away just before its entry function.
asm(R"(
    .text
    .globl sw_emu_switch
    .type sw_emu_switch, @function
sw_emu_switch:
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
    .size sw_emu_switch, .-sw_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct Context {
    void* sp = nullptr;
};
void fiber_entry();
// A stack that "returns" into fiber_entry on the first switch to it.
void make_context(Context& c, char* stack, size_t bytes) {
    auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
    auto* words = reinterpret_cast<uint64_t*>(top - 16 - 56);
    const uint32_t csr[2] = {0x1F80u, 0x037Fu}; // MXCSR and x87 control word at their defaults
    std::memcpy(&words[0], csr, 8);
    for (int i = 1; i <= 6; ++i) words[i] = 0; // r15, r14, r13, r12, rbx, rbp
    words[7] = reinterpret_cast<uint64_t>(&fiber_entry); // at top - 16: after `ret`, rsp = top - 8, as after a call
    c.sp = words;
}
void switch_context(Context& from, Context& to) { sw_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc{};
};
void fiber_entry();
void make_context(Context& c, char* stack, size_t bytes) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr; // fiber_entry never returns
    makecontext(&c.uc, fiber_entry, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Copy {
    uint32_t dst;
    const void* src;
    int cp_size, src_size;
};

struct Thread {
    Context ctx;
    char* stack = nullptr; // from the pool below
    unsigned tid = 0;
    State state = State::Runnable;
    std::vector<Copy> open_group;              // issued, not yet committed
    std::vector<std::vector<Copy>> committed;  // oldest first
    unsigned group_size = 0;                   // AtGroupBarrier: the size of the group waited for
    size_t shared_calls = 0;                   // shared_alloc calls so far in this block
    std::vector<uint32_t> unfenced;            // shared bytes this thread wrote since its last fence.proxy.async
};

// What the block knows of one shared byte.
struct Shadow {
    int64_t write_epoch = -1;
    int64_t read_epoch = -1;
    int32_t writer = -1;
    int32_t reader = -1;     // -2: several readers in read_epoch
    int32_t pending = -1;    // thread whose cp.async to this byte is in flight, -1 none
    bool unfenced = false;   // written by generic-proxy stores, no fence.proxy.async by the writer since
    int32_t mma_reader = -1; // warpgroup whose wgmma may still read this byte (until its wait_group), -1 none
};

struct WarpgroupSlot {
    std::vector<float> d[128];
    bool computed = false;                // this round's product is in out[]
    std::vector<float> out[128];
    std::vector<uint32_t> issued;         // shared bytes read by wgmmas not yet committed
    std::vector<std::vector<uint32_t>> groups; // committed, not waited for
};

struct WarpSlot {
    uint32_t a[32][4];
    uint32_t b[32][2];
    float c[32][4];
};

struct Launch {
    dim3 grid, block, block_idx;
    const std::function<void()>* body = nullptr;
    std::vector<Thread> threads;
    Thread* current = nullptr;
    Context scheduler;
    int64_t epoch = 0;
    std::unordered_map<uint32_t, Shadow> shadow;
    std::vector<WarpSlot> warps;
    std::vector<WarpgroupSlot> warpgroups;
    std::vector<std::pair<size_t, size_t>> arena; // shared_alloc results of this block: offset, bytes
    std::vector<std::string> findings;
    size_t dropped = 0;
};

Launch* g_launch = nullptr;
// Shared memory handed out by shared_alloc: the emulated shared window's offsets [0, kArenaBytes), like a real
// block's (H100: up to 227 KiB), so that 14-bit descriptor addresses (wgmma) work. Static __shared__ arrays
// (the __shared__ macro) live elsewhere and get offsets near 2^31 instead.
constexpr size_t kArenaBytes = 228 * 1024;
alignas(4096) char g_arena[kArenaBytes];
// Fiber stacks, allocated once and reused by every block and launch (allocating them per block costs more than
// running most kernels).
std::vector<std::unique_ptr<char[]>> g_stacks;
char g_anchor;                                  // the shared window is centred on a static of this module
std::vector<std::pair<uintptr_t, size_t>> g_globals;

// Page aligned, so that the alignment of an emulated shared address is the alignment of the object.
uintptr_t window_base() { return (reinterpret_cast<uintptr_t>(&g_anchor) - 0x80000000u) & ~uintptr_t{0xfff}; }

Launch& L() {
    if (!g_launch) {
        std::fprintf(stderr, "cuda_emu: a device function was called outside sw::emu::launch\n");
        std::abort();
    }
    return *g_launch;
}
Thread& me() { return *L().current; }

template <class... T> void finding(T&&... parts) {
    Launch& l = L();
    if (l.findings.size() >= kMaxFindings) {
        ++l.dropped;
        return;
    }
    std::ostringstream os;
    os << "block (" << l.block_idx.x << "," << l.block_idx.y << "," << l.block_idx.z << ") ";
    (os << ... << parts);
    l.findings.push_back(os.str());
}

void yield_to_scheduler(State s) {
    Thread& t = me();
    t.state = s;
    switch_context(t.ctx, L().scheduler);
}

// Every emulated thread starts here, on its own stack, and ends by switching back to the scheduler for good.
void fiber_entry() {
    Launch& l = L();
    (*l.body)();
    Thread& t = *l.current;
    for (const auto& g : t.committed)
        if (!g.empty()) finding("thread ", t.tid, " exited with committed cp.async copies it never waited for");
    if (!t.open_group.empty()) finding("thread ", t.tid, " exited with uncommitted cp.async copies");
    t.state = State::Done;
    switch_context(t.ctx, l.scheduler); // never resumed
    std::abort();
}

void land(Thread& t, const Copy& c) {
    Launch& l = L();
    auto* dst = static_cast<unsigned char*>(shared_pointer(c.dst));
    if (c.src_size > 0) std::memcpy(dst, c.src, static_cast<size_t>(c.src_size));
    std::memset(dst + c.src_size, 0, static_cast<size_t>(c.cp_size - c.src_size));
    for (int i = 0; i < c.cp_size; ++i) {
        Shadow& s = l.shadow[c.dst + static_cast<uint32_t>(i)];
        s.pending = -1;
        s.unfenced = true; // cp.async writes through the generic proxy too
        t.unfenced.push_back(c.dst + static_cast<uint32_t>(i));
        s.write_epoch = l.epoch;
        s.writer = static_cast<int32_t>(t.tid);
    }
}

bool inside_global(const void* p, size_t bytes) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (const auto& [base, size] : g_globals)
        if (a >= base && a + bytes <= base + size) return true;
    return false;
}

// Runs one block to completion (or deadlock).
void run_block(Launch& l) {
    const unsigned n = l.block.x * l.block.y * l.block.z;
    l.threads.clear();
    l.threads.resize(n);
    l.shadow.clear();
    l.epoch = 0;
    l.warps.assign((n + 31) / 32, WarpSlot{});
    l.arena.clear();
    l.warpgroups.clear();
    l.warpgroups.resize((n + 127) / 128);
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = l.threads[i];
        t.tid = i;
        while (g_stacks.size() <= i) g_stacks.emplace_back(new char[kStackBytes]);
        t.stack = g_stacks[i].get();
        make_context(t.ctx, t.stack, kStackBytes);
    }
    for (;;) {
        bool ran = false;
        for (Thread& t : l.threads) {
            if (t.state != State::Runnable) continue;
            l.current = &t;
            switch_context(l.scheduler, t.ctx);
            l.current = nullptr;
            ran = true;
        }
        if (ran) continue;
        // Nobody can run: release a complete barrier, or stop.
        size_t done = 0, at_block = 0;
        for (const Thread& t : l.threads) {
            done += t.state == State::Done;
            at_block += t.state == State::AtBlockBarrier;
        }
        if (done == n) return;
        bool released = false;
        for (size_t w = 0; w * 32 < n; ++w) {
            const size_t lo = w * 32, hi = std::min<size_t>(n, lo + 32);
            bool all = true;
            for (size_t i = lo; i < hi; ++i) all = all && l.threads[i].state == State::AtWarpBarrier;
            if (all) {
                for (size_t i = lo; i < hi; ++i) l.threads[i].state = State::Runnable;
                released = true;
            }
        }
        for (size_t i = 0; i < n;) { // groups: consecutive threads waiting for a group of their size
            const unsigned size = l.threads[i].state == State::AtGroupBarrier ? l.threads[i].group_size : 0;
            if (size == 0 || i % size != 0 || i + size > n) {
                ++i;
                continue;
            }
            bool all = true;
            for (size_t j = i; j < i + size; ++j)
                all = all && l.threads[j].state == State::AtGroupBarrier && l.threads[j].group_size == size;
            if (all) {
                for (size_t j = i; j < i + size; ++j) l.threads[j].state = State::Runnable;
                released = true;
            }
            i += size;
        }
        if (released) continue;
        if (at_block == n) {
            for (Thread& t : l.threads) t.state = State::Runnable;
            ++l.epoch;
            continue;
        }
        std::ostringstream os;
        os << "deadlock: " << done << " threads exited, " << at_block << " wait at __syncthreads, "
           << (n - done - at_block) << " wait at a warp-collective operation that not all lanes of their warp reached";
        finding(os.str());
        return; // the fibers are abandoned with their stacks
    }
}

double decode16(uint16_t bits, int man_bits, int exp_bits) {
    const uint32_t sign = bits >> 15, mag = bits & 0x7fffu;
    const uint32_t exp = mag >> man_bits, man = mag & ((1u << man_bits) - 1);
    const uint32_t emax = (1u << exp_bits) - 1;
    const int bias = (1 << (exp_bits - 1)) - 1;
    double v;
    if (exp == emax) v = man ? NAN : INFINITY;
    else if (exp == 0) v = std::ldexp(static_cast<double>(man), 1 - bias - man_bits);
    else v = std::ldexp(static_cast<double>(man | (1u << man_bits)), static_cast<int>(exp) - bias - man_bits);
    return sign ? -v : v;
}

} // namespace

dim3 thread_idx() {
    const Launch& l = L();
    const unsigned t = l.current->tid;
    return dim3(t % l.block.x, (t / l.block.x) % l.block.y, t / (l.block.x * l.block.y));
}
dim3 block_idx() { return L().block_idx; }
dim3 block_dim() { return L().block; }
dim3 grid_dim() { return L().grid; }

void syncthreads() { yield_to_scheduler(State::AtBlockBarrier); }
void group_sync(unsigned size) {
    me().group_size = size;
    yield_to_scheduler(State::AtGroupBarrier);
}
void warp_sync() { yield_to_scheduler(State::AtWarpBarrier); }

void* shared_alloc(size_t bytes, size_t align) {
    Launch& l = L();
    Thread& t = me();
    const size_t i = t.shared_calls++;
    if (i < l.arena.size()) { // another thread of the block made this allocation: the same memory
        if (l.arena[i].second != bytes) finding("thread ", t.tid, ": shared_alloc #", i, " of another size than in other threads");
        return g_arena + l.arena[i].first;
    }
    size_t at = l.arena.empty() ? 0 : l.arena.back().first + l.arena.back().second;
    at = (at + align - 1) / align * align;
    if (at + bytes > kArenaBytes) {
        finding("thread ", t.tid, ": shared memory over ", kArenaBytes, " bytes");
        std::abort();
    }
    l.arena.emplace_back(at, bytes);
    return g_arena + at;
}

uint32_t shared_address(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    if (a >= reinterpret_cast<uintptr_t>(g_arena) && a < reinterpret_cast<uintptr_t>(g_arena) + kArenaBytes)
        return static_cast<uint32_t>(a - reinterpret_cast<uintptr_t>(g_arena));
    const uintptr_t d = reinterpret_cast<uintptr_t>(p) - window_base();
    if (d > 0xffffffffu) {
        finding("shared_address: ", p, " is outside the emulated shared window");
        return 0;
    }
    return static_cast<uint32_t>(d);
}
void* shared_pointer(uint32_t addr) {
    if (addr < kArenaBytes) return g_arena + addr;
    return reinterpret_cast<void*>(window_base() + addr);
}

void check_shared_access(uint32_t addr, size_t bytes, bool write) {
    Launch& l = L();
    const auto tid = static_cast<int32_t>(me().tid);
    if (addr % bytes != 0) finding("thread ", tid, ": misaligned ", bytes, "-byte shared ", write ? "store" : "load", " at ", addr);
    for (size_t i = 0; i < bytes; ++i) {
        const uint32_t a = addr + static_cast<uint32_t>(i);
        auto it = l.shadow.find(a);
        if (!write && it == l.shadow.end()) {
            finding("thread ", tid, ": read of uninitialised shared memory at ", a);
            continue;
        }
        Shadow& s = write ? l.shadow[a] : it->second;
        if (s.pending >= 0) {
            finding("thread ", tid, ": shared ", write ? "store to" : "load from", " ", a, " while thread ", s.pending,
                    "'s cp.async to it is in flight (no cp.async.wait_group / __syncthreads before the access)");
        }
        if (write && s.mma_reader >= 0)
            finding("thread ", tid, ": shared store to ", a, " while warpgroup ", s.mma_reader,
                    "'s wgmma may still read it (no wgmma.wait_group before the store)");
        if (write) {
            s.unfenced = true;
            me().unfenced.push_back(a);
            if (s.write_epoch == l.epoch && s.writer != tid)
                finding("thread ", tid, ": write-after-write race at shared ", a, " with thread ", s.writer);
            if (s.read_epoch == l.epoch && s.reader != tid)
                finding("thread ", tid, ": write-after-read race at shared ", a, " with thread ",
                        s.reader == -2 ? std::string("(several)") : std::to_string(s.reader));
            s.write_epoch = l.epoch;
            s.writer = tid;
        } else {
            if (s.write_epoch == l.epoch && s.writer != tid)
                finding("thread ", tid, ": read-after-write race at shared ", a, " with thread ", s.writer);
            if (s.read_epoch == l.epoch && s.reader != tid) s.reader = -2;
            else if (s.read_epoch != l.epoch) s.reader = tid;
            s.read_epoch = l.epoch;
        }
    }
}

void cp_async(uint32_t dst, const void* src, int cp_size, int src_size) {
    Launch& l = L();
    Thread& t = me();
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) finding("thread ", t.tid, ": cp.async cp-size ", cp_size);
    if (src_size < 0 || src_size > cp_size) {
        finding("thread ", t.tid, ": cp.async src-size ", src_size, " outside [0, ", cp_size, "]");
        return;
    }
    if (dst % static_cast<uint32_t>(cp_size) != 0) finding("thread ", t.tid, ": cp.async destination ", dst, " not aligned to ", cp_size);
    if (reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(cp_size) != 0)
        finding("thread ", t.tid, ": cp.async source ", src, " not aligned to ", cp_size);
    if (src_size > 0 && !inside_global(src, static_cast<size_t>(src_size)))
        finding("thread ", t.tid, ": cp.async reads ", src_size, " bytes at ", src, " outside every global buffer");
    for (int i = 0; i < cp_size; ++i) {
        Shadow& s = l.shadow[dst + static_cast<uint32_t>(i)];
        if (s.pending >= 0) finding("thread ", t.tid, ": cp.async to shared ", dst + i, " while another copy to it is in flight");
        // The copy may land at any time until the wait: it conflicts with other threads' accesses in this epoch.
        if (s.write_epoch == l.epoch && s.writer != static_cast<int32_t>(t.tid))
            finding("thread ", t.tid, ": cp.async write-after-write race at shared ", dst + i, " with thread ", s.writer);
        if (s.read_epoch == l.epoch && s.reader != static_cast<int32_t>(t.tid))
            finding("thread ", t.tid, ": cp.async write-after-read race at shared ", dst + i);
        if (s.mma_reader >= 0)
            finding("thread ", t.tid, ": cp.async to shared ", dst + i, " while warpgroup ", s.mma_reader,
                    "'s wgmma may still read it");
        s.pending = static_cast<int32_t>(t.tid);
    }
    t.open_group.push_back({dst, src, cp_size, src_size});
}

void cp_async_commit() {
    Thread& t = me();
    t.committed.push_back(std::move(t.open_group));
    t.open_group.clear();
}

void cp_async_wait(int n) {
    Thread& t = me();
    while (t.committed.size() > static_cast<size_t>(n)) {
        for (const Copy& c : t.committed.front()) land(t, c);
        t.committed.erase(t.committed.begin());
    }
}

void mma_m16n8k16(bool bf16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    Launch& l = L();
    const unsigned tid = me().tid, lane = tid % 32;
    WarpSlot& w = l.warps[tid / 32];
    std::memcpy(w.a[lane], a, sizeof a);
    std::memcpy(w.b[lane], b, sizeof b);
    std::memcpy(w.c[lane], d, sizeof d);
    warp_sync(); // every lane's fragments are in the slot
    auto elem = [&](uint32_t reg, int half) {
        const auto bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
        return static_cast<double>(bf16 ? bf16_to_float(bits) : f16_to_float(bits));
    };
    // PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (groupID = lane >> 2,
    // threadID_in_group = lane % 4):
    //   A (16 x 16): a_i, i = 0..7, in register i / 2 (low half first): row groupID (+ 8 for i in {2,3,6,7}),
    //                col threadID_in_group * 2 + (i & 1) (+ 8 for i >= 4)
    //   B (16 x 8):  b_i, i = 0..3, in register i / 2: row threadID_in_group * 2 + (i & 1) (+ 8 for i >= 2),
    //                col groupID
    //   C, D (16 x 8): c_i, i = 0..3: row groupID (+ 8 for i >= 2), col threadID_in_group * 2 + (i & 1)
    auto A = [&](int row, int col) {
        const int i = (col & 1) | ((row >= 8) ? 2 : 0) | ((col >= 8) ? 4 : 0);
        const int owner = (row % 8) * 4 + (col % 8) / 2;
        return elem(w.a[owner][i / 2], i & 1);
    };
    auto B = [&](int row, int col) {
        const int i = (row & 1) | ((row >= 8) ? 2 : 0);
        const int owner = col * 4 + (row % 8) / 2;
        return elem(w.b[owner][i / 2], i & 1);
    };
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = static_cast<int>(lane >> 2) + (i >= 2 ? 8 : 0);
        const int col = static_cast<int>(lane % 4) * 2 + (i & 1);
        double acc = 0.0;
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[i] = static_cast<float>(static_cast<double>(w.c[lane][i]) + acc);
    }
    warp_sync(); // nobody overwrites the slot before every lane has read it
    std::memcpy(d, out, sizeof out);
}

void fence_proxy_async() {
    Launch& l = L();
    Thread& t = me();
    const auto tid = static_cast<int32_t>(t.tid);
    for (uint32_t a : t.unfenced) { // only this thread's own writes since its last fence
        Shadow& s = l.shadow[a];
        if (s.writer == tid) s.unfenced = false; // (a later write by another thread is that thread's to fence)
    }
    t.unfenced.clear();
}

void wgmma_fence() {} // orders register accesses around wgmma; nothing to model here

void wgmma_m64nNk16(bool bf16, int n, float* d, uint64_t desc_a, uint64_t desc_b) {
    Launch& l = L();
    const unsigned tid = me().tid, wg = tid / 128, lane = tid % 128;
    if (l.block.x * l.block.y * l.block.z < 128 * (wg + 1)) {
        finding("thread ", tid, ": wgmma in a block whose last warpgroup is incomplete");
        return;
    }
    WarpgroupSlot& g = l.warpgroups[wg];
    const int per = n / 2;
    g.d[lane].assign(d, d + per);
    g.computed = false;
    group_sync(128); // every thread of the warpgroup has issued the same wgmma
    if (!g.computed) {
        // The first thread to resume computes the whole 64 x n product, reading shared memory once.
        auto decode = [&](uint64_t desc, uint32_t& start, uint32_t& lbo, uint32_t& sbo) {
            start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
            lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFFu) << 4;
            sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
            if (((desc >> 49) & 7u) != 0 || (desc >> 62) != 0)
                finding("thread ", tid, ": wgmma descriptor with a base offset or swizzling (not emulated)");
        };
        uint32_t sa, la, ssa, sb, lb, ssb;
        decode(desc_a, sa, la, ssa);
        decode(desc_b, sb, lb, ssb);
        // The 14-bit start address covers the low 256 KiB of the shared window: operands of wgmma must come from
        // shared_alloc (the arena at window offset 0), as the kernel's SW_SHARED_* declarations do in emulation.
        auto element = [&](uint32_t base, uint32_t lbo, uint32_t sbo, int row, int k) {
            const uint32_t addr = base + static_cast<uint32_t>(row / 8) * sbo + static_cast<uint32_t>(k / 8) * lbo +
                                  static_cast<uint32_t>(row % 8) * 16 + static_cast<uint32_t>(k % 8) * 2;
            auto it = l.shadow.find(addr);
            if (it != l.shadow.end() && it->second.unfenced)
                finding("thread ", tid, ": wgmma reads shared ", addr, " written by thread ", it->second.writer,
                        " without a fence.proxy.async since");
            const uint16_t bits = ld_shared<uint16_t>(addr); // checked like any shared load
            for (uint32_t b = 0; b < 2; ++b) {
                l.shadow[addr + b].mma_reader = static_cast<int32_t>(wg);
                g.issued.push_back(addr + b);
            }
            return static_cast<double>(bf16 ? bf16_to_float(bits) : f16_to_float(bits));
        };
        std::vector<double> A(64 * 16), B(static_cast<size_t>(n) * 16);
        for (int r = 0; r < 64; ++r)
            for (int k = 0; k < 16; ++k) A[static_cast<size_t>(r * 16 + k)] = element(sa, la, ssa, r, k);
        for (int c = 0; c < n; ++c)
            for (int k = 0; k < 16; ++k) B[static_cast<size_t>(c * 16 + k)] = element(sb, lb, ssb, c, k);
        for (unsigned t = 0; t < 128; ++t) {
            const unsigned w = t / 32, ln = t % 32;
            g.out[t].resize(static_cast<size_t>(per));
            for (int j = 0; j < per; ++j) {
                const int row = static_cast<int>(w * 16 + ln / 4) + 8 * ((j / 2) % 2);
                const int col = 8 * (j / 4) + 2 * static_cast<int>(ln % 4) + (j % 2);
                double acc = 0.0;
                for (int k = 0; k < 16; ++k) acc += A[static_cast<size_t>(row * 16 + k)] * B[static_cast<size_t>(col * 16 + k)];
                g.out[t][static_cast<size_t>(j)] = static_cast<float>(static_cast<double>(g.d[t][static_cast<size_t>(j)]) + acc);
            }
        }
        g.computed = true;
    }
    group_sync(128); // nobody starts the next wgmma before every thread has its result
    std::memcpy(d, g.out[lane].data(), sizeof(float) * static_cast<size_t>(per));
}

void wgmma_commit() {
    Launch& l = L();
    const unsigned tid = me().tid, wg = tid / 128;
    WarpgroupSlot& g = l.warpgroups[wg];
    group_sync(128);
    if (tid % 128 == 0) {
        g.groups.push_back(std::move(g.issued));
        g.issued.clear();
    }
    group_sync(128);
}

void wgmma_wait(int n) {
    Launch& l = L();
    const unsigned tid = me().tid, wg = tid / 128;
    WarpgroupSlot& g = l.warpgroups[wg];
    group_sync(128);
    if (tid % 128 == 0)
        while (g.groups.size() > static_cast<size_t>(n)) {
            for (uint32_t a : g.groups.front()) {
                auto it = l.shadow.find(a);
                if (it != l.shadow.end() && it->second.mma_reader == static_cast<int32_t>(wg)) it->second.mma_reader = -1;
            }
            g.groups.erase(g.groups.begin());
        }
    group_sync(128);
}

float bf16_to_float(uint16_t bits) { return static_cast<float>(decode16(bits, 7, 8)); }
float f16_to_float(uint16_t bits) { return static_cast<float>(decode16(bits, 10, 5)); }

uint16_t float_to_bf16(float v) {
    uint32_t x;
    std::memcpy(&x, &v, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u); // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}

uint16_t float_to_f16(float v) {
    uint32_t x;
    std::memcpy(&x, &v, 4);
    const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // >= 65520 rounds to infinity
    if (ax < 0x38800000u) {                                              // below 2^-14: subnormal (or zero)
        float mag;
        std::memcpy(&mag, &ax, 4);
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(mag * 16777216.0f))); // / 2^-24
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    const uint32_t rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h; // a carry into the exponent is still right
    return static_cast<uint16_t>(sign | h);
}

std::vector<std::string> g_kernel_findings;

cudaError_t run_kernel(dim3 grid, dim3 block, const std::function<void()>& thread) {
    const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        g_kernel_findings.push_back("launch with an invalid configuration: grid (" + std::to_string(grid.x) + "," +
                                    std::to_string(grid.y) + "," + std::to_string(grid.z) + "), block (" +
                                    std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                                    std::to_string(block.z) + ")");
        return cudaErrorInvalidConfiguration;
    }
    for (auto& f : launch(grid, block, thread)) g_kernel_findings.push_back(std::move(f));
    return cudaSuccess;
}

std::vector<std::string> take_findings() {
    std::vector<std::string> out;
    out.swap(g_kernel_findings);
    return out;
}

void register_global(const void* p, size_t bytes) { g_globals.emplace_back(reinterpret_cast<uintptr_t>(p), bytes); }
void clear_globals() { g_globals.clear(); }

std::vector<std::string> launch(dim3 grid, dim3 block, const std::function<void()>& thread) {
    Launch l;
    l.grid = grid;
    l.block = block;
    l.body = &thread;
    g_launch = &l;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                l.block_idx = dim3(x, y, z);
                run_block(l);
            }
    g_launch = nullptr;
    if (l.dropped) l.findings.push_back(std::to_string(l.dropped) + " more findings not shown");
    return l.findings;
}

} // namespace sw::emu

float __double2float_rz(double d) {
    if (std::isnan(d) || std::isinf(d)) return static_cast<float>(d);
    if (std::fabs(d) >= static_cast<double>(FLT_MAX)) return std::copysign(FLT_MAX, static_cast<float>(d));
    float f = static_cast<float>(d); // nearest (may be infinity past FLT_MAX)
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
    return f;
}
