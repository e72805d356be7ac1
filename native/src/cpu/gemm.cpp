// GEMM of the CPU backend: C = epilogue(alpha * op(A) op(B) + beta * C + bias), fp32 accumulation; A and B in
// fp32 (sgemm) or both in bf16 / fp16 (gemm), C in fp32 or the inputs' 16-bit type.
//
// 16-bit operands take one of two paths through the same blocking (see "Operand paths" below and
// docs/cpu-gemm16.md): widened to fp32 while packing, then the fp32 micro-kernel (every kernel; fp16 always),
// or, for bf16 under the avx512bf16 kernel, packed as bf16 pairs for the vdpbf16ps micro-kernel.
//
// ------------------------------------------------------------------------------------------------
// Blocking (Goto / BLIS style)
// ------------------------------------------------------------------------------------------------
// The work is split into tasks, each owning a rectangle [i0, i1) x [j0, j1) of C (see plan_tasks).
// A task runs on one pool thread and packs what it needs into that thread's own 64-byte aligned
// buffers (thread_local, grown on demand and reused, so steady-state calls do not allocate):
//
//   for jc in [j0, j1) step NC                       B panel columns
//     for each k block [p0, p0 + kc)                 kc <= KC, a function of k only (KBlocks)
//       pack B panel  op(B)[p0:p0+kc, jc:jc+nc]  -> micro-panels of NR columns, kc x NR each (L3)
//       for ic in [i0, i1) step MC
//         pack A block op(A)[ic:ic+mc, p0:p0+kc] -> micro-panels of MR rows,    MR x kc each (L2)
//         for jr in nc step NR                       one B micro-panel stays in L1/L2 ...
//           for ir in mc step MR                     ... while A micro-panels stream from L2
//             micro-kernel: MR x NR register tile, kc FMAs per element, then the epilogue into C
//
// Tile shapes (see the kernel files): AVX-512 MR x NR = 14 x 32, KC = 512, MC = 168, NC = 4096 (the
// 64 KiB B micro-panel lives in L2 next to the 336 KiB A block; a long KC halves the passes over C);
// AVX2 6 x 16, KC = 256, MC = 144; generic 4 x 8. The micro-kernels get prefetch hints for the next
// B micro-panel and the next C tile.
//
// Packing handles the transposes (a contiguous copy or a transposing copy, depending on the case;
// the AVX-512 kernel brings SIMD transposing packs), so one micro-kernel serves NN, NT, TN and TT. Packed panels are zero padded to full MR / NR; edge
// tiles run the full micro-kernel on a small temporary tile (valid part of C copied in and out), so
// they use exactly the arithmetic of interior tiles (tiles with at most NR/2 valid columns use a
// half-width kernel with the same per-element arithmetic where the ISA has one; tiles of fewer than MR rows a
// few-row kernel, written straight into C when all NR columns are valid).
//
// Skinny M (a task of one row block, m <= MC): op(B) is streamed. The NC panel is not packed as a whole (it
// would go out to memory and be read back); instead chunks of a few micro-panels (stream_panels(): 8, 512 KiB
// of L2 at KC = 512; for bf16 pairs 8 x 32 words x 512 pair steps) are packed right before every row tile uses
// them, the row-by-row packs prefetching the next chunk (the pair packs the next micro-panel). For very few rows
// and op(B) = B (m <= rows_max under AVX-512, m <= MR elsewhere) the full-width B micro-panels are read in place
// instead (every element of B is used once), by a wide few-row kernel with the same per-element arithmetic where
// it has one.
//
// Grouped (gemm_grouped): the members that share op(A) are one run over concatenated ("virtual") columns, each
// member a segment with its own B, C, bias, alpha, beta, epilogue and C type (see Seg); each A block is packed once
// per task for all of them, and every group's tasks are one pool job.
//
// ------------------------------------------------------------------------------------------------
// Operand paths (Ctx::path)
// ------------------------------------------------------------------------------------------------
//  F32:   the packs above (B read in place for very few rows, see "Skinny M").
//  Widen: pack_a_panel / pack_b_panel convert 16-bit rows to fp32 with the kernel's WidenFn (F16C / AVX-512 /
//         portable, all exact) straight into the panel when the k steps are the rows of the source, else into a
//         per-thread buffer that the fp32 transposing pack then reads. The micro-kernel is the fp32 one.
//  Pairs: the k blocks are cut in pair steps (KSplit, unit 2); the packs write one 32-bit word per element and
//         pair step (k even in the low half, k odd in the high half, an odd last k zero padded); the vdpbf16ps
//         micro-kernel has the fp32 one's 14 x 32 tile and epilogue. A task of one row block packs each B
//         micro-panel just before use (streamed in chunks like the fp32 path; the pair packs read B micro-panel
//         by micro-panel and prefetch the next one themselves).
//  A 16-bit C: the task computes into a per-thread fp32 workspace (its rows x one NC panel; beta reads C widened
//  into it), every k block accumulates there, bias and GeLU are applied by the last one in fp32, and the panel is
//  rounded once (NarrowFn: nearest even, overflow to inf, NaN kept) into C. A 16-bit bias is widened once per task.
//
// ------------------------------------------------------------------------------------------------
// Determinism contract
// ------------------------------------------------------------------------------------------------
// C[i][j] must depend only on row i of op(A), column j of op(B), k, alpha, beta, the old C[i][j],
// bias[j] and the kernel choice: never on m, n, (i, j), the task split or the thread count. Rules:
//  1. The k blocks are a function of k (and of the kernel's KC) only: k is cut into
//     nb = ceil(k / KC) nearly equal blocks (k_blocks). Never derived from m, n or the split.
//  2. Within a k block, each output element has its own FMA chain acc = fma(a[p], b[p], acc) over
//     p in increasing order, starting from 0. SIMD lanes are independent, so the lane (column
//     position) and the row within the tile do not matter.
//  3. Epilogue per k block (the micro-kernel does it, in registers):
//       first block, beta == 0:  C = alpha * acc             (C is never read: NaN in C is ignored)
//       first block, beta != 0:  C = fma(alpha, acc, beta * C)
//       later blocks:            C = fma(alpha, acc, C)
//       after the last block:    C = C + bias[j], then GeLU if requested
//     except that a single k block with beta == 0 and a bias gives C = fma(alpha, acc, bias[j]).
//     The SIMD kernels write every FMA explicitly (GCC would otherwise be free to contract some
//     multiply + add pairs and not others); the generic kernel rounds each multiply and add
//     separately. k == 0 runs one empty block (acc = 0), then bias and GeLU.
//  4. Edge tiles use the same micro-kernel on zero-padded panels and a temporary tile (or the few-row and
//     half-width kernels, which compute each element with the full kernel's chain and epilogue), the in-place B
//     path and the streamed chunks read the same values the packed path would, and a grouped member's columns
//     (even in a micro-panel shared with a fused neighbour) see the same packed values, k blocks and epilogue as
//     the member alone, so none of them changes any bit.
//  5. 16-bit operands: the conversions are exact (widening) or pure data movement (pairs), so the packed values,
//     the k blocks and each element's chain are functions of the element's own row, column and k as above; the
//     one rounding of a 16-bit C happens after the last k block. The bf16 pair kernel's chains (vdpbf16ps, with
//     its DAZ/FTZ) differ from the fp32 kernel's, so its results may differ from avx512's in the last bits.
//  6. The TP-invariant tree reduction (k_leaf > 0, see TreeStep below) replaces rules 1 and 3: the k blocks are the
//     leaves of k_leaf elements (each cut by KC as rule 1 cuts a k), combined by the fixed tree of
//     core/tree_reduction.h, and alpha, beta, the bias and GeLU are applied once to the root; still a function of
//     the element's own row, column, k and k_leaf (and the kernel) only.
// ------------------------------------------------------------------------------------------------
#include "cpu/gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <new>
#include <vector>

#include "core/dtype.h"
#include "core/tree_reduction.h"
#include "cpu/gemm_kernels.h"
#include "cpu/thread_pool.h"

namespace sw::cpu {

using namespace gemm_detail;

// ================================================================================================
// Kernel selection
// ================================================================================================

namespace {

bool cpu_has_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool ok = have_x86_kernels() && __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    return ok;
#else
    return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool ok =
        have_x86_kernels() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return ok;
#else
    return false;
#endif
}

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool ok =
        cpu_has_avx512() && have_avx512bf16_kernel() && __builtin_cpu_supports("avx512bf16");
    return ok;
#else
    return false;
#endif
}

bool cpu_has_f16c() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    // (CPUID leaf 1, ECX bit 29; not every compiler's __builtin_cpu_supports knows "f16c")
    static const bool ok = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
    }();
    return ok;
#else
    return false;
#endif
}

// The fp32 micro-kernel's info (Avx512Bf16 -> Avx512).
KernelInfo kernel_info(Kernel k) {
    switch (resolve_kernel(k)) {
    case Kernel::Avx512Bf16:
    case Kernel::Avx512: return kernel_info_avx512();
    case Kernel::Avx2: {
        KernelInfo ki = kernel_info_avx2();
        if (!cpu_has_f16c()) { // (every AVX2 processor known has F16C; the portable conversions otherwise)
            const KernelInfo gi = kernel_info_generic();
            ki.widen_f16 = gi.widen_f16;
            ki.narrow_f16 = gi.narrow_f16;
        }
        return ki;
    }
    default: return kernel_info_generic();
    }
}

} // namespace

bool kernel_supported(Kernel k) {
    switch (k) {
    case Kernel::Auto:
    case Kernel::Generic: return true;
    case Kernel::Avx512: return cpu_has_avx512();
    case Kernel::Avx2: return cpu_has_avx2();
    case Kernel::Avx512Bf16: return cpu_has_avx512bf16();
    }
    return false;
}

