// Element-wise and data-movement kernels of the CUDA plugin: copy_2d (layout), reduce_sum (source or tree order),
// convert, scale/bias/GeLU epilogue and the stream wait-flag kernel. Launchers return the launch status; their
// arguments were validated by the caller (see common.h).
// The whole file also compiles for the host emulation test (SW_CUDA_HOST_EMULATION: native/tests/cuda_emu/
// kernels_emu_check.cpp), which runs these launchers and kernels on emulated threads.
#include "cuda/common.h"
#include "cuda/gelu.cuh"
#include "cuda/launch.cuh"
#include "cuda/ptx.cuh"
#include "cuda/tree_order.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace sw::cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops: enough blocks to fill any current GPU several times over, few enough to stay cheap.
constexpr int64_t kMaxBlocks = 4096;

inline unsigned blocks_for(uint64_t work, int64_t per_block = kThreads) {
    const uint64_t b = (work + static_cast<uint64_t>(per_block) - 1) / static_cast<uint64_t>(per_block);
    return static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(b, kMaxBlocks)));
}

// ------------------------------------------------------------------------------------------ element access
// 16-bit types are handled as raw bits (uint16_t) in memory and converted with the CUDA intrinsics, which
// round to nearest even (the *_rn variants).
struct F16 {};
struct BF16 {};

template <class T> struct Storage { using type = T; };
template <> struct Storage<F16> { using type = uint16_t; };
template <> struct Storage<BF16> { using type = uint16_t; };

// Compute type: float for f32/f16/bf16, double for f64.
template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float f16_bits_to_float(uint16_t h) { return ptx::bits_to_float<false>(h); }
__device__ __forceinline__ uint16_t float_to_f16_bits(float f) { return ptx::float_to_bits<false>(f); }
__device__ __forceinline__ float bf16_bits_to_float(uint16_t h) { return ptx::bits_to_float<true>(h); }
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) { return ptx::float_to_bits<true>(f); }

template <class T> struct Elem;
template <> struct Elem<float> {
    __device__ static float to_float(float v) { return v; }
    __device__ static double to_double(float v) { return v; }
    __device__ static float from_float(float v) { return v; }
};
template <> struct Elem<double> {
    __device__ static double to_double(double v) { return v; }
    __device__ static double from_double(double v) { return v; }
};
template <> struct Elem<F16> {
    __device__ static float to_float(uint16_t v) { return f16_bits_to_float(v); }
    __device__ static double to_double(uint16_t v) { return f16_bits_to_float(v); }
    __device__ static uint16_t from_float(float v) { return float_to_f16_bits(v); }
};
template <> struct Elem<BF16> {
    __device__ static float to_float(uint16_t v) { return bf16_bits_to_float(v); }
    __device__ static double to_double(uint16_t v) { return bf16_bits_to_float(v); }
    __device__ static uint16_t from_float(float v) { return float_to_bf16_bits(v); }
};

// GeLU, tanh approximation, as the CPU backend (cuda/gelu.cuh: shared with the tree GEMM's epilogue).
using dev::gelu;

// d/dx of the tanh-approximation GeLU: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
__device__ __forceinline__ float gelu_grad(float x) {
    const float kSqrt2OverPi = 0.7978845608028654f;
    const float t = tanhf(kSqrt2OverPi * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
}
__device__ __forceinline__ double gelu_grad(double x) {
    const double kSqrt2OverPi = 0.7978845608028654;
    const double t = tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * x * x);
}

// ================================================================================================ copy_2d
// Copies rows x width units of U (1, 2, 4, 8 or 16 bytes); pitches in units. Rows over gridDim.y, units of a
// row over x (grid-stride in both).
template <class U>
__global__ void copy_2d_kernel(U* dst, int64_t dpitch, const U* src, int64_t spitch, int64_t rows, int64_t width) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        U* d = dst + r * dpitch;
        const U* s = src + r * spitch;
        for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < width;
             c += static_cast<int64_t>(gridDim.x) * blockDim.x)
            d[c] = s[c];
    }
}

template <class U>
cudaError_t copy_2d_as(void* dst, int64_t dpitch_bytes, const void* src, int64_t spitch_bytes, int64_t rows,
                       int64_t width_bytes, cudaStream_t stream) {
    const int64_t u = static_cast<int64_t>(sizeof(U));
    const int64_t width = width_bytes / u;
    const unsigned gx = blocks_for(static_cast<uint64_t>(width));
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
    return launch_kernel(copy_2d_kernel<U>, dim3(gx, gy), dim3(kThreads), stream, static_cast<U*>(dst), dpitch_bytes / u,
                         static_cast<const U*>(src), spitch_bytes / u, rows, width);
}

// ================================================================================================ reduce_sum
struct ReducePointers {
    const void* src[kMaxReducePointers];
    void* dst[kMaxReducePointers];
    int32_t nsrc;
    int32_t ndst;
    // The tree order (SW_REDUCE_SUM_TREE): merges[s] = how many tree nodes complete with source s (sw::tree::merges
    // over nsrc sources, made on the host by dev::tree_merges_at): after source s's value is pushed, that many times the
    // two top values are replaced by their sum, left + right. Unused (zeros) in source order.
    int8_t merges[kMaxReducePointers];
};

// Stack of the tree order: at most sw::tree::depth(kMaxReducePointers) = 7 values.
constexpr int kReduceTreeDepth = 8;

// Accumulator of one element: the storage type for f32/f64, uint32_t for i32 (wrap-around defined), float
// for f16/bf16. Summed in source order 0..nsrc-1, or (kTree) in the tree's order over the sources.
template <class T> struct Acc;
template <> struct Acc<float> {
    using S = float; using A = float;
    __device__ static A load(S v) { return v; }
    __device__ static S store(A v) { return v; }
};
template <> struct Acc<double> {
    using S = double; using A = double;
    __device__ static A load(S v) { return v; }
    __device__ static S store(A v) { return v; }
};
template <> struct Acc<int32_t> {
    using S = int32_t; using A = uint32_t;
    __device__ static A load(S v) { return static_cast<uint32_t>(v); }
    // uint32_t -> int32_t is modular (two's complement) with every CUDA compiler; no signed overflow occurs.
    __device__ static S store(A v) { return static_cast<int32_t>(v); }
};
template <> struct Acc<F16> {
    using S = uint16_t; using A = float;
    __device__ static A load(S v) { return f16_bits_to_float(v); }
    __device__ static S store(A v) { return float_to_f16_bits(v); }
};
template <> struct Acc<BF16> {
    using S = uint16_t; using A = float;
    __device__ static A load(S v) { return bf16_bits_to_float(v); }
    __device__ static S store(A v) { return float_to_bf16_bits(v); }
};

// The tree order for one element: source s's value v joins the stack, then p.merges[s] merges (left + right).
// The first merge adds v straight into the top (top + v: the same one addition as pushing v and merging).
template <class A>
__device__ __forceinline__ void tree_push(A (&stack)[kReduceTreeDepth], int& top, A v, int merges) {
    if (merges == 0) {
        stack[top++] = v;
        return;
    }
    stack[top - 1] = stack[top - 1] + v;
    for (int j = 1; j < merges; ++j) {
        stack[top - 2] = stack[top - 2] + stack[top - 1];
        --top;
    }
}

// Scalar path: element i by one thread (reads every source at i, then writes every destination at i, so a
// destination may be one of the sources).
template <class T, bool kTree>
__global__ void reduce_sum_kernel(ReducePointers p, uint64_t begin, uint64_t count) {
    using S = typename Acc<T>::S;
    using A = typename Acc<T>::A;
    for (uint64_t i = begin + static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        A acc;
        if constexpr (kTree) {
            A stack[kReduceTreeDepth];
            int top = 0;
            for (int32_t s = 0; s < p.nsrc; ++s)
                tree_push(stack, top, Acc<T>::load(static_cast<const S*>(p.src[s])[i]), p.merges[s]);
            acc = stack[0];
        } else {
            acc = Acc<T>::load(static_cast<const S*>(p.src[0])[i]);
            for (int32_t s = 1; s < p.nsrc; ++s) acc += Acc<T>::load(static_cast<const S*>(p.src[s])[i]);
        }
        const S out = Acc<T>::store(acc);
        for (int32_t d = 0; d < p.ndst; ++d) static_cast<S*>(p.dst[d])[i] = out;
    }
}