Kernel resolve_kernel(Kernel k) {
    if (k != Kernel::Auto) return k;
    if (cpu_has_avx512bf16()) return Kernel::Avx512Bf16;
    if (cpu_has_avx512()) return Kernel::Avx512;
    if (cpu_has_avx2()) return Kernel::Avx2;
    return Kernel::Generic;
}

const char* kernel_name(Kernel k) {
    switch (k) {
    case Kernel::Auto: return "auto";
    case Kernel::Avx512: return "avx512";
    case Kernel::Avx2: return "avx2";
    case Kernel::Generic: return "generic";
    case Kernel::Avx512Bf16: return "avx512bf16";
    }
    return "unknown";
}

bool parse_kernel(const char* name, Kernel* out) {
    if (!name || !out) return false;
    static const Kernel all[] = {Kernel::Auto, Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Generic};
    for (Kernel k : all) {
        if (std::strcmp(name, kernel_name(k)) == 0) {
            *out = k;
            return true;
        }
    }
    return false;
}

TileShape tile_shape(Kernel k) {
    const KernelInfo ki = resolve_kernel(k) == Kernel::Avx512Bf16 ? kernel_info_avx512bf16() : kernel_info(k);
    return TileShape{ki.mr, ki.nr, ki.mc, ki.kc, ki.nc};
}

float gelu_tanh(float x) {
    const float kSqrt2OverPi = 0.7978845608028654f;
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + std::tanh(u));
}

void gelu(float* y, const float* x, int64_t n, Kernel kernel) {
    const KernelInfo ki = kernel_info(kernel_supported(kernel) ? kernel : Kernel::Auto);
    if (ki.gelu) {
        ki.gelu(y, x, n);
        return;
    }
    for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh(x[i]);
}

// ================================================================================================
// Packing
// ================================================================================================

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// dst[p*W + c] = src[p*ld + c] for p < kc, c < w; zero for w <= c < W.
// (op(A) stored transposed, op(B) stored as is.)
template <int W>
void pack_copy(float* __restrict dst, const float* __restrict src, int64_t ld, int64_t kc, int w) {
    if (w == W) {
        for (int64_t p = 0; p < kc; ++p) {
            const float* s = src + p * ld;
            float* d = dst + p * W;
            for (int c = 0; c < W; ++c) d[c] = s[c];
        }
        return;
    }
    for (int64_t p = 0; p < kc; ++p) {
        const float* s = src + p * ld;
        float* d = dst + p * W;
        int c = 0;
        for (; c < w; ++c) d[c] = s[c];
        for (; c < W; ++c) d[c] = 0.0f;
    }
}

// dst[p*W + c] = src[c*ld + p] for p < kc, c < w; zero for w <= c < W.
// (op(A) stored as is, op(B) stored transposed.) Works on strips of kStrip k steps so that the rows
// of src are read contiguously and the written block stays in L1.
template <int W>
void pack_trans(float* __restrict dst, const float* __restrict src, int64_t ld, int64_t kc, int w) {
    constexpr int kStrip = 16;
    int64_t p0 = 0;
    for (; p0 + kStrip <= kc; p0 += kStrip) {
        float* d = dst + p0 * W;
        for (int c = 0; c < w; ++c) {
            const float* s = src + c * ld + p0;
            for (int q = 0; q < kStrip; ++q) d[q * W + c] = s[q];
        }
        for (int c = w; c < W; ++c)
            for (int q = 0; q < kStrip; ++q) d[q * W + c] = 0.0f;
    }
    for (int64_t p = p0; p < kc; ++p) {
        float* d = dst + p * W;
        int c = 0;
        for (; c < w; ++c) d[c] = src[c * ld + p];
        for (; c < W; ++c) d[c] = 0.0f;
    }
}

// Several full W-wide micro-panels at once from row-major storage: panel j of dst (kc x W, at
// dst + j*kc*W) gets columns [j*W, j*W + W) of the kc source rows. Same result as pack_copy per panel,
// but the source is read row by row (long contiguous runs) instead of panel by panel (short runs at a
// large stride), which the hardware prefetchers handle much better. pf > 0: the pf floats that follow the
// packed columns in each source row (the next chunk of a streamed panel) are prefetched towards L2 meanwhile.
template <int W>
void pack_copy_panels(float* __restrict dst, const float* __restrict src, int64_t ld, int64_t kc,
                      int64_t panels, int64_t pf) {
    for (int64_t p = 0; p < kc; ++p) {
        const float* s = src + p * ld;
        float* d = dst + p * W;
        for (int64_t q = 0; q < pf; q += 16) __builtin_prefetch(s + panels * W + q, 0, 2);
        for (int64_t j = 0; j < panels; ++j) {
            for (int c = 0; c < W; ++c) d[c] = s[c];
            s += W;
            d += kc * W;
        }
    }
}

// Runtime width -> instantiation (the widths used by the kernels, plus a few tuning candidates).
template <int W>
constexpr PackFn pick_pack(bool trans) { return trans ? &pack_trans<W> : &pack_copy<W>; }

PackPanelsFn pack_panels_fn(int width) {
    switch (width) {
    case 8: return &pack_copy_panels<8>;
    case 16: return &pack_copy_panels<16>;
    case 32: return &pack_copy_panels<32>;
    case 48: return &pack_copy_panels<48>;
    case 64: return &pack_copy_panels<64>;
    default: return nullptr;
    }
}

PackFn pack_fn(int width, bool trans) {
    switch (width) {
    case 4: return pick_pack<4>(trans);
    case 6: return pick_pack<6>(trans);
    case 8: return pick_pack<8>(trans);
    case 12: return pick_pack<12>(trans);
    case 14: return pick_pack<14>(trans);
    case 16: return pick_pack<16>(trans);
    case 24: return pick_pack<24>(trans);
    case 32: return pick_pack<32>(trans);
    case 48: return pick_pack<48>(trans);
    case 64: return pick_pack<64>(trans);
    default: return nullptr;
    }
}

// ================================================================================================
// Thread-local buffers
// ================================================================================================

constexpr size_t kAlign = 64;

class AlignedBuffer {
public:
    AlignedBuffer() = default;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    ~AlignedBuffer() { release(); }
    // At least n floats, 64-byte aligned; grows (never shrinks) so steady state does not allocate.
    float* get(size_t n) {
        if (n > cap_) {
            release();
            const size_t want = std::max(n, cap_ + cap_ / 2);
            ptr_ = static_cast<float*>(::operator new(want * sizeof(float), std::align_val_t(kAlign)));
            cap_ = want;
        }
        return ptr_;
    }

private:
    void release() {
        if (ptr_) ::operator delete(ptr_, std::align_val_t(kAlign));
        ptr_ = nullptr;
        cap_ = 0;
    }
    float* ptr_ = nullptr;
    size_t cap_ = 0;
};

struct ThreadBuffers {
    AlignedBuffer a, b;
    AlignedBuffer cw;      // fp32 workspace of a 16-bit C (the task's rows x one NC panel)
    AlignedBuffer biasw;   // the task's bias in virtual columns (a 16-bit one widened; fused segments' gathered)
    AlignedBuffer widen;   // 16-bit rows widened before a transposing pack (W x kc)
    AlignedBuffer straddle; // one segment's part of a micro-panel straddling fused segments (kc x NR)
    AlignedBuffer walk;     // the row-walking kernel's accumulators (m rows x one column chunk)
    AlignedBuffer tree;     // the tree reduction's slots (depth x the task's rows x one NC panel)
    AlignedBuffer row;      // one row of a 16-bit C widened (the tree reduction's final pass with beta != 0)
    alignas(kAlign) float tile[64 * 64];  // edge tile (MR x NR <= 64 x 64)
    alignas(kAlign) float bias[64];       // zero-padded bias of an edge tile (NR <= 64)
};

ThreadBuffers& thread_buffers() {
    thread_local ThreadBuffers tb;
    return tb;
}

// ================================================================================================
// The driver
// ================================================================================================

// Micro-panels of op(B) per streamed chunk (a task of one row block; see run_task): 8 x 32 columns x KC = 512 of
// fp32 is 512 KiB, which stays in L2 next to the A block (of 2..32 panels, 4 and 8 measured best on 32 x 4096 x
// 11008, 8 x 4096 x 4096 (f32 and bf16) and 32 x 4096 x 11008 NT; 8 by a few % on the quieter machine). inplace_rows: rows up to which an fp32 B stored as is (op(B) = B) is read in place, not packed:
// those the few-row kernel takes (rows_fn) where the kernel also has a few-row edge kernel for packed panels (the
// streamed, packed chunks run m = 7..14 faster than the in-place reads at a large stride: 8 x 4096 x 4096 about
// 1.4x), else up to MR. (A build with SW_GEMM_TUNING reads both from variables that a tuning tool sets between
// calls, 0 panels meaning no streaming; never the library.)
// small_b_inplace: an fp32 op(B) = B of at most SW_GEMM_SMALL_B bytes (k x n x 4, an L1 data cache) is read in
// place at any m: it stays in L1 across the row blocks, so packing it only adds a copy. Measured on the 2-core
// AVX-512 machine, interleaved against OpenBLAS: 64^3 (16 KiB) 0.80 -> 0.84 of OpenBLAS's time; at 128^3 (64 KiB)
// no difference showed through the noise, so the bound stays at one L1. Narrow micro-panels of such a B are still
// packed where the member has more rows than the masked few-row kernel takes (Seg::b_inplace_narrow).
#ifndef SW_GEMM_SMALL_B
#define SW_GEMM_SMALL_B 32768
#endif
inline bool small_b_inplace(const GemmProblem& p) {
    return static_cast<double>(p.k) * static_cast<double>(p.n) * 4.0 <= SW_GEMM_SMALL_B;
}
inline int64_t default_inplace_rows(const KernelInfo& ki) {
    return ki.rows_fn && ki.edge_rows_fn ? ki.rows_max : ki.mr;
}
#ifdef SW_GEMM_TUNING
} // namespace
int g_tune_stream_panels = 8, g_tune_inplace_rows = -1;
namespace {
inline int64_t stream_panels() { return g_tune_stream_panels; }
inline int64_t inplace_rows(const KernelInfo& ki) {
    return g_tune_inplace_rows < 0 ? default_inplace_rows(ki) : g_tune_inplace_rows;
}
#else
inline int64_t stream_panels() { return 8; }
inline int64_t inplace_rows(const KernelInfo& ki) { return default_inplace_rows(ki); }
#endif

// k blocks: nb = ceil(k / KC) blocks of nearly equal size (the first k % nb are one longer).
// Depends on k and the kernel's KC only (determinism rule 1). k == 0 gives one empty block.
struct KBlocks {
    int64_t nb, base, rem;
    KBlocks(int64_t k, int64_t kc_max) {
        nb = k == 0 ? 1 : ceil_div(k, kc_max);
        base = k / nb;
        rem = k % nb;
    }
    int64_t start(int64_t b) const { return b * base + std::min(b, rem); }
    int64_t size(int64_t b) const { return base + (b < rem ? 1 : 0); }
    int64_t max_size() const { return base + (rem ? 1 : 0); }
};

// The k blocks in k elements for a kernel whose k step covers `unit` elements (2 for the bf16 pair kernel,
// else 1): the ceil(k / unit) steps are cut as KBlocks with KC / unit, so every block but the last covers an
// even number of elements when unit == 2 (the last one may end with a half-filled, zero-padded pair).
// Still a function of k and the kernel only.
struct KSplit {
    KBlocks kb;
    int64_t k, unit;
    KSplit(int64_t k_, int64_t kc_max, int64_t unit_)
        : kb(ceil_div(k_, unit_), std::max<int64_t>(kc_max / unit_, 1)), k(k_), unit(unit_) {}
    int64_t nb() const { return kb.nb; }
    int64_t start(int64_t b) const { return kb.start(b) * unit; }                                  // elements
    int64_t size(int64_t b) const { return std::min(k, (kb.start(b) + kb.size(b)) * unit) - start(b); } // elements
    int64_t steps(int64_t b) const { return kb.size(b); }                                          // kernel steps
    int64_t max_steps() const { return kb.max_size(); }
};

// The TP-invariant tree reduction (GemmProblem::k_leaf > 0; sw_device_set_gemm_reduction): k is cut into leaves of
// k_leaf elements (the last one shorter), each leaf into kernel k blocks (KSplit of the leaf: one block where
// k_leaf <= KC), and the leaves' sums are combined by the fixed binary tree of core/tree_reduction.h, evaluated in leaf
// order on a stack of fp32 slots (each the task's rows x one NC panel): a leaf's value is pushed (its first block
// C = acc, later blocks C = fma(1, acc, C) = acc + C), then tree::merges times the two top slots are replaced by their
// sum. Where a leaf is one block and merges, its block adds straight into the top slot (fma(1, acc, top) = top + leaf:
// the same one addition). Every block runs with alpha 1, beta 0, no bias, no GeLU; after the last one a final pass
// applies, per element, v = alpha * T (beta == 0) or fma(alpha, T, beta * C), + bias, GeLU (the kernel's GeluFn), and
// rounds to C's type. Each element's chain and additions depend on its row, column, k and k_leaf only.
struct TreeStep {
    int64_t p0, kc, kk;  // the k block (elements, kernel steps)
    int32_t slot;        // the slot the block writes (mode kEpiBeta0) or adds into (kEpiAccum)
    int32_t mode;
    int32_t nmerge;      // merges after the block: slot[top - 1 - j] += slot[top - j] for j < nmerge
    int32_t top;
};

struct TreePlan {
    std::vector<TreeStep> steps;
    int depth = 0;  // slots
};

TreePlan plan_tree(int64_t k, int64_t leaf, int64_t kc_max, int64_t unit) {
    TreePlan tp;
    const int64_t n = k == 0 ? 0 : ceil_div(k, leaf);
    std::vector<int32_t> merges;
    tree::merges(n, merges);
    tp.depth = tree::depth(std::max<int64_t>(n, 1));
    if (n == 0) {
        tp.steps.push_back({0, 0, 0, 0, kEpiBeta0, 0, 0});
        return tp;
    }
    int32_t d = 0;
    for (int64_t l = 0; l < n; ++l) {
        const int64_t a = l * leaf, len = std::min(k, a + leaf) - a;
        const KSplit ks(len, kc_max, unit);
        const int32_t m = merges[static_cast<size_t>(l)];
        if (ks.nb() == 1 && m >= 1) {
            tp.steps.push_back({a, len, ks.steps(0), d - 1, kEpiAccum, m - 1, d - 1});
            d = d - m + 1;
            continue;
        }
        for (int64_t b = 0; b < ks.nb(); ++b) {
            const bool last = b == ks.nb() - 1;
            tp.steps.push_back({a + ks.start(b), ks.size(b), ks.steps(b), d, b == 0 ? kEpiBeta0 : kEpiAccum,
                                last ? m : 0, d});
        }
        d = d + 1 - m;
    }
    return tp;
}

// How the operands reach the micro-kernel.
enum class Path {
    F32,    // fp32 operands, packed (or read in place) as they are
    Widen,  // 16-bit A and B widened to fp32 while packing, the fp32 micro-kernel
    Pairs,  // bf16 A and B packed as pairs for the vdpbf16ps kernel
};

// One member's columns (a column segment) of a driver run: everything that belongs to op(B) and C. gemm() runs one
// segment; gemm_grouped() runs the members that share op(A) as the segments of one run, over concatenated
// ("virtual") columns: segment s owns virtual columns [v0, v0 + n). Segments are padded to NR on their own (v0 a
// multiple of NR, no micro-panel holds columns of two of them) except where a member's C continues the previous
// member's C in memory with the same ldc, type, alpha, beta, epilogue and bias presence (the column blocks of one Y
// in the sharded GEMM of virtual ranks): such segments are fused, v0 = the previous end, and a micro-panel that
// straddles the boundary is packed from both members' B (pack_b_straddle) and written by one kernel call into
// both members' C, with the bias gathered. Each element still gets the kernel's arithmetic on its own row, column
// and k: the same bits.
struct Seg {
    const GemmProblem* g;   // the member (op(B), C, alpha, beta, bias, epilogue)
    int64_t v0 = 0, n = 0;  // virtual columns [v0, v0 + n)
    int64_t run_end = 0;    // end of the fused run of segments this one belongs to (its own end when not fused)
    int64_t next = 0;       // the next segment's v0 (end() padded to NR, or end() when fused)
    bool fused = false;     // continues the previous segment (v0 == its end())
    PackFn pack_b = nullptr;
    bool b_inplace = false; // read B's full-width micro-panels in place (no packing)
    bool b_inplace_narrow = false; // also the narrow ones: every tile of the member has few enough rows for the
                                   // masked few-row kernel (m <= edge_rows_max) and the kernel has it
    // fp32 operands ...
    const float* b = nullptr;
    float* c = nullptr;          // also an fp32 C of 16-bit inputs
    const float* bias = nullptr;
    // ... 16-bit ones
    const uint16_t* b16 = nullptr;
    uint16_t* c16 = nullptr;     // a 16-bit C (computed in the fp32 workspace, rounded once)
    const uint16_t* bias16 = nullptr;
    WidenFn widen_c = nullptr;   // C's and the bias's 16-bit type -> fp32
    NarrowFn narrow_c = nullptr; // fp32 -> C's 16-bit type
    int64_t end() const { return v0 + n; }
};

// One driver run: op(A) (rows [0, m), k) times the segments' columns, cut into a tm x tn grid of tasks.
struct Ctx {
    const GemmProblem* g;        // op(A), m and k (the first member's; every member has the same)
    KernelInfo ki;
    PackFn pack_a;
    PackPanelsFn pack_b_panels;  // null if not available for NR
    KSplit kb;
    int64_t mt = 0, nt = 0;      // task rectangle (rows, virtual columns); tasks form a grid tm x tn
    int64_t tm = 1, tn = 1;
    Path path = Path::F32;
    const float* a = nullptr;
    const uint16_t* a16 = nullptr;
    WidenFn widen_in = nullptr;  // A and B's type -> fp32 (Path::Widen)
    const Seg* segs = nullptr;   // nsegs >= 1, in order of v0
    int nsegs = 0;
    int64_t nv = 0;              // virtual columns: segs[nsegs - 1].end()
    bool any_c16 = false, all_inplace = false;
    bool bias_virtual = false;   // tasks gather every bias into virtual columns (16-bit or fused segments' bias)
    TreePlan tree{};             // the tree reduction's k blocks (g->k_leaf > 0), else empty
    bool tree_root_last = false; // the tree's last k block writes the root itself (no merge after it: one leaf, or two)

    // The segment holding virtual column vj (vj < nv).
    const Seg& seg_at(int64_t vj) const {
        if (nsegs == 1) return segs[0];
        int lo = 0, hi = nsegs - 1;  // the last segment with v0 <= vj
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (segs[mid].v0 <= vj) lo = mid; else hi = mid - 1;
        }
        return segs[lo];
    }
};