// Vector path (every pointer 16-byte aligned): 16 bytes per thread and step, same per-element arithmetic.
// Elements [0, nvec * V) with V = 16 / sizeof(S); the caller runs the scalar kernel on the tail.
template <class T, bool kTree>
__global__ void reduce_sum_vec_kernel(ReducePointers p, uint64_t nvec) {
    using S = typename Acc<T>::S;
    using A = typename Acc<T>::A;
    constexpr int V = static_cast<int>(16 / sizeof(S));
    static_assert(V * sizeof(S) == sizeof(uint4), "16-byte packs");
    for (uint64_t v = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
         v += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        A acc[V];
        S e[V];
        uint4 raw;
        if constexpr (kTree) {
            A stack[V][kReduceTreeDepth];
            int top[V];
#pragma unroll
            for (int j = 0; j < V; ++j) top[j] = 0;
            for (int32_t s = 0; s < p.nsrc; ++s) {
                raw = static_cast<const uint4*>(p.src[s])[v];
                memcpy(e, &raw, sizeof raw);
#pragma unroll
                for (int j = 0; j < V; ++j) tree_push(stack[j], top[j], Acc<T>::load(e[j]), p.merges[s]);
            }
#pragma unroll
            for (int j = 0; j < V; ++j) acc[j] = stack[j][0];
        } else {
            raw = static_cast<const uint4*>(p.src[0])[v];
            memcpy(e, &raw, sizeof raw); // register-to-register; no type punning through a union
#pragma unroll
            for (int j = 0; j < V; ++j) acc[j] = Acc<T>::load(e[j]);
            for (int32_t s = 1; s < p.nsrc; ++s) {
                raw = static_cast<const uint4*>(p.src[s])[v];
                memcpy(e, &raw, sizeof raw);
#pragma unroll
                for (int j = 0; j < V; ++j) acc[j] += Acc<T>::load(e[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < V; ++j) e[j] = Acc<T>::store(acc[j]);
        memcpy(&raw, e, sizeof raw);
        for (int32_t d = 0; d < p.ndst; ++d) static_cast<uint4*>(p.dst[d])[v] = raw;
    }
}

template <class T, bool kTree>
cudaError_t reduce_sum_as(const ReducePointers& p, uint64_t count, cudaStream_t stream) {
    using S = typename Acc<T>::S;
    bool aligned = true;
    for (int32_t s = 0; s < p.nsrc; ++s) aligned = aligned && pointer_alignment(p.src[s]) >= 16;
    for (int32_t d = 0; d < p.ndst; ++d) aligned = aligned && pointer_alignment(p.dst[d]) >= 16;
    uint64_t begin = 0;
    if (aligned) {
        const uint64_t per = 16 / sizeof(S);
        const uint64_t nvec = count / per;
        if (nvec > 0) {
            const cudaError_t st =
                launch_kernel(reduce_sum_vec_kernel<T, kTree>, dim3(blocks_for(nvec)), dim3(kThreads), stream, p, nvec);
            if (st != cudaSuccess) return st;
        }
        begin = nvec * per;
    }
    if (begin < count) {
        return launch_kernel(reduce_sum_kernel<T, kTree>, dim3(blocks_for(count - begin)), dim3(kThreads), stream, p,
                             begin, count);
    }
    return cudaSuccess;
}

// ================================================================================================ convert
// Double to float rounded to odd (truncate, then set the last bit when inexact). Rounding that float once
// more to a format with at least two fewer significand bits (f16: 11, bf16: 8 vs 24) gives the correctly
// rounded (nearest even) result of the double: no double-rounding error. Overflow truncates to FLT_MAX (odd),
// which then rounds to infinity as the double would; infinities and NaN pass through.
__device__ __forceinline__ float double_to_float_round_odd(double d) {
    float f = __double2float_rz(d);
    if (d == d && static_cast<double>(f) != d) f = __uint_as_float(__float_as_uint(f) | 1u);
    return f;
}

template <class Src, class Dst> struct Convert;
// Same type: a plain copy (the launcher is only reached for different types; this keeps the dispatch total).
template <class T> struct Convert<T, T> {
    __device__ static typename Storage<T>::type run(typename Storage<T>::type v) { return v; }
};
// To float / double.
template <> struct Convert<double, float> { __device__ static float run(double v) { return __double2float_rn(v); } };
template <> struct Convert<F16, float> { __device__ static float run(uint16_t v) { return f16_bits_to_float(v); } };
template <> struct Convert<BF16, float> { __device__ static float run(uint16_t v) { return bf16_bits_to_float(v); } };
template <> struct Convert<float, double> { __device__ static double run(float v) { return v; } };
template <> struct Convert<F16, double> { __device__ static double run(uint16_t v) { return f16_bits_to_float(v); } };
template <> struct Convert<BF16, double> { __device__ static double run(uint16_t v) { return bf16_bits_to_float(v); } };
// To f16 / bf16: from float directly (one rounding), from the other 16-bit type through float (exact), from
// double through float rounded to odd.
template <> struct Convert<float, F16> { __device__ static uint16_t run(float v) { return float_to_f16_bits(v); } };
template <> struct Convert<BF16, F16> {
    __device__ static uint16_t run(uint16_t v) { return float_to_f16_bits(bf16_bits_to_float(v)); }
};
template <> struct Convert<double, F16> {
    __device__ static uint16_t run(double v) { return float_to_f16_bits(double_to_float_round_odd(v)); }
};
template <> struct Convert<float, BF16> { __device__ static uint16_t run(float v) { return float_to_bf16_bits(v); } };
template <> struct Convert<F16, BF16> {
    __device__ static uint16_t run(uint16_t v) { return float_to_bf16_bits(f16_bits_to_float(v)); }
};
template <> struct Convert<double, BF16> {
    __device__ static uint16_t run(double v) { return float_to_bf16_bits(double_to_float_round_odd(v)); }
};

template <class Src, class Dst>
__global__ void convert_kernel(const typename Storage<Src>::type* __restrict__ src,
                               typename Storage<Dst>::type* __restrict__ dst, uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        dst[i] = Convert<Src, Dst>::run(src[i]);
}

template <class Src, class Dst>
cudaError_t convert_as(const void* src, void* dst, uint64_t count, cudaStream_t stream) {
    return launch_kernel(convert_kernel<Src, Dst>, dim3(blocks_for(count)), dim3(kThreads), stream,
                         static_cast<const typename Storage<Src>::type*>(src), static_cast<typename Storage<Dst>::type*>(dst),
                         count);
}

template <class Src>
cudaError_t convert_from(const void* src, sw_dtype dst_type, void* dst, uint64_t count, cudaStream_t stream) {
    switch (dst_type) {
    case SW_DTYPE_F32: return convert_as<Src, float>(src, dst, count, stream);
    case SW_DTYPE_F64: return convert_as<Src, double>(src, dst, count, stream);
    case SW_DTYPE_F16: return convert_as<Src, F16>(src, dst, count, stream);
    case SW_DTYPE_BF16: return convert_as<Src, BF16>(src, dst, count, stream);
    default: return cudaErrorInvalidValue;
    }
}

// ================================================================================================ scale/bias/act
// y = act(w + beta * y + bias[j]); y is not read when beta == 0; w (an fp32 rows x cols matrix, leading dimension
// ldw) is optional and never given for f64. Computed in Compute<T> (float, or double for f64), rounded once to T.
template <class T>
__global__ void scale_bias_act_kernel(typename Storage<T>::type* y, int64_t ld, int64_t rows, int64_t cols,
                                      float beta, const typename Storage<T>::type* __restrict__ bias, int gelu_on,
                                      const float* __restrict__ w, int64_t ldw) {
    using C = typename Compute<T>::type;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        typename Storage<T>::type* row = y + r * ld;
        for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
             j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
            C v;
            if constexpr (sizeof(C) == sizeof(double)) {
                v = beta == 0.0f ? 0.0 : static_cast<double>(beta) * Elem<T>::to_double(row[j]);
                if (bias) v += Elem<T>::to_double(bias[j]);
                if (gelu_on) v = gelu(v);
                row[j] = Elem<T>::from_double(v);
            } else {
                v = w ? w[r * ldw + j] : 0.0f;
                if (beta != 0.0f) v += beta * Elem<T>::to_float(row[j]);
                if (bias) v += Elem<T>::to_float(bias[j]);
                if (gelu_on) v = gelu(v);
                row[j] = Elem<T>::from_float(v);
            }
        }
    }
}

template <class T>
cudaError_t scale_bias_act_as(void* y, int64_t ld, int64_t rows, int64_t cols, float beta, const void* bias,
                              bool gelu_on, const float* w, int64_t ldw, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    const unsigned gx = blocks_for(static_cast<uint64_t>(cols));
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
    return launch_kernel(scale_bias_act_kernel<T>, dim3(gx, gy), dim3(kThreads), stream, static_cast<S*>(y), ld, rows, cols,
                         beta, static_cast<const S*>(bias), gelu_on ? 1 : 0, w, ldw);
}

// ================================================================================================ gelu backward
// dx[i] = dy[i] * gelu'(x[i]); each element is read before it is written, so dx may alias dy.
template <class T>
__global__ void gelu_backward_kernel(const typename Storage<T>::type* x, const typename Storage<T>::type* dy,
                                     typename Storage<T>::type* dx, uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        if constexpr (std::is_same<T, double>::value) {
            dx[i] = dy[i] * gelu_grad(x[i]);
        } else {
            dx[i] = Elem<T>::from_float(Elem<T>::to_float(dy[i]) * gelu_grad(Elem<T>::to_float(x[i])));
        }
    }
}