// Edge tile: run the full micro-kernel on a temporary MR x NR tile holding the valid part of C.
void edge_tile(const Ctx& cx, ThreadBuffers& tb, int64_t kc, const float* ap, const float* bp,
               int64_t ldbp, float* c, int64_t ldc, int h, int w, const Epilogue& ep) {
    const int MR = cx.ki.mr, NR = cx.ki.nr;
    float* t = tb.tile;
    std::fill(t, t + MR * NR, 0.0f);
    if (ep.mode != kEpiBeta0)
        for (int r = 0; r < h; ++r) std::memcpy(t + r * NR, c + r * ldc, sizeof(float) * w);
    Epilogue e2 = ep;
    if (ep.bias) {
        std::fill(tb.bias, tb.bias + NR, 0.0f);
        std::memcpy(tb.bias, ep.bias, sizeof(float) * w);
        e2.bias = tb.bias;
    }
    // At most half the columns valid: the half-width kernel computes them with the same arithmetic.
    // Few rows: the kernel's few-row edge kernel where it has one (same arithmetic again).
    if (cx.ki.half_fn && 2 * w <= NR)
        cx.ki.half_fn(kc, ap, bp, ldbp, t, NR, e2, nullptr, nullptr);
    else if (cx.ki.edge_rows_fn && h <= cx.ki.edge_rows_max)
        cx.ki.edge_rows_fn(h, kc, ap, bp, ldbp, t, NR, e2);
    else
        cx.ki.fn(kc, ap, bp, ldbp, t, NR, e2, nullptr, nullptr);
    for (int r = 0; r < h; ++r) std::memcpy(c + r * ldc, t + r * NR, sizeof(float) * w);
}

// Packs the A micro-panel of rows [i, i + h) and k elements [p0, p0 + kc) (h <= MR) into dst.
void pack_a_panel(const Ctx& cx, ThreadBuffers& tb, float* dst, int64_t i, int64_t p0, int64_t kc, int h) {
    const GemmProblem& g = *cx.g;
    const int MR = cx.ki.mr;
    switch (cx.path) {
    case Path::F32:
        if (g.trans_a)
            cx.pack_a(dst, cx.a + p0 * g.lda + i, g.lda, kc, h);
        else
            cx.pack_a(dst, cx.a + i * g.lda + p0, g.lda, kc, h);
        return;
    case Path::Widen:
        if (g.trans_a) { // A stored k x m: each k step is a row segment of h elements
            for (int64_t p = 0; p < kc; ++p) {
                float* d = dst + p * MR;
                cx.widen_in(d, cx.a16 + (p0 + p) * g.lda + i, h);
                for (int r = h; r < MR; ++r) d[r] = 0.0f;
            }
        } else { // A stored m x k: widen the h rows, then the fp32 transposing pack
            float* s = tb.widen.get(static_cast<size_t>(h * kc));
            for (int r = 0; r < h; ++r) cx.widen_in(s + r * kc, cx.a16 + (i + r) * g.lda + p0, kc);
            cx.pack_a(dst, s, kc, kc, h);
        }
        return;
    case Path::Pairs:
        if (g.trans_a)
            cx.ki.pack_pairs_rows_mr(reinterpret_cast<uint32_t*>(dst), cx.a16 + p0 * g.lda + i, g.lda, kc, h);
        else
            cx.ki.pack_pairs_cols_mr(reinterpret_cast<uint32_t*>(dst), cx.a16 + i * g.lda + p0, g.lda, kc, h);
        return;
    }
}

// Packs op(B)[p0:p0+kc, j:j+nc] of one segment (member columns j.. of its own B) into NR-wide micro-panels of
// `steps` kernel k steps each at bpack (the full-width panels of a B stored as is row by row, then the partial
// one). Micro-panels read in place are skipped. pf > 0: the next pf columns of the member (the next streamed chunk)
// are prefetched towards L2 meanwhile, where the pack reads B row by row.
void pack_b_seg(const Ctx& cx, const Seg& s, ThreadBuffers& tb, float* bpack, int64_t jc, int64_t nc, int64_t p0,
                int64_t kc, int64_t steps, int64_t pf) {
    const GemmProblem& g = *s.g;
    const int NR = cx.ki.nr;
    int64_t jr_done = 0;
    if (cx.path == Path::F32 && !g.trans_b && !s.b_inplace && cx.pack_b_panels) {
        jr_done = (nc / NR) * NR;
        cx.pack_b_panels(bpack, s.b + p0 * g.ldb + jc, g.ldb, kc, nc / NR, nc % NR == 0 ? pf : 0);
    } else if (cx.path == Path::Widen && !g.trans_b) {
        jr_done = (nc / NR) * NR;
        const int64_t panels = nc / NR;
        for (int64_t p = 0; p < kc; ++p) {
            const uint16_t* src = s.b16 + (p0 + p) * g.ldb + jc;
            for (int64_t q = 0; q < pf; q += 32) __builtin_prefetch(src + nc + q, 0, 2);
            for (int64_t j = 0; j < panels; ++j) cx.widen_in(bpack + j * kc * NR + p * NR, src + j * NR, NR);
        }
    }
    for (int64_t jr = jr_done; jr < nc; jr += NR) {
        const int w = static_cast<int>(std::min<int64_t>(NR, nc - jr));
        if (s.b_inplace && (w == NR || s.b_inplace_narrow)) continue; // read in place (run_task)
        float* dst = bpack + (jr / NR) * steps * NR;
        const int64_t j = jc + jr;
        switch (cx.path) {
        case Path::F32:
            if (g.trans_b)
                s.pack_b(dst, s.b + j * g.ldb + p0, g.ldb, kc, w);
            else
                s.pack_b(dst, s.b + p0 * g.ldb + j, g.ldb, kc, w);
            break;
        case Path::Widen:
            if (g.trans_b) { // B stored n x k: widen the w rows, then the fp32 transposing pack
                float* t = tb.widen.get(static_cast<size_t>(w * kc));
                for (int c = 0; c < w; ++c) cx.widen_in(t + c * kc, s.b16 + (j + c) * g.ldb + p0, kc);
                s.pack_b(dst, t, kc, kc, w);
            } else {
                for (int64_t p = 0; p < kc; ++p) {
                    float* d = dst + p * NR;
                    cx.widen_in(d, s.b16 + (p0 + p) * g.ldb + j, w);
                    for (int c = w; c < NR; ++c) d[c] = 0.0f;
                }
            }
            break;
        case Path::Pairs:
            if (g.trans_b)
                cx.ki.pack_pairs_cols_nr(reinterpret_cast<uint32_t*>(dst), s.b16 + j * g.ldb + p0, g.ldb, kc, w);
            else
                cx.ki.pack_pairs_rows_nr(reinterpret_cast<uint32_t*>(dst), s.b16 + p0 * g.ldb + j, g.ldb, kc, w);
            break;
        }
    }
}

// Packs the micro-panel of virtual columns [vj, vj + w) that straddles fused segments: each segment's columns of it
// copied (widened) row by row straight into their columns where the k steps run along B's rows, else packed as a
// partial micro-panel by pack_b_seg into a scratch panel and copied into their columns (the same values as when the
// segment is packed alone either way); zero for w <= c < NR.
void pack_b_straddle(const Ctx& cx, ThreadBuffers& tb, float* dst, int64_t vj, int w, int64_t p0, int64_t kc,
                     int64_t steps) {
    const int NR = cx.ki.nr;
    float* t = tb.straddle.get(static_cast<size_t>(steps * NR));
    if (w < NR)
        for (int64_t q = 0; q < steps; ++q) std::fill(dst + q * NR + w, dst + q * NR + NR, 0.0f);
    for (int c0 = 0; c0 < w;) {
        const Seg& s = cx.seg_at(vj + c0);
        const int c1 = static_cast<int>(std::min<int64_t>(w, s.end() - vj));
        const GemmProblem& g = *s.g;
        const int64_t j = vj + c0 - s.v0;
        if (cx.path != Path::Pairs && !g.trans_b) {  // k steps along B's rows: straight into the columns
            for (int64_t p = 0; p < kc; ++p) {
                if (cx.path == Path::F32)
                    std::memcpy(dst + p * NR + c0, s.b + (p0 + p) * g.ldb + j,
                                sizeof(float) * static_cast<size_t>(c1 - c0));
                else
                    cx.widen_in(dst + p * NR + c0, s.b16 + (p0 + p) * g.ldb + j, c1 - c0);
            }
            c0 = c1;
            continue;
        }
        pack_b_seg(cx, s, tb, t, j, c1 - c0, p0, kc, steps, 0);
        for (int64_t q = 0; q < steps; ++q)
            std::memcpy(dst + q * NR + c0, t + q * NR, sizeof(float) * static_cast<size_t>(c1 - c0));
        c0 = c1;
    }
}

// Packs the B panel of virtual columns [jc, jc + nc) (jc a multiple of NR) and k elements [p0, p0 + kc): the
// micro-panels within one segment from its own B (pack_b_seg, several at once), those that straddle fused segments
// by pack_b_straddle (micro-panel jr / NR at bpack + that * steps * NR). pf > 0: prefetch up to pf columns past the
// panel (see pack_b_seg).
void pack_b_panel(const Ctx& cx, ThreadBuffers& tb, float* bpack, int64_t jc, int64_t nc, int64_t p0, int64_t kc,
                  int64_t steps, int64_t pf = 0) {
    if (kc == 0) return;
    const int NR = cx.ki.nr;
    for (int64_t jr = 0; jr < nc;) {
        const int64_t vj = jc + jr;
        const Seg& s = cx.seg_at(vj);
        const int64_t w = std::min<int64_t>({NR, s.run_end - vj, nc - jr});
        float* dst = bpack + (jr / NR) * steps * NR;
        if (vj + w > s.end()) {  // straddles into the next fused segment
            pack_b_straddle(cx, tb, dst, vj, static_cast<int>(w), p0, kc, steps);
            jr += NR;
            continue;
        }
        // The micro-panels from vj that lie within s: whole ones, and a last partial one where s ends its run or
        // the panel ends.
        const int64_t e = std::min(jc + nc, s.end());
        const int64_t len = (e == s.run_end || e == jc + nc) ? e - vj : ((e - vj) / NR) * NR;
        pack_b_seg(cx, s, tb, dst, vj - s.v0, len, p0, kc, steps, vj + len == jc + nc ? std::min(pf, s.end() - e) : 0);
        jr += round_up(len, NR);
    }
}