template <class T>
cudaError_t gelu_backward_as(const void* x, const void* dy, void* dx, uint64_t count, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(gelu_backward_kernel<T>, dim3(blocks_for(count)), dim3(kThreads), stream, static_cast<const S*>(x),
                         static_cast<const S*>(dy), static_cast<S*>(dx), count);
}

// ================================================================================================ wait flag
// One thread polls the flag (device-mapped pinned host memory, raised monotonically by a host thread) until
// (int32_t)(*flag - target) >= 0, i.e. the flag has reached `target` modulo 2^32 (wrap-safe). Reads are
// volatile with system scope (ld.volatile goes to memory each time); between reads an exponential back-off of
// up to ~4 us, so that the poll does not flood the PCIe / NVLink-C2C link. The system-scope fence afterwards
// orders the stream's later work after the host's writes that preceded the flag update.
__device__ __forceinline__ bool flag_reached(uint32_t value, uint32_t target) {
    return static_cast<int32_t>(value - target) >= 0; // unsigned difference, then two's complement: no UB
}

__global__ void wait_flag_kernel(const volatile uint32_t* flag, uint32_t target) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    unsigned ns = 64;
    while (!flag_reached(*flag, target)) {
        __nanosleep(ns);
        if (ns < 4096) ns *= 2;
    }
#else
    while (!flag_reached(*flag, target)) {
    }
#endif
    __threadfence_system();
}

} // namespace

// ================================================================================================ launchers
cudaError_t launch_copy_2d(void* dst, int64_t ld_dst, const void* src, int64_t ld_src, int64_t rows, int64_t cols,
                           int32_t elem_size, cudaStream_t stream) {
    const int64_t es = elem_size;
    const int64_t dpitch = ld_dst * es, spitch = ld_src * es, width = cols * es;
    // Widest unit that divides both addresses, both pitches and the row width.
    const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                           static_cast<uintptr_t>(dpitch) | static_cast<uintptr_t>(spitch) |
                           static_cast<uintptr_t>(width);
    (void)cudaGetLastError(); // a stale error of someone else's call must not be reported as this launch's
    if (bits % 16 == 0) return copy_2d_as<uint4>(dst, dpitch, src, spitch, rows, width, stream);
    if (bits % 8 == 0) return copy_2d_as<uint2>(dst, dpitch, src, spitch, rows, width, stream);
    if (bits % 4 == 0) return copy_2d_as<uint32_t>(dst, dpitch, src, spitch, rows, width, stream);
    if (bits % 2 == 0) return copy_2d_as<uint16_t>(dst, dpitch, src, spitch, rows, width, stream);
    return copy_2d_as<uint8_t>(dst, dpitch, src, spitch, rows, width, stream);
}