void run_task(const Ctx& cx, int64_t task) {
    const GemmProblem& g = *cx.g;
    const int MR = cx.ki.mr, NR = cx.ki.nr;
    const int64_t MC = cx.ki.mc, NC = cx.ki.nc;
    const int64_t ti = task / cx.tn, tj = task % cx.tn;
    const int64_t i0 = ti * cx.mt, i1 = std::min(g.m, i0 + cx.mt);
    const int64_t j0 = tj * cx.nt, j1 = std::min(cx.nv, j0 + cx.nt);  // virtual columns
    if (i0 >= i1 || j0 >= j1) return;

    ThreadBuffers& tb = thread_buffers();
    const bool tree = !cx.tree.steps.empty();  // the TP-invariant tree reduction (TreePlan)
    const int64_t nsteps = tree ? static_cast<int64_t>(cx.tree.steps.size()) : cx.kb.nb();
    int64_t kcmax = std::max<int64_t>(cx.kb.max_steps(), 1);
    if (tree)
        for (const TreeStep& ts : cx.tree.steps) kcmax = std::max(kcmax, ts.kk);
    // A task of one row block (skinny M: m <= MC) streams op(B): the NC panel is packed in chunks of a few
    // micro-panels (stream_panels()) right before every row tile uses them, so the packed chunk
    // stays in L2 instead of the whole panel going out to memory and being read back once per k block; a pack that
    // reads B row by row prefetches the next chunk's rows meanwhile. Same packed values, same kernels: the same bits.
    const bool stream_b = i1 - i0 <= MC && stream_panels() > 0;
    const int64_t chunk = !stream_b ? NC : NR * stream_panels();
    float* bpack = tb.b.get(static_cast<size_t>(kcmax * round_up(std::min({NC, chunk, j1 - j0}), NR)));
    float* apack = tb.a.get(static_cast<size_t>(kcmax * round_up(std::min(MC, i1 - i0), MR)));

    // A 16-bit C is computed in an fp32 workspace (the task's rows x one NC panel of virtual columns, row stride
    // ldw): every k block accumulates there in fp32, and the panel is rounded once after the last one. A 16-bit
    // bias is widened once (into the task's virtual columns).
    // The tree reduction's slots: the same layout, one plane per slot (slot 0 ends holding the root).
    const int64_t ldw = cx.any_c16 || tree ? round_up(std::min(NC, j1 - j0), 16) : 0;
    const int64_t plane = (i1 - i0) * ldw;
    float* ws = tree ? tb.tree.get(static_cast<size_t>(cx.tree.depth * plane))
                     : cx.any_c16 ? tb.cw.get(static_cast<size_t>(plane)) : nullptr;
    int32_t cur_slot = 0;  // the slot the current tree step writes
    // Tree: a segment with an fp32 C, alpha 1 and beta 0 keeps slot 0 (the root) in C itself: the final pass is then
    // only the bias and GeLU (in place), or nothing where the last k block writes the root and applies them in its
    // epilogue (fma(1, acc, C) + bias, or fma(1, acc, bias): the final pass's T + bias, one rounding; the kernels'
    // fused GeLU is their element-wise one).
    const auto root_c = [&](const Seg& s) { return tree && !s.c16 && s.g->alpha == 1.0f && s.g->beta == 0.0f; };
    float* biasw = nullptr;  // bias of virtual column vj at biasw + vj - j0 (cx.bias_virtual)
    for (int64_t vj = j0; cx.bias_virtual && vj < j1;) {
        const Seg& s = cx.seg_at(vj);
        const int64_t e = std::min(j1, s.end());
        if ((s.bias16 || s.bias) && vj < e) {
            if (!biasw) biasw = tb.biasw.get(static_cast<size_t>(j1 - j0));
            if (s.bias16)
                s.widen_c(biasw + (vj - j0), s.bias16 + (vj - s.v0), e - vj);
            else
                std::memcpy(biasw + (vj - j0), s.bias + (vj - s.v0), sizeof(float) * static_cast<size_t>(e - vj));
        }
        vj = s.next;
    }
    // The same for every segment piece [vj, e) of the virtual columns [jc, jc + nc).
    const auto for_pieces = [&](int64_t jc, int64_t nc, auto&& fn) {
        for (int64_t vj = jc; vj < jc + nc;) {
            const Seg& s = cx.seg_at(vj);
            const int64_t e = std::min(jc + nc, s.end());
            if (vj < e) fn(s, vj, e);
            vj = s.next;
        }
    };

    for (int64_t jc = j0; jc < j1; jc += NC) {
        const int64_t nc = std::min(NC, j1 - jc);
        // C(i, vj) of segment s: in its C, or at ws + (i - i0) * ldw + (vj - jc) for a 16-bit C (in the current slot
        // for the tree reduction).
        const auto cat = [&](const Seg& s, int64_t i, int64_t vj) -> float* {
            if (tree && cur_slot == 0 && root_c(s)) return s.c + i * s.g->ldc + (vj - s.v0);
            if (tree) return ws + cur_slot * plane + (i - i0) * ldw + (vj - jc);
            return s.c16 ? ws + (i - i0) * ldw + (vj - jc) : s.c + i * s.g->ldc + (vj - s.v0);
        };
        if (cx.any_c16 && !tree)
            for_pieces(jc, nc, [&](const Seg& s, int64_t vj, int64_t e) {
                if (!s.c16 || s.g->beta == 0.0f) return;
                for (int64_t i = i0; i < i1; ++i)
                    s.widen_c(ws + (i - i0) * ldw + (vj - jc), s.c16 + i * s.g->ldc + (vj - s.v0), e - vj);
            });

        for (int64_t kbi = 0; kbi < nsteps; ++kbi) {
            const TreeStep* ts = tree ? &cx.tree.steps[static_cast<size_t>(kbi)] : nullptr;
            const int64_t p0 = ts ? ts->p0 : cx.kb.start(kbi), kc = ts ? ts->kc : cx.kb.size(kbi),
                          kk = ts ? ts->kk : cx.kb.steps(kbi);
            const bool first = kbi == 0, last = !tree && kbi == cx.kb.nb() - 1;
            const bool fuse_root = tree && cx.tree_root_last && kbi == nsteps - 1; // (for root_c segments)
            if (ts) cur_slot = ts->slot;

            if (!stream_b) pack_b_panel(cx, tb, bpack, jc, nc, p0, kc, kk);

            for (int64_t ic = i0; ic < i1; ic += MC) {
                const int64_t mc = std::min(MC, i1 - ic);
                // Pack the A block op(A)[ic:ic+mc, p0:p0+kc] into MR-tall micro-panels (once for every segment).
                if (kc > 0) {
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int h = static_cast<int>(std::min<int64_t>(MR, mc - ir));
                        pack_a_panel(cx, tb, apack + (ir / MR) * kk * MR, ic + ir, p0, kc, h);
                    }
                }
                for (int64_t jq = 0; jq < nc; jq += chunk) {
                    const int64_t qn = std::min(chunk, nc - jq);  // this chunk: panel columns [jq, jq + qn)
                    // Streamed: pack the chunk (prefetching the next one of the task's columns).
                    if (stream_b)
                        pack_b_panel(cx, tb, bpack, jc + jq, qn, p0, kc, kk, std::min(chunk, j1 - (jc + jq + qn)));
                    const int64_t jb = stream_b ? jq : 0;  // panel column of bpack's first micro-panel
                    for (int64_t jr = jq; jr < jq + qn; jr += NR) {
                        const int64_t vj = jc + jr;
                        const Seg& s = cx.seg_at(vj);
                        const GemmProblem& sg = *s.g;
                        const int64_t seg_left = s.end() - vj;  // > 0: no micro-panel is all padding
                        const int64_t run_left = s.run_end - vj; // this micro-panel's columns on (fused ones too)
                        const bool in_c = tree && cur_slot == 0 && root_c(s);
                        const int64_t ldcw = in_c ? sg.ldc : s.c16 || tree ? ldw : sg.ldc;
                        const bool last_s = last || (fuse_root && in_c);
                        Epilogue ep;
                        ep.alpha = tree ? 1.0f : sg.alpha;
                        ep.beta = tree ? 0.0f : sg.beta;
                        ep.mode = ts ? ts->mode : !first ? kEpiAccum : (sg.beta == 0.0f ? kEpiBeta0 : kEpiBeta);
                        ep.gelu = last_s && sg.gelu();
                        const float* bias_j = nullptr;
                        if (last_s && (s.bias16 || s.bias))
                            bias_j = cx.bias_virtual ? biasw + (vj - j0) : s.bias + (vj - s.v0);
                        const int64_t bj = vj - s.v0;  // the member's own column
                        // Few rows with B in place: the wide few-row kernel where a full chunk remains.
                        if (s.b_inplace && kc > 0 && cx.ki.rows_fn && mc <= cx.ki.rows_max &&
                            std::min({jq + qn - jr, seg_left}) >= cx.ki.rows_nr) {
                            ep.bias = bias_j;
                            cx.ki.rows_fn(static_cast<int>(mc), kc, apack, s.b + p0 * sg.ldb + bj, sg.ldb,
                                          cat(s, ic, vj), ldcw, ep);
                            jr += cx.ki.rows_nr - NR;
                            continue;
                        }
                        const int w = static_cast<int>(std::min<int64_t>(NR, run_left));
                        const float* bp;
                        int64_t ldbp;
                        // In place: a full-width micro-panel, or (with the masked few-row kernel) a narrow one that
                        // ends its segment.
                        if (s.b_inplace && kc > 0 &&
                            ((w == NR && seg_left >= NR) || (w < NR && w <= seg_left && s.b_inplace_narrow))) {
                            bp = s.b + p0 * sg.ldb + bj;
                            ldbp = sg.ldb;
                        } else {
                            bp = bpack + ((jr - jb) / NR) * kk * NR;
                            ldbp = NR;
                        }
                        ep.bias = bias_j;
                        // Prefetch hints: the packed B micro-panel used after this one (the next jr, or
                        // the first one again for the next ic block), an eighth of it per call; and
                        // the C tile of the next call when that is a full tile (of the same segment).
                        const float* bnext = nullptr;
                        if (ldbp == NR && kk > 0)
                            bnext = (jr + NR < jq + qn) ? bp + kk * NR : (stream_b ? nullptr : bpack);
                        const int64_t pf_chunk = (kk / 4) * 16;  // floats the kernel prefetches per call
                        for (int64_t ir = 0, call = 0; ir < mc; ir += MR, ++call) {
                            const int h = static_cast<int>(std::min<int64_t>(MR, mc - ir));
                            const float* ap = apack + (ir / MR) * kk * MR;
                            float* cp = cat(s, ic + ir, vj);
                            if (h == MR && w == NR) {
                                const float* pf_b = bnext ? bnext + (call % 8) * pf_chunk : nullptr;
                                const float* pf_c = nullptr;
                                if (ir + 2 * MR <= mc)
                                    pf_c = cp + MR * ldcw;                   // tile below
                                else if (jr + 2 * NR <= nc && run_left >= 2 * NR && mc >= MR)
                                    pf_c = cat(s, ic, vj + NR);              // top of next column
                                cx.ki.fn(kk, ap, bp, ldbp, cp, ldcw, ep, pf_b, pf_c);
                            } else if (w == NR && cx.ki.edge_rows_fn && h <= cx.ki.edge_rows_max) {
                                ep.bias = bias_j;  // few rows of a full-width tile: straight into C
                                cx.ki.edge_rows_fn(h, kk, ap, bp, ldbp, cp, ldcw, ep);
                            } else if (w < NR && cx.ki.edge_rows_masked_fn && h <= cx.ki.edge_rows_max) {
                                ep.bias = bias_j;  // few rows of a narrow tile: straight into C, B maybe in place
                                cx.ki.edge_rows_masked_fn(h, w, kk, ap, bp, ldbp, cp, ldcw, ep);
                            } else {
                                edge_tile(cx, tb, kk, ap, bp, ldbp, cp, ldcw, h, w, ep);
                            }
                        }
                    }
                }
                // Tree: the nodes that complete with this leaf, over the block's rows (just written, still cached).
                for (int32_t j = 0; ts && j < ts->nmerge; ++j) {
                    const int32_t lo_slot = ts->top - 1 - j;
                    const float* hi = ws + (ts->top - j) * plane + (ic - i0) * ldw;
                    if (lo_slot == 0) { // slot 0 lives in C for the root_c segments
                        for_pieces(jc, nc, [&](const Seg& s, int64_t vj, int64_t e) {
                            for (int64_t r = 0; r < mc; ++r) {
                                float* lo = root_c(s) ? s.c + (ic + r) * s.g->ldc + (vj - s.v0) : ws + (ic - i0 + r) * ldw + (vj - jc);
                                const float* h = hi + r * ldw + (vj - jc);
                                for (int64_t c = 0; c < e - vj; ++c) lo[c] = lo[c] + h[c];
                            }
                        });
                        continue;
                    }
                    float* lo = ws + lo_slot * plane + (ic - i0) * ldw;
                    for (int64_t r = 0; r < mc; ++r)
                        for (int64_t c = 0; c < nc; ++c) lo[r * ldw + c] = lo[r * ldw + c] + hi[r * ldw + c];
                }
            }
        }
        // Tree: the root (slot 0) through alpha, beta, the bias and GeLU into C, rounded once to C's type.
        if (tree)
            for_pieces(jc, nc, [&](const Seg& s, int64_t vj, int64_t e) {
                const GemmProblem& sg = *s.g;
                const int64_t w = e - vj;
                const float* bias = nullptr;
                if (s.bias16 || s.bias) bias = cx.bias_virtual ? biasw + (vj - j0) : s.bias + (vj - s.v0);
                const float alpha = sg.alpha, beta = sg.beta;
                if (root_c(s)) { // the root is in C: the bias and GeLU in place, unless the last k block applied them
                    if (cx.tree_root_last || (!bias && !sg.gelu())) return;
                    for (int64_t i = i0; i < i1; ++i) {
                        float* out = s.c + i * sg.ldc + (vj - s.v0);
                        if (bias)
                            for (int64_t c = 0; c < w; ++c) out[c] = out[c] + bias[c];
                        if (sg.gelu()) {
                            if (cx.ki.gelu) cx.ki.gelu(out, out, w);
                            else for (int64_t c = 0; c < w; ++c) out[c] = gelu_tanh(out[c]);
                        }
                    }
                    return;
                }
                for (int64_t i = i0; i < i1; ++i) {
                    const float* t = ws + (i - i0) * ldw + (vj - jc);
                    uint16_t* c16 = s.c16 ? s.c16 + i * sg.ldc + (vj - s.v0) : nullptr;
                    float* out = c16 ? tb.row.get(static_cast<size_t>(w)) : s.c + i * sg.ldc + (vj - s.v0);
                    if (beta == 0.0f) {
                        for (int64_t c = 0; c < w; ++c) out[c] = alpha * t[c];
                    } else {
                        if (c16) s.widen_c(out, c16, w);
                        for (int64_t c = 0; c < w; ++c) out[c] = std::fma(alpha, t[c], beta * out[c]);
                    }
                    if (bias)
                        for (int64_t c = 0; c < w; ++c) out[c] = out[c] + bias[c];
                    if (sg.gelu()) {
                        if (cx.ki.gelu) cx.ki.gelu(out, out, w);
                        else for (int64_t c = 0; c < w; ++c) out[c] = gelu_tanh(out[c]);
                    }
                    if (c16) s.narrow_c(c16, out, w);
                }
            });
        // The 16-bit C panels: rounded once, after the last k block, bias and GeLU.
        else if (cx.any_c16)
            for_pieces(jc, nc, [&](const Seg& s, int64_t vj, int64_t e) {
                if (!s.c16) return;
                for (int64_t i = i0; i < i1; ++i)
                    s.narrow_c(s.c16 + i * s.g->ldc + (vj - s.v0), ws + (i - i0) * ldw + (vj - jc), e - vj);
            });
    }
}