template <bool kTree>
cudaError_t reduce_sum_typed(sw_dtype dtype, const ReducePointers& p, uint64_t count, cudaStream_t stream) {
    switch (dtype) {
    case SW_DTYPE_F32: return reduce_sum_as<float, kTree>(p, count, stream);
    case SW_DTYPE_F64: return reduce_sum_as<double, kTree>(p, count, stream);
    case SW_DTYPE_I32: return reduce_sum_as<int32_t, kTree>(p, count, stream);
    case SW_DTYPE_F16: return reduce_sum_as<F16, kTree>(p, count, stream);
    case SW_DTYPE_BF16: return reduce_sum_as<BF16, kTree>(p, count, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_reduce_sum(sw_dtype dtype, const void* const* srcs, int32_t nsrc, void* const* dsts, int32_t ndst,
                              uint64_t count, bool tree, cudaStream_t stream) {
    if (nsrc < 1 || nsrc > kMaxReducePointers || ndst < 1 || ndst > kMaxReducePointers) return cudaErrorInvalidValue;
    ReducePointers p{};
    for (int32_t s = 0; s < nsrc; ++s) p.src[s] = srcs[s];
    for (int32_t d = 0; d < ndst; ++d) p.dst[d] = dsts[d];
    p.nsrc = nsrc;
    p.ndst = ndst;
    static_assert(kMaxReducePointers <= 64, "kReduceTreeDepth holds the tree over at most 64 sources");
    if (tree)
        for (int32_t s = 0; s < nsrc; ++s) p.merges[s] = static_cast<int8_t>(dev::tree_merges_at(nsrc, s));
    (void)cudaGetLastError();
    return tree ? reduce_sum_typed<true>(dtype, p, count, stream) : reduce_sum_typed<false>(dtype, p, count, stream);
}

cudaError_t launch_convert(sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t count,
                           cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (src_type) {
    case SW_DTYPE_F32: return convert_from<float>(src, dst_type, dst, count, stream);
    case SW_DTYPE_F64: return convert_from<double>(src, dst_type, dst, count, stream);
    case SW_DTYPE_F16: return convert_from<F16>(src, dst_type, dst, count, stream);
    case SW_DTYPE_BF16: return convert_from<BF16>(src, dst_type, dst, count, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_scale_bias_act(sw_dtype dtype, void* y, int64_t ld, int64_t rows, int64_t cols, float beta,
                                  const void* bias, bool gelu_on, cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (dtype) {
    case SW_DTYPE_F32: return scale_bias_act_as<float>(y, ld, rows, cols, beta, bias, gelu_on, nullptr, 0, stream);
    case SW_DTYPE_F64: return scale_bias_act_as<double>(y, ld, rows, cols, beta, bias, gelu_on, nullptr, 0, stream);
    case SW_DTYPE_F16: return scale_bias_act_as<F16>(y, ld, rows, cols, beta, bias, gelu_on, nullptr, 0, stream);
    case SW_DTYPE_BF16: return scale_bias_act_as<BF16>(y, ld, rows, cols, beta, bias, gelu_on, nullptr, 0, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_finish_f32(sw_dtype dtype, void* y, int64_t ld, const float* w, int64_t ldw, int64_t rows,
                              int64_t cols, float beta, const void* bias, bool gelu_on, cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (dtype) {
    case SW_DTYPE_F32: return scale_bias_act_as<float>(y, ld, rows, cols, beta, bias, gelu_on, w, ldw, stream);
    case SW_DTYPE_F16: return scale_bias_act_as<F16>(y, ld, rows, cols, beta, bias, gelu_on, w, ldw, stream);
    case SW_DTYPE_BF16: return scale_bias_act_as<BF16>(y, ld, rows, cols, beta, bias, gelu_on, w, ldw, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t preload_collective_kernels() {
    const cudaError_t results[] = {
        preload_kernel(wait_flag_kernel),
        preload_kernel(copy_2d_kernel<uint4>), preload_kernel(copy_2d_kernel<uint2>),
        preload_kernel(copy_2d_kernel<uint32_t>), preload_kernel(copy_2d_kernel<uint16_t>),
        preload_kernel(copy_2d_kernel<uint8_t>),
        preload_kernel(reduce_sum_kernel<float, false>), preload_kernel(reduce_sum_vec_kernel<float, false>),
        preload_kernel(reduce_sum_kernel<double, false>), preload_kernel(reduce_sum_vec_kernel<double, false>),
        preload_kernel(reduce_sum_kernel<int32_t, false>), preload_kernel(reduce_sum_vec_kernel<int32_t, false>),
        preload_kernel(reduce_sum_kernel<F16, false>), preload_kernel(reduce_sum_vec_kernel<F16, false>),
        preload_kernel(reduce_sum_kernel<BF16, false>), preload_kernel(reduce_sum_vec_kernel<BF16, false>),
        preload_kernel(reduce_sum_kernel<float, true>), preload_kernel(reduce_sum_vec_kernel<float, true>),
        preload_kernel(reduce_sum_kernel<double, true>), preload_kernel(reduce_sum_vec_kernel<double, true>),
        preload_kernel(reduce_sum_kernel<int32_t, true>), preload_kernel(reduce_sum_vec_kernel<int32_t, true>),
        preload_kernel(reduce_sum_kernel<F16, true>), preload_kernel(reduce_sum_vec_kernel<F16, true>),
        preload_kernel(reduce_sum_kernel<BF16, true>), preload_kernel(reduce_sum_vec_kernel<BF16, true>),
    };
    for (cudaError_t r : results)
        if (r != cudaSuccess) return r;
    return cudaSuccess;
}

cudaError_t launch_wait_flag(volatile uint32_t* flag, uint32_t target, cudaStream_t stream) {
    (void)cudaGetLastError();
    return launch_kernel(wait_flag_kernel, dim3(1), dim3(1), stream, flag, target);
}

cudaError_t launch_gelu_backward(sw_dtype dtype, const void* x, const void* dy, void* dx, uint64_t count,
                                 cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (dtype) {
    case SW_DTYPE_F32: return gelu_backward_as<float>(x, dy, dx, count, stream);
    case SW_DTYPE_F64: return gelu_backward_as<double>(x, dy, dx, count, stream);
    case SW_DTYPE_F16: return gelu_backward_as<F16>(x, dy, dx, count, stream);
    case SW_DTYPE_BF16: return gelu_backward_as<BF16>(x, dy, dx, count, stream);
    default: return cudaErrorInvalidValue;
    }
}

// ================================================================================================ training
// Mixed-precision training (ABI 6): gradient unscaling with an overflow flag, and the fp32 master-weight update.
// Separate from the kernels above; the launchers follow the same pattern (grid-stride loops, checked launches).
namespace {

template <class T>
__global__ void unscale_check_kernel(typename Storage<T>::type* buf, uint64_t count, float inv_scale, float* flag) {
    bool bad = false;
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const float v = Elem<T>::to_float(buf[i]);
        bad = bad || !(fabsf(v) <= 3.402823466e+38f); // inf or NaN (NaN compares false)
        buf[i] = Elem<T>::from_float(v * inv_scale);
    }
    if (bad) *flag = 1.0f; // every writer writes the same value: no atomics needed
}

template <class T>
cudaError_t unscale_check_as(void* buf, uint64_t count, float inv_scale, float* flag, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(unscale_check_kernel<T>, dim3(blocks_for(count)), dim3(kThreads), stream, static_cast<S*>(buf),
                         count, inv_scale, flag);
}

template <class T>
__global__ void axpy_kernel(float alpha, const typename Storage<T>::type* __restrict__ x, float* __restrict__ y,
                            uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        y[i] = fmaf(alpha, Elem<T>::to_float(x[i]), y[i]);
}

template <class T>
cudaError_t axpy_as(float alpha, const void* x, float* y, uint64_t count, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(axpy_kernel<T>, dim3(blocks_for(count)), dim3(kThreads), stream, alpha, static_cast<const S*>(x),
                         y, count);
}

} // namespace

cudaError_t launch_unscale_check(sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                                 cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (dtype) {
    case SW_DTYPE_F32: return unscale_check_as<float>(buf, count, inv_scale, flag, stream);
    case SW_DTYPE_F16: return unscale_check_as<F16>(buf, count, inv_scale, flag, stream);
    case SW_DTYPE_BF16: return unscale_check_as<BF16>(buf, count, inv_scale, flag, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_axpy(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count, cudaStream_t stream) {
    (void)cudaGetLastError();
    switch (x_type) {
    case SW_DTYPE_F32: return axpy_as<float>(alpha, x, y, count, stream);
    case SW_DTYPE_F16: return axpy_as<F16>(alpha, x, y, count, stream);
    case SW_DTYPE_BF16: return axpy_as<BF16>(alpha, x, y, count, stream);
    default: return cudaErrorInvalidValue;
    }
}

// ================================================================================================ attention, normalization
// The row-wise fp32 kernels of a transformer block (ABI 7; semantics in shardwise.h, descriptions in core/row_ops.h):
// softmax with an optional causal mask and its backward, LayerNorm / RMSNorm and their backward.
// Design: one block per row (a grid-stride loop over the rows: the row index depends on blockIdx only, so every
// thread of a block takes the same path through the barriers), the threads of the block striding over the row's
// columns, per-thread fp32 partial sums (or maxima) combined by a fixed tree in shared memory: the result depends on
// the row and the block size only (deterministic, the same bits on every run). Every pass over a row that writes
// reads the element it writes in the same thread, and all the passes that read the row for a reduction end at the
// reduction's barriers before any write: so y may be x (softmax, norm) and dx may be dy (the backwards).
// The norm's parameter gradients are sums over all rows: one thread per column, rows in order, in double (the CPU
// backend's arithmetic), coalesced across the threads of a block; launched before the dx kernel, which may overwrite
// dy in place.
namespace {

constexpr unsigned kRowThreadsMax = 512;
constexpr unsigned kParamThreads = 64;
constexpr int64_t kMaxRowBlocks = int64_t{1} << 20;

// Threads of a row block: a power of two in [32, kRowThreadsMax], about two columns per thread for short rows.
inline unsigned row_threads(int64_t cols) {
    unsigned t = 32;
    while (t < kRowThreadsMax && static_cast<int64_t>(t) * 2 < cols) t *= 2;
    return t;
}
inline unsigned row_blocks(int64_t rows) {
    return static_cast<unsigned>(std::max<int64_t>(1, std::min(rows, kMaxRowBlocks)));
}

struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// op over v of every thread of the block, returned to all of them. blockDim.x: a power of two <= kRowThreadsMax; buf:
// blockDim.x floats of shared memory. Ends with a barrier, so buf may be reused at once and every thread's reads of
// global memory before the call are done (by every thread) when it returns.
template <class Op>
__device__ __forceinline__ float block_reduce(float v, float* buf, Op op) {
    const unsigned t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] = op(buf[t], buf[t + s]);
        __syncthreads();
    }
    const float r = buf[0];
    __syncthreads();
    return r;
}

// Two sums at once; buf: 2 * blockDim.x floats.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* buf) {
    const unsigned t = threadIdx.x, n = blockDim.x;
    buf[t] = a;
    buf[n + t] = b;
    __syncthreads();
    for (unsigned s = n / 2; s > 0; s >>= 1) {
        if (t < s) {
            buf[t] += buf[t + s];
            buf[n + t] += buf[n + t + s];
        }
        __syncthreads();
    }
    a = buf[0];
    b = buf[n];
    __syncthreads();
}

// y[r, j] = exp(s_j - max s) / sum exp(s - max s), s = scale * x[r, j], over the kept columns; the others get 0.
// x and y may be the same (no __restrict__).
__global__ void softmax_kernel(const float* x, float* y, int64_t rows, int64_t cols, int64_t ld, float scale,
                               int64_t period) {
    __shared__ float red[kRowThreadsMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * ld;
        float* yr = y + r * ld;
        int64_t kept = cols;
        if (period > 0) {
            const int64_t k = r % period + (cols - period) + 1;
            kept = k < cols ? k : cols;
        }
        float mx = -INFINITY;
        for (int64_t j = t0; j < kept; j += step) mx = fmaxf(mx, scale * xr[j]);
        mx = block_reduce(mx, red, MaxOp());
        float sum = 0.0f;
        for (int64_t j = t0; j < kept; j += step) sum += expf(scale * xr[j] - mx);
        sum = block_reduce(sum, red, SumOp());
        const float inv = 1.0f / sum;
        for (int64_t j = t0; j < kept; j += step) yr[j] = expf(scale * xr[j] - mx) * inv;
        for (int64_t j = kept + t0; j < cols; j += step) yr[j] = 0.0f;
    }
}

// dx[r, j] = scale * y[r, j] * (dy[r, j] - sum_k dy[r, k] y[r, k]); dx may be dy.
__global__ void softmax_backward_kernel(const float* __restrict__ y, const float* dy, float* dx, int64_t rows,
                                        int64_t cols, int64_t ld, float scale) {
    __shared__ float red[kRowThreadsMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* yr = y + r * ld;
        const float* dyr = dy + r * ld;
        float* dxr = dx + r * ld;
        float dot = 0.0f;
        for (int64_t j = t0; j < cols; j += step) dot += dyr[j] * yr[j];
        dot = block_reduce(dot, red, SumOp());
        for (int64_t j = t0; j < cols; j += step) dxr[j] = scale * yr[j] * (dyr[j] - dot);
    }
}

// LayerNorm (layer != 0) or RMSNorm of each contiguous row; stats (mean, rstd per row) written when not null.
__global__ void norm_kernel(int layer, const float* x, const float* __restrict__ gamma, const float* __restrict__ beta,
                            float* y, float* __restrict__ stats, int64_t rows, int64_t cols, float eps) {
    __shared__ float red[kRowThreadsMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    const float n = static_cast<float>(cols);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float mean = 0.0f;
        if (layer) {
            float s = 0.0f;
            for (int64_t j = t0; j < cols; j += step) s += xr[j];
            mean = block_reduce(s, red, SumOp()) / n;
        }
        float sq = 0.0f;
        for (int64_t j = t0; j < cols; j += step) {
            const float d = xr[j] - mean;
            sq += d * d;
        }
        sq = block_reduce(sq, red, SumOp());
        const float rstd = 1.0f / sqrtf(sq / n + eps);
        if (stats && t0 == 0) {
            stats[2 * r] = mean;
            stats[2 * r + 1] = rstd;
        }
        for (int64_t j = t0; j < cols; j += step) {
            float v = (xr[j] - mean) * rstd;
            if (gamma) v *= gamma[j];
            if (beta) v += beta[j];
            yr[j] = v;
        }
    }
}

// dx of the norm for each row: g = dy * gamma, xhat = (x - mean) * rstd,
// dx = rstd * (g - mean(g) [LayerNorm only] - xhat * mean(g * xhat)); dx may be dy.
__global__ void norm_backward_dx_kernel(int layer, const float* __restrict__ x, const float* __restrict__ gamma,
                                        const float* __restrict__ stats, const float* dy, float* dx, int64_t rows,
                                        int64_t cols) {
    __shared__ float red[2 * kRowThreadsMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    const float n = static_cast<float>(cols);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        const float* dyr = dy + r * cols;
        float* dxr = dx + r * cols;
        const float m = stats[2 * r], rstd = stats[2 * r + 1];
        float sg = 0.0f, sgx = 0.0f;
        for (int64_t j = t0; j < cols; j += step) {
            const float g = gamma ? dyr[j] * gamma[j] : dyr[j];
            sg += g;
            sgx += g * ((xr[j] - m) * rstd);
        }
        block_sum2(sg, sgx, red);
        const float mg = layer ? sg / n : 0.0f;
        const float mgx = sgx / n;
        for (int64_t j = t0; j < cols; j += step) {
            const float g = gamma ? dyr[j] * gamma[j] : dyr[j];
            const float xhat = (xr[j] - m) * rstd;
            dxr[j] = rstd * (g - mg - xhat * mgx);
        }
    }
}

// dgamma[c] (+)= sum_r dy[r, c] * xhat[r, c], dbeta[c] (+)= sum_r dy[r, c]: one thread per column, rows in order,
// in double, rounded once to fp32 (with the old value when accumulating). dgamma or dbeta may be null.
__global__ void norm_backward_param_kernel(const float* __restrict__ x, const float* __restrict__ stats,
                                           const float* __restrict__ dy, float* __restrict__ dgamma,
                                           float* __restrict__ dbeta, int64_t rows, int64_t cols, int accumulate) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        double sg = 0.0, sb = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
            const float d = dy[r * cols + c];
            const float xhat = (x[r * cols + c] - stats[2 * r]) * stats[2 * r + 1];
            sg += static_cast<double>(d) * static_cast<double>(xhat);
            sb += static_cast<double>(d);
        }
        if (dgamma) dgamma[c] = static_cast<float>(sg + (accumulate ? static_cast<double>(dgamma[c]) : 0.0));
        if (dbeta) dbeta[c] = static_cast<float>(sb + (accumulate ? static_cast<double>(dbeta[c]) : 0.0));
    }
}

// ------------------------------------------------------------------------------------------ activations, GLU, dropout,
// embedding, cross-entropy (ABI 7)
// Element-wise kernels (activations, GLU, dropout, embedding, the cross-entropy gradient) are grid-stride loops over
// 64-bit indices in which each thread reads every input of an element before writing that element's outputs: so y
// may be x, dx may be dy, dgu may be gu (the gate and up of (r, j) are read by the thread that writes both) and
// dlogits may be logits. The activations are the fp32 formulas of the CPU backend (cpu/row_ops.cpp).

// act(x) and act'(x) (act: an sw_activation; anything else is GeLU, as on the CPU).
__device__ __forceinline__ float act_forward(int act, float x) {
    if (act == SW_ACTIVATION_RELU) return x > 0.0f ? x : 0.0f;
    if (act == SW_ACTIVATION_SILU) return x / (1.0f + expf(-x));
    return gelu(x);
}
__device__ __forceinline__ float act_grad(int act, float x) {
    if (act == SW_ACTIVATION_RELU) return x > 0.0f ? 1.0f : 0.0f;
    if (act == SW_ACTIVATION_SILU) {
        const float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    return gelu_grad(x);
}

// y[i] = act(x[i]); y may be x.
__global__ void activation_kernel(int act, const float* x, float* y, uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        y[i] = act_forward(act, x[i]);
}

// dx[i] = dy[i] * act'(x[i]); dx may be dy.
__global__ void activation_backward_kernel(int act, const float* __restrict__ x, const float* dy, float* dx,
                                           uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        dx[i] = dy[i] * act_grad(act, x[i]);
}

// h[r, j] = act(gu[r, j]) * gu[r, cols + j] over the rows * cols elements of h (gu: rows x 2 cols).
__global__ void glu_kernel(int act, const float* __restrict__ gu, float* __restrict__ h, int64_t rows, int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = i / cols, j = i - r * cols;
        const float* g = gu + r * 2 * cols;
        h[i] = act_forward(act, g[j]) * g[cols + j];
    }
}

// dgu[r, j] = dh[r, j] * up * act'(gate), dgu[r, cols + j] = dh[r, j] * act(gate); gate and up read first (dgu may
// be gu).
__global__ void glu_backward_kernel(int act, const float* gu, const float* __restrict__ dh, float* dgu, int64_t rows,
                                    int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = i / cols, j = i - r * cols;
        const int64_t base = r * 2 * cols;
        const float gate = gu[base + j], up = gu[base + cols + j], d = dh[i];
        dgu[base + j] = d * up * act_grad(act, gate);
        dgu[base + cols + j] = d * act_forward(act, gate);
    }
}

// y[i] = x[i] / keep when dropout_bits(seed, counter + i) >= threshold, else 0 (core/row_ops.h: the CPU's very bits;
// a division, rounded once, as the CPU does). y may be x.
__global__ void dropout_kernel(const float* x, float* y, uint64_t count, uint32_t threshold, float keep, uint64_t seed,
                               uint64_t counter) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        y[i] = dropout_bits(seed, counter + i) >= threshold ? x[i] / keep : 0.0f;
}

// The shard row of a token id, or -1 when the id lies outside [vocab_offset, vocab_offset + shard_rows).
__device__ __forceinline__ int64_t shard_row_of(int32_t id, int64_t vocab_offset, int64_t shard_rows) {
    const int64_t row = static_cast<int64_t>(id) - vocab_offset;
    return row >= 0 && row < shard_rows ? row : -1;
}

// out[r, c] = table[ids[r] - vocab_offset, c] for ids in the shard, else 0; over the rows * cols elements of out.
__global__ void embedding_kernel(const float* __restrict__ table, int64_t shard_rows, const int32_t* __restrict__ ids,
                                 int64_t vocab_offset, float* __restrict__ out, int64_t rows, int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = i / cols, c = i - r * cols;
        const int64_t row = shard_row_of(ids[r], vocab_offset, shard_rows);
        out[i] = row >= 0 ? table[row * cols + c] : 0.0f;
    }
}

// dtable[i] = 0 for i < count (the embedding backward without accumulation, queued before the scatter).
__global__ void zero_kernel(float* p, uint64_t count) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        p[i] = 0.0f;
}

// dtable[ids[r] - vocab_offset, c] += dout[r, c] for the tokens r = 0..rows-1 in order whose id lies in the shard: one
// thread per column, so every element of dtable is summed by one thread in token order, in fp32 (the CPU's order and
// rounding: the same bits, no atomics), coalesced across the threads of a block.
__global__ void embedding_backward_kernel(const float* __restrict__ dout, const int32_t* __restrict__ ids,
                                          int64_t vocab_offset, float* __restrict__ dtable, int64_t shard_rows,
                                          int64_t rows, int64_t cols) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = shard_row_of(ids[r], vocab_offset, shard_rows);
            if (row >= 0) dtable[row * cols + c] += dout[r * cols + c];
        }
    }
}

// One block per row of the shard's logits (as softmax_kernel): stats[3r] = max_j z, stats[3r + 1] = sum_j exp(z - max)
// (fp32, fixed-order block reduction), stats[3r + 2] = z[ids[r] - vocab_offset] when in the shard, else 0.
__global__ void cross_entropy_partial_kernel(const float* __restrict__ logits, int64_t rows, int64_t cols, int64_t ld,
                                             const int32_t* __restrict__ ids, int64_t vocab_offset,
                                             float* __restrict__ stats) {
    __shared__ float red[kRowThreadsMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* z = logits + r * ld;
        float mx = -INFINITY;
        for (int64_t j = t0; j < cols; j += step) mx = fmaxf(mx, z[j]);
        mx = block_reduce(mx, red, MaxOp());
        float sum = 0.0f;
        for (int64_t j = t0; j < cols; j += step) sum += expf(z[j] - mx);
        sum = block_reduce(sum, red, SumOp());
        if (t0 == 0) {
            const int64_t t = shard_row_of(ids[r], vocab_offset, cols);
            stats[3 * r] = mx;
            stats[3 * r + 1] = sum;
            stats[3 * r + 2] = t >= 0 ? z[t] : 0.0f;
        }
    }
}

// sw_cross_entropy_partial_tree (ABI 8), one block per row (grid-stride over rows): every thread finds M, the maximum
// of the parts' maxima gathered[(k * rows + r) * 3] (NaN-propagating: fmaxf would drop a NaN); the leaves [l * leaf,
// min(cols, (l + 1) * leaf)) are summed blockDim.x at a time, leaf c0 + t by thread t from +0 in column order
// (acc = acc + expf(z - M): plain fp32 adds, the expf of cross_entropy_partial_kernel), into shared memory; thread 0
// then pushes them in leaf order onto a stack in shared memory and, after leaf l, replaces the two top values by their
// sum (left + right) tree_merges_at(nleaves, l) times: sw::tree::sum's order, whatever blockDim.x is. The stack holds
// at most tree_depth(nleaves) <= 64 values. out[3r] = include_max ? M : 0, out[3r + 1] = S (0 with no leaf),
// out[3r + 2] = the target logit when in the shard, else 0.
constexpr int kTreeStackMax = 65;
__global__ void cross_entropy_partial_tree_kernel(const float* __restrict__ logits, int64_t rows, int64_t cols,
                                                  int64_t ld, const int32_t* __restrict__ ids, int64_t vocab_offset,
                                                  const float* __restrict__ gathered, int32_t parts, int64_t leaf,
                                                  int include_max, float* __restrict__ out) {
    __shared__ float leaves[kRowThreadsMax];
    __shared__ float stack[kTreeStackMax];
    const int64_t t0 = threadIdx.x, step = blockDim.x;
    const int64_t nleaves = cols == 0 ? 0 : (cols - 1) / leaf + 1;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float mx = -INFINITY;
        for (int32_t k = 0; k < parts; ++k) {
            const float v = gathered[(static_cast<int64_t>(k) * rows + r) * 3];
            if (v != v || v > mx) mx = v; // a NaN stays: nothing compares greater than it
        }
        const float* z = nleaves > 0 ? logits + r * ld : nullptr; // an empty shard: logits unread (may be null)
        int sp = 0; // thread 0's stack height
        for (int64_t c0 = 0; c0 < nleaves; c0 += step) {
            const int64_t l = c0 + t0;
            if (l < nleaves) {
                const int64_t j0 = l * leaf, j1 = cols - j0 > leaf ? j0 + leaf : cols;
                float acc = 0.0f;
                for (int64_t j = j0; j < j1; ++j) acc = acc + expf(z[j] - mx);
                leaves[t0] = acc;
            }
            __syncthreads();
            if (t0 == 0) {
                const int64_t c1 = nleaves - c0 > step ? c0 + step : nleaves;
                for (int64_t i = c0; i < c1; ++i) {
                    stack[sp++] = leaves[i - c0];
                    for (int m = dev::tree_merges_at(nleaves, i); m > 0; --m) {
                        --sp;
                        stack[sp - 1] = stack[sp - 1] + stack[sp];
                    }
                }
            }
            __syncthreads(); // leaves[] read before the next chunk (or row) writes it
        }
        if (t0 == 0) {
            const int64_t t = shard_row_of(ids[r], vocab_offset, cols);
            out[3 * r] = include_max ? mx : 0.0f;
            out[3 * r + 1] = nleaves > 0 ? stack[0] : 0.0f;
            out[3 * r + 2] = t >= 0 ? z[t] : 0.0f;
        }
    }
}

// One thread per row: the parts' statistics (stats[(k * rows + r) * 3 ...]) combined in order k = 0..parts-1 in
// double (the CPU's arithmetic): lse = M + log(sum_k s_k exp(m_k - M)), loss = lse - sum_k t_k for 0 <= id <
// vocab_size, else 0.
__global__ void cross_entropy_combine_kernel(const float* __restrict__ stats, int32_t parts, int64_t rows,
                                             const int32_t* __restrict__ ids, int64_t vocab_size, float* __restrict__ lse,
                                             float* __restrict__ loss) {
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
         r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        float mx = -INFINITY;
        for (int32_t k = 0; k < parts; ++k) mx = fmaxf(mx, stats[(k * rows + r) * 3]);
        double sum = 0.0, target = 0.0;
        for (int32_t k = 0; k < parts; ++k) {
            const float* st = stats + (k * rows + r) * 3;
            sum += static_cast<double>(st[1]) * exp(static_cast<double>(st[0]) - static_cast<double>(mx));
            target += static_cast<double>(st[2]);
        }
        const double l = static_cast<double>(mx) + log(sum);
        lse[r] = static_cast<float>(l);
        const int32_t id = ids[r];
        loss[r] = id >= 0 && id < vocab_size ? static_cast<float>(l - target) : 0.0f;
    }
}