// Cost model of the split, in units of "one flop of the micro-kernel" (about 3 ps on one core).
// (Overridable at compile time for tuning experiments only.)
#ifndef SW_GEMM_PACK_COST
#define SW_GEMM_PACK_COST 80.0
#endif
#ifndef SW_GEMM_STRAGGLER
#define SW_GEMM_STRAGGLER 0.05
#endif
constexpr double kPackCost = SW_GEMM_PACK_COST;  // packing one element (read op(A)/op(B), write it)
constexpr double kTaskOverhead = 1e6;            // one task: claiming it, waking a thread, cold caches
constexpr double kMinTaskFlops = 1e6;            // smaller problems run as a single task
constexpr double kStraggler = SW_GEMM_STRAGGLER; // expected lateness of the slowest thread (in tasks)

// Chooses the task grid: tm x tn tasks of mt x nt (multiples of MR / NR). Minimises the estimated
// makespan (ceil(T / P) + kStraggler) * cost(task), where a task's cost is its micro-kernel flops plus
// the packing of its A rows and B columns (so tasks should be large and square-ish) plus a fixed
// overhead (so tiny problems stay in one task). The straggler term favours a few more, smaller
// tasks when they cost little extra packing: threads that share a machine do not all run at the same
// Chooses the task grid: tm x tn tasks of mt x nt (multiples of MR / NR). Minimises the estimated
// makespan (ceil(T / P) + kStraggler) * cost(task), where a task's cost is its micro-kernel flops plus
// the packing of its A rows and B columns (so tasks should be large and square-ish) plus a fixed
// overhead (so tiny problems stay in one task). The straggler term favours a few more, smaller
// tasks when they cost little extra packing: threads that share a machine do not all run at the same
// speed. At most 4P tasks. Any split gives the same bits (determinism contract). The columns are the
// virtual ones (cx.nv; a grouped run's segments are NR-aligned, so its NR tiles are ceil(nv / NR)).
void plan_tasks(Ctx& cx, int P) {
    const GemmProblem& g = *cx.g;
    const int64_t MR = cx.ki.mr, NR = cx.ki.nr;
    const int64_t n = cx.nv;
    const double kk = static_cast<double>(std::max<int64_t>(g.k, 1));
    const int64_t mtiles = ceil_div(g.m, MR), ntiles = ceil_div(n, NR);
    const int64_t max_tasks = std::max<int64_t>(1, 4 * static_cast<int64_t>(P));

    double best = -1.0;
    for (int64_t tm = 1; tm <= std::min(mtiles, max_tasks); ++tm) {
        const int64_t mt = ceil_div(mtiles, tm) * MR;
        if (ceil_div(g.m, mt) != tm) continue;  // same split as a smaller tm
        for (int64_t tn = 1; tn <= std::min(ntiles, max_tasks / tm); ++tn) {
            const int64_t nt = ceil_div(ntiles, tn) * NR;
            if (ceil_div(n, nt) != tn) continue;
            const double T = static_cast<double>(tm * tn);
            const double task_flops = 2.0 * static_cast<double>(mt) * static_cast<double>(nt) * kk;
            if (T > 1 && task_flops < kMinTaskFlops) continue;  // not worth waking another thread
            const double rows = static_cast<double>(std::min(mt, g.m));
            const double cols = static_cast<double>(std::min(nt, n));
            const double a_packs = static_cast<double>(ceil_div(std::min(nt, n), cx.ki.nc));
            const double b_pack = cx.all_inplace ? 0.1 : 1.0;
            const double cost = task_flops + kPackCost * (rows * a_packs + cols * b_pack) * kk + kTaskOverhead;
            const double makespan = (std::ceil(T / P) + (T > 1 ? kStraggler : 0.0)) * cost;
            // On (near) ties keep the fewer, larger tasks (less packing).
            if (best < 0.0 || makespan < best * 0.995) {
                best = makespan;
                cx.mt = mt;
                cx.nt = nt;
                cx.tm = tm;
                cx.tn = tn;
            }
        }
    }
}