// dlogits[r, j] = dloss[r] * (exp(z[r, j] - lse[r]) - [vocab_offset + j == ids[r]]) for 0 <= ids[r] < vocab_size, else
// 0; over the rows * cols elements (row r at r * ld: the gap between cols and ld untouched). dlogits may be logits.
__global__ void cross_entropy_backward_kernel(const float* logits, int64_t rows, int64_t cols, int64_t ld,
                                              const int32_t* __restrict__ ids, int64_t vocab_offset, int64_t vocab_size,
                                              const float* __restrict__ lse, const float* __restrict__ dloss,
                                              float* dlogits) {
    const int64_t n = rows * cols;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = i / cols, j = i - r * cols;
        const int64_t e = r * ld + j;
        const int32_t id = ids[r];
        if (id < 0 || id >= vocab_size) {
            dlogits[e] = 0.0f;
            continue;
        }
        const float hit = vocab_offset + j == static_cast<int64_t>(id) ? 1.0f : 0.0f;
        dlogits[e] = dloss[r] * (expf(logits[e] - lse[r]) - hit);
    }
}

} // namespace

cudaError_t launch_softmax(const SoftmaxRows& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1 || a.ld < a.cols || a.causal_period < 0 || a.causal_period > a.cols)
        return cudaErrorInvalidValue;
    return launch_kernel(softmax_kernel, dim3(row_blocks(a.rows)), dim3(row_threads(a.cols)), stream, a.x, a.y, a.rows,
                         a.cols, a.ld, a.scale, a.causal_period);
}

cudaError_t launch_softmax_backward(const SoftmaxBackwardRows& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1 || a.ld < a.cols) return cudaErrorInvalidValue;
    return launch_kernel(softmax_backward_kernel, dim3(row_blocks(a.rows)), dim3(row_threads(a.cols)), stream, a.y,
                         a.dy, a.dx, a.rows, a.cols, a.ld, a.scale);
}

cudaError_t launch_norm(const NormRows& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1) return cudaErrorInvalidValue;
    return launch_kernel(norm_kernel, dim3(row_blocks(a.rows)), dim3(row_threads(a.cols)), stream,
                         a.kind == SW_NORM_LAYER ? 1 : 0, a.x, a.gamma, a.beta, a.y, a.stats, a.rows, a.cols, a.eps);
}

cudaError_t launch_norm_backward(const NormBackwardRows& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1) return cudaErrorInvalidValue;
    // The parameter gradients first: dx may be dy, which they read.
    if (a.dgamma || a.dbeta) {
        const dim3 grid(blocks_for(static_cast<uint64_t>(a.cols), kParamThreads));
        const cudaError_t st = launch_kernel(norm_backward_param_kernel, grid, dim3(kParamThreads), stream, a.x, a.stats,
                                             a.dy, a.dgamma, a.dbeta, a.rows, a.cols, a.accumulate ? 1 : 0);
        if (st != cudaSuccess) return st;
    }
    return launch_kernel(norm_backward_dx_kernel, dim3(row_blocks(a.rows)), dim3(row_threads(a.cols)), stream,
                         a.kind == SW_NORM_LAYER ? 1 : 0, a.x, a.gamma, a.stats, a.dy, a.dx, a.rows, a.cols);
}

cudaError_t launch_activation(const ActivationArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    return launch_kernel(activation_kernel, dim3(blocks_for(a.count)), dim3(kThreads), stream, static_cast<int>(a.act),
                         a.x, a.y, a.count);
}