// The kernel a problem runs (a kernel this CPU cannot run is replaced by the best supported one) and its path.
struct Choice {
    KernelInfo ki;
    Path path;
};

Choice choose(const GemmProblem& p, Kernel kernel) {
    const Kernel k = resolve_kernel(kernel_supported(kernel) ? kernel : Kernel::Auto);
    if (p.a_type == SW_DTYPE_F32) return {kernel_info(k), Path::F32};
    const bool pairs = k == Kernel::Avx512Bf16 && p.a_type == SW_DTYPE_BF16;
    return {pairs ? kernel_info_avx512bf16() : kernel_info(k), pairs ? Path::Pairs : Path::Widen};
}

// The run of members[0..count) (all sharing op(A), m and k) as the segments segs[0..count) (filled here).
Ctx make_ctx(const GemmProblem* const* members, int count, Seg* segs, const Choice& ch) {
    const GemmProblem& a = *members[0];
    const KernelInfo& ki = ch.ki;
    // op(A) = A and op(B) = B^T need transposing packs: the kernel's SIMD version where it has one. (Widened
    // panels are packed from fp32 rows, copy or transposing pack, as for fp32 operands.)
    PackFn pack_a = pack_fn(ki.mr, !a.trans_a);
    if (!a.trans_a && ki.pack_trans_mr) pack_a = ki.pack_trans_mr;
    const PackPanelsFn panels = ki.pack_panels_nr ? ki.pack_panels_nr : pack_panels_fn(ki.nr);
    Ctx cx{&a, ki, pack_a, ch.path != Path::F32 ? nullptr : panels,
           KSplit(a.k, ki.kc, ch.path == Path::Pairs ? 2 : 1)};
    cx.path = ch.path;
    if (a.k_leaf > 0) {
        cx.tree = plan_tree(a.k, a.k_leaf, ki.kc, ch.path == Path::Pairs ? 2 : 1);
        cx.tree_root_last = cx.tree.steps.back().nmerge == 0 && cx.tree.steps.back().slot == 0;
    }
    cx.a = static_cast<const float*>(a.a);
    cx.a16 = static_cast<const uint16_t*>(a.a);
    cx.widen_in = a.a_type == SW_DTYPE_BF16 ? ki.widen_bf16 : ki.widen_f16;
    cx.segs = segs;
    cx.nsegs = count;
    cx.all_inplace = true;
    int64_t v0 = 0;
    // Member p continues member q's columns (see Seg): fused.
    const auto continues = [](const GemmProblem& q, const GemmProblem& p) {
        const size_t es = q.c_type == SW_DTYPE_F32 ? 4 : 2;
        return p.c_type == q.c_type && p.ldc == q.ldc && p.alpha == q.alpha && p.beta == q.beta &&
               p.epilogue == q.epilogue && (p.bias == nullptr) == (q.bias == nullptr) &&
               static_cast<const char*>(p.c) == static_cast<const char*>(q.c) + static_cast<size_t>(q.n) * es;
    };
    for (int i = 0; i < count; ++i) {
        const GemmProblem& p = *members[i];
        Seg& s = segs[i];
        s = Seg{};
        s.g = &p;
        s.b_inplace = ch.path == Path::F32 && !p.trans_b && p.k > 0 &&
                      (p.m <= inplace_rows(ki) || small_b_inplace(p));
        s.b_inplace_narrow = s.b_inplace && ki.edge_rows_masked_fn && p.m <= ki.edge_rows_max;
        // Not fused where both read their narrow micro-panels in place with the masked few-row kernel: each
        // member's narrow last micro-panel is then read in place too (a straddling one would be packed from both).
        s.fused = i > 0 && continues(*members[i - 1], p) && !(s.b_inplace_narrow && segs[i - 1].b_inplace_narrow);
        if (s.fused) {
            v0 = segs[i - 1].end();
            segs[i - 1].next = v0;
            cx.bias_virtual = cx.bias_virtual || p.bias != nullptr;
        }
        s.v0 = v0;
        s.n = p.n;
        s.next = round_up(s.v0 + p.n, ki.nr);  // (a fused run starts at a multiple of NR)
        v0 = s.next;
        s.pack_b = pack_fn(ki.nr, p.trans_b);
        if (p.trans_b && ki.pack_trans_nr) s.pack_b = ki.pack_trans_nr;
        cx.all_inplace = cx.all_inplace && s.b_inplace;
        if (ch.path == Path::F32) s.b = static_cast<const float*>(p.b);
        else s.b16 = static_cast<const uint16_t*>(p.b);
        if (p.c_type == SW_DTYPE_F32) {
            s.c = static_cast<float*>(p.c);
            s.bias = static_cast<const float*>(p.bias);
        } else {
            s.c16 = static_cast<uint16_t*>(p.c);
            s.bias16 = static_cast<const uint16_t*>(p.bias);
            cx.bias_virtual = cx.bias_virtual || p.bias != nullptr;
            s.widen_c = p.c_type == SW_DTYPE_BF16 ? ki.widen_bf16 : ki.widen_f16;
            s.narrow_c = p.c_type == SW_DTYPE_BF16 ? ki.narrow_bf16 : ki.narrow_f16;
            cx.any_c16 = true;
        }
    }
    for (int i = count - 1; i >= 0; --i)
        segs[i].run_end = i + 1 < count && segs[i + 1].fused ? segs[i + 1].run_end : segs[i].end();
    cx.nv = segs[count - 1].end();
    return cx;
}

} // namespace

void sgemm(const GemmProblem& args, Kernel kernel, ThreadPool& pool) { gemm(args, kernel, pool); }

// Skinny M: the row-walking kernels (KernelInfo::walk_fn for fp32, walk_pairs_fn for the bf16 pair path) where B is
// stored as is and too large for the caches, so that reading it once at full speed is the whole cost. The columns are
// cut into one range per thread, each range into chunks whose accumulators (m rows) stay in L1; every chunk runs the k
// blocks of the packed path (same KSplit, same epilogue modes; a 16-bit C accumulated in an fp32 chunk and rounded
// once, as the packed path's workspace), so each element of C gets the bits of the packed path. (Measured on 1, 8 and
// 32 x 4096 x 4096 and x 11008 against the packed path and oneDNN: README, "Performance"; kernel choices in
// gemm_kernel_avx512.cpp.)
#ifndef SW_WALK_ROWS_MAX
#define SW_WALK_ROWS_MAX 16
#endif
constexpr int64_t kWalkRowsMax = SW_WALK_ROWS_MAX;
// The bf16 pair walk up to 32 rows: gemm16_bench, 2 threads, 9 rounds, oneDNN bf16 matmul's time / ours at
// 32 x 4096 x 11008: walked 1.22 [1.18, 1.30], packed 1.01 [0.95, 1.04] (vdpbf16ps does two k steps per
// instruction, so the rows stay cheap next to reading B for longer than fp32's FMAs do).
#ifndef SW_WALK_PAIRS_ROWS_MAX
#define SW_WALK_PAIRS_ROWS_MAX 32
#endif
constexpr int64_t kWalkPairsRowsMax = SW_WALK_PAIRS_ROWS_MAX;
static_assert(kWalkPairsRowsMax <= 32, "the pair walk packs A's rows as the columns of one NR = 32 pair micro-panel");
constexpr double kWalkMinBBytes = 4.0 * 1024 * 1024;

// The shape and types alone (cheap: tested before the kernel is chosen): fp32 A, B and C, or bf16 A and B with any C
// (fp32 or 16-bit) ...
bool walk_shape(const GemmProblem& p) {
    const bool f32 = p.a_type == SW_DTYPE_F32 && p.b_type == SW_DTYPE_F32 && p.c_type == SW_DTYPE_F32;
    const bool bf16 = p.a_type == SW_DTYPE_BF16 && p.b_type == SW_DTYPE_BF16;
    const double es = f32 ? 4.0 : 2.0;
    return (f32 || bf16) && p.k_leaf == 0 && !p.trans_b && p.m >= 1 && p.m <= (bf16 ? kWalkPairsRowsMax : kWalkRowsMax) && p.k > 0 && p.n >= 16 &&
           es * static_cast<double>(p.k) * static_cast<double>(p.n) >= kWalkMinBBytes;
}
// ... and with the chosen kernel (a bf16 problem walks where its kernel is the pair kernel).
bool walk_applies(const GemmProblem& p, const Choice& ch) {
    return walk_shape(p) && ((ch.path == Path::F32 && ch.ki.walk_fn) || (ch.path == Path::Pairs && ch.ki.walk_pairs_fn));
}