cudaError_t launch_activation_backward(const ActivationBackwardArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    return launch_kernel(activation_backward_kernel, dim3(blocks_for(a.count)), dim3(kThreads), stream,
                         static_cast<int>(a.act), a.x, a.dy, a.dx, a.count);
}

cudaError_t launch_glu(const GluArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1) return cudaErrorInvalidValue;
    const auto n = static_cast<uint64_t>(a.rows) * static_cast<uint64_t>(a.cols);
    return launch_kernel(glu_kernel, dim3(blocks_for(n)), dim3(kThreads), stream, static_cast<int>(a.act), a.gu, a.h,
                         a.rows, a.cols);
}

cudaError_t launch_glu_backward(const GluBackwardArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1) return cudaErrorInvalidValue;
    const auto n = static_cast<uint64_t>(a.rows) * static_cast<uint64_t>(a.cols);
    return launch_kernel(glu_backward_kernel, dim3(blocks_for(n)), dim3(kThreads), stream, static_cast<int>(a.act), a.gu,
                         a.dh, a.dgu, a.rows, a.cols);
}

cudaError_t launch_dropout(const DropoutArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    return launch_kernel(dropout_kernel, dim3(blocks_for(a.count)), dim3(kThreads), stream, a.x, a.y, a.count,
                         a.threshold, a.keep, a.seed, a.counter);
}

cudaError_t launch_embedding(const EmbeddingArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1 || a.shard_rows < 0) return cudaErrorInvalidValue;
    const auto n = static_cast<uint64_t>(a.rows) * static_cast<uint64_t>(a.cols);
    return launch_kernel(embedding_kernel, dim3(blocks_for(n)), dim3(kThreads), stream, a.table, a.shard_rows, a.ids,
                         a.vocab_offset, a.out, a.rows, a.cols);
}

cudaError_t launch_embedding_backward(const EmbeddingBackwardArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 0 || a.cols < 1 || a.shard_rows < 0) return cudaErrorInvalidValue;
    if (a.shard_rows == 0) return cudaSuccess; // no row of the table: nothing to clear or add
    if (!a.accumulate) {
        const auto n = static_cast<uint64_t>(a.shard_rows) * static_cast<uint64_t>(a.cols);
        const cudaError_t st = launch_kernel(zero_kernel, dim3(blocks_for(n)), dim3(kThreads), stream, a.dtable, n);
        if (st != cudaSuccess) return st;
    }
    if (a.rows == 0) return cudaSuccess;
    const dim3 grid(blocks_for(static_cast<uint64_t>(a.cols), kParamThreads));
    return launch_kernel(embedding_backward_kernel, grid, dim3(kParamThreads), stream, a.dout, a.ids, a.vocab_offset,
                         a.dtable, a.shard_rows, a.rows, a.cols);
}

cudaError_t launch_cross_entropy_partial(const CrossEntropyPartialArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1 || a.ld < a.cols) return cudaErrorInvalidValue;
    return launch_kernel(cross_entropy_partial_kernel, dim3(row_blocks(a.rows)), dim3(row_threads(a.cols)), stream,
                         a.logits, a.rows, a.cols, a.ld, a.ids, a.vocab_offset, a.stats);
}

cudaError_t launch_cross_entropy_partial_tree(const CrossEntropyPartialTreeArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 0 || a.ld < a.cols || a.parts < 1 || a.leaf < 1) return cudaErrorInvalidValue;
    const int64_t nleaves = a.cols == 0 ? 0 : (a.cols - 1) / a.leaf + 1;
    // Threads: one per leaf (a power of two >= the leaves, at least 32), up to kRowThreadsMax leaves at a time.
    const unsigned threads = row_threads(2 * std::min<int64_t>(nleaves, kRowThreadsMax));
    return launch_kernel(cross_entropy_partial_tree_kernel, dim3(row_blocks(a.rows)), dim3(threads), stream,
                         a.logits, a.rows, a.cols, a.ld, a.ids, a.vocab_offset, a.gathered, a.parts, a.leaf,
                         a.include_max ? 1 : 0, a.out);
}

cudaError_t launch_cross_entropy_combine(const CrossEntropyCombineArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.parts < 1) return cudaErrorInvalidValue;
    return launch_kernel(cross_entropy_combine_kernel, dim3(blocks_for(static_cast<uint64_t>(a.rows))), dim3(kThreads),
                         stream, a.stats, a.parts, a.rows, a.ids, a.vocab_size, a.lse, a.loss);
}

cudaError_t launch_cross_entropy_backward(const CrossEntropyBackwardArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.rows < 1 || a.cols < 1 || a.ld < a.cols) return cudaErrorInvalidValue;
    const auto n = static_cast<uint64_t>(a.rows) * static_cast<uint64_t>(a.cols);
    return launch_kernel(cross_entropy_backward_kernel, dim3(blocks_for(n)), dim3(kThreads), stream, a.logits, a.rows,
                         a.cols, a.ld, a.ids, a.vocab_offset, a.vocab_size, a.lse, a.dloss, a.dlogits);
}


// ================================================================================================ optimizers
// SGD, AdamW, the sum of squares (global-norm clipping) and scaling (ABI 7; semantics in shardwise.h, descriptions in
// core/row_ops.h). Parameters and state are fp32, the gradient F32, F16 or BF16 widened exactly (Elem<T>).
// The element-wise kernels (grid-stride, each thread reading an element's inputs before writing its outputs) compute
// the CPU backend's fp32 expressions (cpu/row_ops.cpp: sgd_range, adamw_range, scale_range) in the same order, each
// operation rounded on its own: nvcc contracts a * b + c into an FMA by default and the CPU build does not, so the
// products and sums go through the *_rn intrinsics, which are never contracted; division and square root are the
// IEEE ones (__fdiv_rn, __fsqrt_rn), as std::sqrt on the host. The results are then the CPU's bits.
// sum_squares: one thread per kSumSquaresBlock block summing its elements in order in double, the block sums added in
// block order onto (accumulate ? *out : 0): the CPU backend's order (backend_cpu.cpp), hence its bits, deterministic.
namespace {

#if defined(SW_CUDA_HOST_EMULATION)
// The emulation build compiles for the host, like the CPU backend: plain operators (no FMA contraction there).
inline float mul_rn(float a, float b) { return a * b; }
inline float add_rn(float a, float b) { return a + b; }
inline float sub_rn(float a, float b) { return a - b; }
inline float div_rn(float a, float b) { return a / b; }
inline float sqrt_rn(float a) { return sqrtf(a); }
inline double dmul_rn(double a, double b) { return a * b; }
inline double dadd_rn(double a, double b) { return a + b; }
#else
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double dmul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double dadd_rn(double a, double b) { return __dadd_rn(a, b); }
#endif

// g = grad + weight_decay * param; with a momentum buffer: buf = momentum * buf + g, g = nesterov ? g + momentum * buf
// : buf; param = param - lr * g.
template <class T>
__global__ void sgd_kernel(float* __restrict__ param, const typename Storage<T>::type* __restrict__ grad,
                           float* __restrict__ buf, uint64_t count, float lr, float momentum, float weight_decay,
                           int nesterov) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const float p = param[i];
        float g = add_rn(Elem<T>::to_float(grad[i]), mul_rn(weight_decay, p));
        if (buf) {
            const float b = add_rn(mul_rn(momentum, buf[i]), g);
            buf[i] = b;
            g = nesterov ? add_rn(g, mul_rn(momentum, b)) : b;
        }
        param[i] = sub_rn(p, mul_rn(lr, g));
    }
}

// param = param * (1 - lr * weight_decay); m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g * g;
// param = param - lr * (m / bias1) / (sqrt(v / bias2) + eps).
template <class T>
__global__ void adamw_kernel(float* __restrict__ param, const typename Storage<T>::type* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, uint64_t count, float lr, float beta1,
                             float beta2, float eps, float weight_decay, float bias1, float bias2) {
    const float decay = sub_rn(1.0f, mul_rn(lr, weight_decay));
    const float c1 = sub_rn(1.0f, beta1), c2 = sub_rn(1.0f, beta2);
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
        const float g = Elem<T>::to_float(grad[i]);
        const float mi = add_rn(mul_rn(beta1, m[i]), mul_rn(c1, g));
        const float vi = add_rn(mul_rn(beta2, v[i]), mul_rn(mul_rn(c2, g), g));
        m[i] = mi;
        v[i] = vi;
        const float p = mul_rn(param[i], decay);
        param[i] = sub_rn(p, div_rn(mul_rn(lr, div_rn(mi, bias1)), add_rn(sqrt_rn(div_rn(vi, bias2)), eps)));
    }
}

// x[i] = (T)(float(x[i]) * alpha), one rounding to T.
template <class T>
__global__ void scale_kernel(typename Storage<T>::type* x, uint64_t count, float alpha) {
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        x[i] = Elem<T>::from_float(mul_rn(Elem<T>::to_float(x[i]), alpha));
}

// Sum of squares of block k: elements [k * kSumSquaresBlock, min(count, (k + 1) * kSumSquaresBlock)) in order, in
// double (each square of a widened fp32 value is exact in double; the sum is rounded at every step).
template <class T>
__device__ __forceinline__ double block_sum_squares(const typename Storage<T>::type* x, uint64_t count, uint64_t k) {
    const uint64_t b = k * kSumSquaresBlock;
    const uint64_t e = count - b < kSumSquaresBlock ? count : b + kSumSquaresBlock;
    double s = 0.0;
    for (uint64_t i = b; i < e; ++i) {
        const double d = Elem<T>::to_float(x[i]);
        s = dadd_rn(s, dmul_rn(d, d));
    }
    return s;
}

// Pass 1 of the two-pass path: part[k] = block k's sum, one thread per block.
template <class T>
__global__ void sum_squares_blocks_kernel(const typename Storage<T>::type* __restrict__ x, uint64_t count,
                                          uint64_t blocks, double* __restrict__ part) {
    for (uint64_t k = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks;
         k += static_cast<uint64_t>(gridDim.x) * blockDim.x)
        part[k] = block_sum_squares<T>(x, count, k);
}

// Pass 2 (one thread): *out = (accumulate ? *out : 0) + part[0] + part[1] + ... in block order. With blocks == 0 it
// writes 0 (count == 0 without accumulation).
__global__ void sum_squares_combine_kernel(const double* __restrict__ part, uint64_t blocks, double* __restrict__ out,
                                           int accumulate) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double total = accumulate ? *out : 0.0;
    for (uint64_t k = 0; k < blocks; ++k) total = dadd_rn(total, part[k]);
    *out = total;
}

// The one-block path (no scratch): the threads of one block take blockDim.x consecutive blocks at a time, each
// writing its block's sum to shared memory; thread 0 adds them in block order onto its running total.
constexpr unsigned kSumSquaresThreads = 256;

template <class T>
__global__ void sum_squares_one_block_kernel(const typename Storage<T>::type* __restrict__ x, uint64_t count,
                                             uint64_t blocks, double* __restrict__ out, int accumulate) {
    __shared__ double part[kSumSquaresThreads];
    if (blockIdx.x != 0) return; // launched with one block: the guard keeps every barrier reached by the whole block
    const unsigned t = threadIdx.x, n = blockDim.x;
    double total = 0.0;
    if (t == 0) total = accumulate ? *out : 0.0;
    for (uint64_t base = 0; base < blocks; base += n) {
        const uint64_t k = base + t;
        part[t] = k < blocks ? block_sum_squares<T>(x, count, k) : 0.0;
        __syncthreads();
        if (t == 0) {
            const uint64_t here = blocks - base < n ? blocks - base : n;
            for (uint64_t j = 0; j < here; ++j) total = dadd_rn(total, part[j]);
        }
        __syncthreads();
    }
    if (t == 0) *out = total;
}

// Stream-ordered scratch for the two-pass path. The emulation runs every kernel at its launch: host memory, freed at
// once.
#if defined(SW_CUDA_HOST_EMULATION)
inline cudaError_t scratch_alloc(void** p, size_t bytes, cudaStream_t) {
    *p = std::malloc(bytes);
    return *p ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t scratch_free(void* p, cudaStream_t) {
    std::free(p);
    return cudaSuccess;
}
inline bool scratch_unsupported(cudaError_t) { return false; }
#else
inline cudaError_t scratch_alloc(void** p, size_t bytes, cudaStream_t stream) { return cudaMallocAsync(p, bytes, stream); }
inline cudaError_t scratch_free(void* p, cudaStream_t stream) { return cudaFreeAsync(p, stream); }
// A device (or driver) without memory pools: the one-block path instead.
inline bool scratch_unsupported(cudaError_t st) { return st == cudaErrorNotSupported; }
#endif

enum class SumSquaresPath { Auto, OneBlock, TwoPass };

template <class T>
cudaError_t sum_squares_as(const SumSquaresArgs& a, SumSquaresPath path, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    const auto* x = static_cast<const S*>(a.x);
    const int acc = a.accumulate ? 1 : 0;
    const uint64_t blocks = a.count / kSumSquaresBlock + (a.count % kSumSquaresBlock != 0 ? 1 : 0);
    if (path == SumSquaresPath::Auto) path = blocks <= kSumSquaresThreads ? SumSquaresPath::OneBlock : SumSquaresPath::TwoPass;
    if (path == SumSquaresPath::TwoPass && blocks > 0) { // no block (count == 0): nothing for a scratch to hold
        void* scratch = nullptr;
        const cudaError_t st = scratch_alloc(&scratch, blocks * sizeof(double), stream);
        if (st == cudaSuccess) {
            double* part = static_cast<double*>(scratch);
            cudaError_t run = launch_kernel(sum_squares_blocks_kernel<T>, dim3(blocks_for(blocks, kParamThreads)),
                                            dim3(kParamThreads), stream, x, a.count, blocks, part);
            if (run == cudaSuccess)
                run = launch_kernel(sum_squares_combine_kernel, dim3(1), dim3(1), stream, part, blocks, a.out, acc);
            const cudaError_t freed = scratch_free(scratch, stream); // after the kernels in stream order
            return run != cudaSuccess ? run : freed;
        }
        if (!scratch_unsupported(st)) return st;
        (void)cudaGetLastError();
    }
    const unsigned threads = static_cast<unsigned>(std::min<uint64_t>(kSumSquaresThreads, std::max<uint64_t>(blocks, 32)));
    return launch_kernel(sum_squares_one_block_kernel<T>, dim3(1), dim3(threads), stream, x, a.count, blocks, a.out, acc);
}

template <class T>
cudaError_t sgd_as(const SgdArgs& a, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(sgd_kernel<T>, dim3(blocks_for(a.count)), dim3(kThreads), stream, a.param,
                         static_cast<const S*>(a.grad), a.momentum_buf, a.count, a.lr, a.momentum, a.weight_decay,
                         a.nesterov ? 1 : 0);
}

template <class T>
cudaError_t adamw_as(const AdamWArgs& a, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(adamw_kernel<T>, dim3(blocks_for(a.count)), dim3(kThreads), stream, a.param,
                         static_cast<const S*>(a.grad), a.m, a.v, a.count, a.lr, a.beta1, a.beta2, a.eps, a.weight_decay,
                         a.bias1, a.bias2);
}

template <class T>
cudaError_t scale_as(const ScaleArgs& a, cudaStream_t stream) {
    using S = typename Storage<T>::type;
    return launch_kernel(scale_kernel<T>, dim3(blocks_for(a.count)), dim3(kThreads), stream, static_cast<S*>(a.x), a.count,
                         a.alpha);
}

} // namespace

cudaError_t launch_sgd_step(const SgdArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    switch (a.grad_type) {
    case SW_DTYPE_F32: return sgd_as<float>(a, stream);
    case SW_DTYPE_F16: return sgd_as<F16>(a, stream);
    case SW_DTYPE_BF16: return sgd_as<BF16>(a, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_adamw_step(const AdamWArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    switch (a.grad_type) {
    case SW_DTYPE_F32: return adamw_as<float>(a, stream);
    case SW_DTYPE_F16: return adamw_as<F16>(a, stream);
    case SW_DTYPE_BF16: return adamw_as<BF16>(a, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_sum_squares(const SumSquaresArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count == 0 && a.accumulate) return cudaSuccess; // adds nothing to *out
    switch (a.dtype) {
    case SW_DTYPE_F32: return sum_squares_as<float>(a, SumSquaresPath::Auto, stream);
    case SW_DTYPE_F16: return sum_squares_as<F16>(a, SumSquaresPath::Auto, stream);
    case SW_DTYPE_BF16: return sum_squares_as<BF16>(a, SumSquaresPath::Auto, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t launch_scale(const ScaleArgs& a, cudaStream_t stream) {
    (void)cudaGetLastError();
    if (a.count < 1) return cudaErrorInvalidValue;
    switch (a.dtype) {
    case SW_DTYPE_F32: return scale_as<float>(a, stream);
    case SW_DTYPE_F16: return scale_as<F16>(a, stream);
    case SW_DTYPE_BF16: return scale_as<BF16>(a, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace sw::cuda