// Walks the members' columns, concatenated, cut into one range per thread (a range may span members); every member
// with the k blocks and epilogue of its own packed path. (Measured on the p = 2..8 sharded 1 x 4096 x 4096 of virtual
// ranks: 1.01..1.13x the unsharded time; cutting each member's columns into one range per thread instead, the threads
// side by side on every shard's rows, 1.01..1.31x: shorter runs along the rows.) Every member has ch's path.
void walk_gemm(const GemmProblem* const* members, int32_t count, const Choice& ch, ThreadPool& pool) {
    struct Job {
        const GemmProblem* const* members;
        int32_t count;
        const KernelInfo* ki;
        bool pairs;
        int64_t per, total;
    } job{members, count, &ch.ki, ch.path == Path::Pairs, 0, 0};
    for (int32_t i = 0; i < count; ++i) job.total += members[i]->n;
    const int64_t threads = std::max(pool.size(), 1);
    job.per = round_up(ceil_div(job.total, threads), 32);
    const int64_t tasks = ceil_div(job.total, job.per);
    const Job* pj = &job;
    pool.parallel_for(tasks, [pj](int64_t t) {
        const KernelInfo& ki = *pj->ki;
        const int64_t v0 = t * pj->per, v1 = std::min(pj->total, v0 + pj->per);
        ThreadBuffers& tb = thread_buffers();
        int64_t base = 0; // the member's first virtual column
        for (int32_t i = 0; i < pj->count && base < v1; base += pj->members[i]->n, ++i) {
            const GemmProblem& g = *pj->members[i];
            const int64_t j0 = std::max<int64_t>(v0 - base, 0), j1 = std::min(g.n, v1 - base);
            if (j0 >= j1) continue;
            const KSplit kb(g.k, ki.kc, pj->pairs ? 2 : 1);
            // Columns per chunk: m rows of accumulators in about 32 KiB (L1), 64..2048 columns.
            const int64_t cw = std::clamp<int64_t>((8192 / g.m) / 32 * 32, 64, 2048);
            const int64_t a_rs = g.trans_a ? 1 : g.lda, a_ps = g.trans_a ? g.lda : 1;
            const bool c16 = g.c_type != SW_DTYPE_F32;
            const WidenFn widen_c = g.c_type == SW_DTYPE_BF16 ? ki.widen_bf16 : ki.widen_f16;
            float* acc = tb.walk.get(static_cast<size_t>(g.m * cw));
            // A 16-bit C: the chunk's rows in fp32 (ldw = cw), and its bias widened.
            float* cwk = c16 ? tb.cw.get(static_cast<size_t>(g.m * cw)) : nullptr;
            float* bw = c16 && g.bias ? tb.biasw.get(static_cast<size_t>(cw)) : nullptr;
            // The pair path: the k block's pair words of A, m rows of steps words.
            uint32_t* apairs = nullptr;
            const int h = static_cast<int>(g.m);
            for (int64_t jc = j0; jc < j1; jc += cw) {
                const int64_t w = std::min(cw, j1 - jc);
                if (c16) {
                    if (g.beta != 0.0f)
                        for (int64_t r = 0; r < g.m; ++r)
                            widen_c(cwk + r * cw, static_cast<const uint16_t*>(g.c) + r * g.ldc + jc, w);
                    if (bw) widen_c(bw, static_cast<const uint16_t*>(g.bias) + jc, w);
                }
                for (int64_t kbi = 0; kbi < kb.nb(); ++kbi) {
                    const int64_t p0 = kb.start(kbi), kc = kb.size(kbi);
                    const bool first = kbi == 0, last = kbi == kb.nb() - 1;
                    Epilogue ep;
                    ep.alpha = g.alpha;
                    ep.beta = g.beta;
                    ep.mode = !first ? kEpiAccum : (g.beta == 0.0f ? kEpiBeta0 : kEpiBeta);
                    ep.gelu = last && g.gelu();
                    float* c = c16 ? cwk : static_cast<float*>(g.c) + jc;
                    const int64_t ldc = c16 ? cw : g.ldc;
                    if (!pj->pairs) {
                        const auto* a = static_cast<const float*>(g.a);
                        const auto* bias = static_cast<const float*>(g.bias);
                        ep.bias = last && bias ? bias + jc : nullptr;
                        ki.walk_fn(h, kc, a + p0 * a_ps, a_rs, a_ps, static_cast<const float*>(g.b) + p0 * g.ldb + jc,
                                   g.ldb, w, acc, cw, c, ldc, ep);
                        continue;
                    }
                    // A's pair words for this block, packed as the packed path packs B's micro-panels (the NR-wide
                    // pair pack, rows of A as its columns: a(r, q) at apairs[q * NR + r]); once per block of the
                    // first chunk (cheap: m x kc), reused by the others.
                    if (jc == j0 || kb.nb() > 1) {
                        apairs = reinterpret_cast<uint32_t*>(tb.widen.get(static_cast<size_t>(ceil_div(kc, 2) * ki.nr)));
                        const auto* a16 = static_cast<const uint16_t*>(g.a);
                        if (g.trans_a) // A stored k x m: the k steps along its rows
                            ki.pack_pairs_rows_nr(apairs, a16 + p0 * g.lda, g.lda, kc, h);
                        else
                            ki.pack_pairs_cols_nr(apairs, a16 + p0, g.lda, kc, h);
                    }
                    if (c16)
                        ep.bias = last ? bw : nullptr;
                    else
                        ep.bias = last && g.bias ? static_cast<const float*>(g.bias) + jc : nullptr;
                    ki.walk_pairs_fn(h, kc, apairs, ki.nr, static_cast<const uint16_t*>(g.b) + p0 * g.ldb + jc, g.ldb,
                                     w, acc, cw, c, ldc, ep);
                }
                if (c16) {
                    const NarrowFn narrow = g.c_type == SW_DTYPE_BF16 ? ki.narrow_bf16 : ki.narrow_f16;
                    for (int64_t r = 0; r < g.m; ++r)
                        narrow(static_cast<uint16_t*>(g.c) + r * g.ldc + jc, cwk + r * cw, w);
                }
            }
        }
    });
}

void gemm(const GemmProblem& args, Kernel kernel, ThreadPool& pool) {
    if (args.m <= 0 || args.n <= 0) return;
    const Choice ch = choose(args, kernel);
    if (walk_applies(args, ch)) {
        const GemmProblem* one = &args;
        walk_gemm(&one, 1, ch, pool);
        return;
    }
    const GemmProblem* member = &args;
    Seg seg;
    Ctx cx = make_ctx(&member, 1, &seg, ch);
    plan_tasks(cx, pool.size());
    const int64_t ntasks = cx.tm * cx.tn;
    const Ctx* pcx = &cx;
    // The lambda captures one pointer: std::function stores it without allocating.
    pool.parallel_for(ntasks, [pcx](int64_t t) { run_task(*pcx, t); });
}

// Members that share op(A) (same pointer, type, transpose, lda, m and k: the same packed A blocks) form one run whose
// segments are their columns; the runs' tasks go to the pool as one job. Each member's columns see exactly what
// gemm() would give them (same kernel, path, k blocks, packed values and epilogue: determinism contract), so its C
// is bit for bit gemm(problems[i])'s.
void gemm_grouped(const GemmProblem* problems, int32_t count, Kernel kernel, ThreadPool& pool) {
    // Every member a skinny GEMM over a large B stored as is (the virtual ranks' shards of a decode-size step): the
    // members' columns walked as one job (walk_gemm), each as gemm() would walk it alone. Packing X once saves nothing.
    bool all_walk = count > 0 && count <= 64;
    for (int32_t i = 0; i < count && all_walk; ++i) // (small calls stop here)
        all_walk = walk_shape(problems[i]) && problems[i].a_type == problems[0].a_type;
    Choice walk_choice{};
    if (all_walk) {
        walk_choice = choose(problems[0], kernel); // one input type: the same kernel and path for every member
        all_walk = walk_applies(problems[0], walk_choice);
    }
    if (all_walk) {
        const GemmProblem* list[64];
        for (int32_t i = 0; i < count; ++i) list[i] = &problems[i];
        walk_gemm(list, count, walk_choice, pool);
        return;
    }
    // Per-thread scratch, reused: steady-state calls do not allocate. (The pool threads read it through the
    // pointers below while this thread waits in parallel_for.)
    struct Scratch {
        std::vector<const GemmProblem*> order;  // members grouped by op(A), each group in member order
        std::vector<int> starts;                // group g: order[starts[g] .. starts[g + 1])
        std::vector<char> taken;
        std::vector<Seg> segs;
        std::vector<Ctx> runs;
        std::vector<int64_t> first_task;        // run g's tasks: [first_task[g], first_task[g + 1])
    };
    thread_local Scratch sc;
    sc.order.clear();
    sc.starts.clear();
    sc.taken.assign(static_cast<size_t>(count), 0);
    const auto same_a = [](const GemmProblem& x, const GemmProblem& y) {
        return x.a == y.a && x.a_type == y.a_type && x.trans_a == y.trans_a && x.lda == y.lda && x.m == y.m &&
               x.k == y.k && x.k_leaf == y.k_leaf;
    };
    for (int32_t i = 0; i < count; ++i) {
        if (sc.taken[static_cast<size_t>(i)] || problems[i].m <= 0 || problems[i].n <= 0) continue;
        sc.starts.push_back(static_cast<int>(sc.order.size()));
        for (int32_t j = i; j < count; ++j) {
            if (sc.taken[static_cast<size_t>(j)] || problems[j].n <= 0 || !same_a(problems[i], problems[j])) continue;
            sc.taken[static_cast<size_t>(j)] = 1;
            sc.order.push_back(&problems[j]);
        }
    }
    const int ngroups = static_cast<int>(sc.starts.size());
    if (ngroups == 0) return;
    sc.starts.push_back(static_cast<int>(sc.order.size()));

    sc.segs.resize(sc.order.size());
    sc.runs.clear();
    sc.first_task.assign(static_cast<size_t>(ngroups) + 1, 0);
    for (int gi = 0; gi < ngroups; ++gi) {
        const int b = sc.starts[static_cast<size_t>(gi)], e = sc.starts[static_cast<size_t>(gi) + 1];
        sc.runs.push_back(make_ctx(sc.order.data() + b, e - b, sc.segs.data() + b,
                                   choose(*sc.order[static_cast<size_t>(b)], kernel)));
        plan_tasks(sc.runs.back(), pool.size());
        sc.first_task[static_cast<size_t>(gi) + 1] =
            sc.first_task[static_cast<size_t>(gi)] + sc.runs.back().tm * sc.runs.back().tn;
    }
    const Scratch* psc = &sc;
    // The lambda captures one pointer: std::function stores it without allocating.
    pool.parallel_for(sc.first_task.back(), [psc](int64_t t) {
        const auto it = std::upper_bound(psc->first_task.begin(), psc->first_task.end(), t);
        const size_t gi = static_cast<size_t>(it - psc->first_task.begin()) - 1;
        run_task(psc->runs[gi], t - psc->first_task[gi]);
    });
}

} // namespace sw::cpu
