// A host-memory emulation of the CUDA backend plugin (core/cuda_plugin_api.h), for testing the core's CUDA paths —
// device dispatch, streams and events, stream wrapping, collectives ordered into streams through the
// wait-flag protocol — on machines without a GPU. It is a test double: it runs nothing on a GPU and
// proves nothing about the real plugin (libshardwise_cuda), which needs a GPU machine.
//
// "Device memory" is host memory; a "cudaStream_t" is a sw::cpu::Stream (an in-order worker thread);
// an "event" is a marker with a generation counter; stream_wait_flag queues a task that polls the flag.
// Its GEMM takes what the real plugin takes (A = B in f32, f16 or bf16; C in f32 or A's type; bias in C's type): the
// inputs widened exactly, products summed in double (more exact than the kernels' fp32: a check's tolerance for fp32
// accumulation covers both), alpha, beta, bias and GeLU in double, rounded to float and then to C's type; other
// combinations fail with SW_ERR_UNSUPPORTED naming them, as the real plugin does. With k_leaf > 0 (TP-invariant
// numerics, ABI 8) it computes the real tree kernel's arithmetic instead (cuda/gemm_tree.cu), so that an emulated
// device is TP-invariant too: per leaf of k_leaf elements an fp32 fmaf chain from +0 in k order, the leaves combined
// by the fixed binary tree of core/tree_reduction.h in fp32, then once alpha * T (beta == 0) or fmaf(alpha, T,
// beta * C), + bias, GeLU (the double GeLU above, rounded to float), rounded to C's type. Its reduce_sum sums f32, f16
// and bf16 in fp32 (f64 in double, i32 modulo 2^32), in source order or (tree = 1, SW_REDUCE_SUM_TREE) in the tree's
// order over the sources, and rounds once (the real kernel's arithmetic).
#include "core/cuda_plugin_api.h"
#include "core/dtype.h"
#include "core/row_ops.h"
#include "core/tree_reduction.h"
#include "cpu/stream.h"
#include "../float16_ref.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using sw::cpu::Stream;

struct Event {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t recorded = 0, completed = 0;
    std::chrono::steady_clock::time_point time{};
};

Stream* S(void* s) { return static_cast<Stream*>(s); }

// An event handle owns a reference; queued work holds others, so destroying a recorded event whose marker has
// not run yet is safe (as cudaEventDestroy is).
using EventRef = std::shared_ptr<Event>;
EventRef& E(void* e) { return *static_cast<EventRef*>(e); }

sw_status fail(std::string* err, const char* what) {
    if (err) *err = what;
    return SW_ERR_INVALID_ARGUMENT;
}

sw_status versions(std::string* out, std::string*) { *out = "emulated (host memory, no GPU)"; return SW_OK; }
// One device, or SHARDWISE_EMULATED_CUDA_DEVICES of them (all the same host memory).
int32_t emulated_devices() {
    const char* env = std::getenv("SHARDWISE_EMULATED_CUDA_DEVICES");
    const int n = env ? std::atoi(env) : 1;
    return n >= 1 && n <= 64 ? n : 1;
}
sw_status device_count(int32_t* n, std::string*) { *n = emulated_devices(); return SW_OK; }
sw_status set_device(int32_t ordinal, std::string* err) {
    return ordinal >= 0 && ordinal < emulated_devices() ? SW_OK : fail(err, "emulated: ordinal out of range");
}
sw_status device_info(int32_t ordinal, sw_device_info* info, std::string* err) {
    if (ordinal < 0 || ordinal >= emulated_devices()) return fail(err, "emulated: ordinal out of range");
    std::memset(info, 0, sizeof *info);
    info->backend = SW_BACKEND_CUDA;
    info->num_threads = 1;
    info->total_memory_bytes = 1ull << 30;
    std::strcpy(info->name, "Emulated CUDA device (host memory)");
    return SW_OK;
}
sw_status enable_peer(int32_t, int32_t, int32_t* enabled, std::string*) { *enabled = 1; return SW_OK; }
sw_status malloc_device(int32_t, uint64_t bytes, void** p, std::string* err) {
    *p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    return *p ? SW_OK : (err ? (*err = "emulated: out of memory", SW_ERR_OUT_OF_MEMORY) : SW_ERR_OUT_OF_MEMORY);
}
// Wait-flag tasks whose flag has not been set yet, and frees made meanwhile: on a GPU, cudaFree and cudaFreeHost wait
// for the whole device, so such a free waits for a wait-flag kernel whose host side may need the freeing thread (a
// deadlock no timeout breaks). The core must defer them (core/objects.h, DeferredFrees); the checks read the count
// through emulated_cuda_unsafe_frees. A wait whose flag is already set but not yet seen by its task (it polls every
// 50 us) does not count: that kernel finishes on its own, and the core's gate opens exactly when the flag is set.
struct PendingWait {
    const uint32_t* flag;
    uint32_t target;
};
std::mutex g_waits_mu;
std::vector<PendingWait> g_waits; // queued wait-flag tasks not yet finished
std::atomic<int64_t> g_unsafe_frees{0};
bool flag_reached(const uint32_t* f, uint32_t target) {
    return static_cast<int32_t>(__atomic_load_n(f, __ATOMIC_ACQUIRE) - target) >= 0;
}
void note_free() {
    std::lock_guard<std::mutex> lock(g_waits_mu);
    for (const PendingWait& w : g_waits)
        if (!flag_reached(w.flag, w.target)) {
            g_unsafe_frees.fetch_add(1);
            return;
        }
}
sw_status free_device(int32_t, void* p, std::string*) {
    note_free();
    std::free(p);
    return SW_OK;
}
sw_status malloc_host(uint64_t bytes, void** host, void** device, std::string*) {
    *host = *device = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    return SW_OK;
}
sw_status free_host(void* p, std::string*) {
    note_free();
    std::free(p);
    return SW_OK;
}
sw_status pointer_device(const void*, int32_t* ordinal, std::string*) { *ordinal = 0; return SW_OK; }
sw_status stream_create(int32_t, void** s, std::string*) { *s = new Stream(); return SW_OK; }
sw_status stream_destroy(int32_t, void* s, std::string*) { delete S(s); return SW_OK; }
sw_status stream_synchronize(int32_t, void* s, std::string* err) {
    std::string m;
    const sw_status st = S(s)->synchronize(&m);
    if (st != SW_OK && err) *err = m;
    return st;
}
sw_status event_create(int32_t, void** e, std::string*) { *e = new EventRef(std::make_shared<Event>()); return SW_OK; }
sw_status event_destroy(int32_t, void* e, std::string*) { delete static_cast<EventRef*>(e); return SW_OK; }
sw_status event_record(int32_t, void* ev, void* s, std::string*) {
    EventRef e = E(ev);
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(e->mu);
        gen = ++e->recorded;
    }
    S(s)->enqueue([e, gen] {
        std::lock_guard<std::mutex> l(e->mu);
        e->completed = gen;
        e->time = std::chrono::steady_clock::now();
        e->cv.notify_all();
    }, true);
    return SW_OK;
}
sw_status event_synchronize(int32_t, void* ev, std::string*) {
    Event* e = E(ev).get();
    std::unique_lock<std::mutex> l(e->mu);
    const uint64_t gen = e->recorded;
    e->cv.wait(l, [&] { return e->completed >= gen; });
    return SW_OK;
}
sw_status event_query(int32_t, void* ev, int32_t* done, std::string*) {
    Event* e = E(ev).get();
    std::lock_guard<std::mutex> l(e->mu);
    *done = e->completed >= e->recorded;
    return SW_OK;
}
sw_status event_elapsed(int32_t, void* a, void* b, float* ms, std::string*) {
    *ms = std::chrono::duration<float, std::milli>(E(b)->time - E(a)->time).count();
    return SW_OK;
}
sw_status stream_wait_event(int32_t, void* s, void* ev, std::string*) {
    EventRef e = E(ev);
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(e->mu);
        gen = e->recorded;
    }
    S(s)->enqueue([e, gen] {
        std::unique_lock<std::mutex> l(e->mu);
        e->cv.wait(l, [&] { return e->completed >= gen; });
    }, true);
    return SW_OK;
}
sw_status memcpy_async(int32_t, void* dst, const void* src, uint64_t bytes, void* s, std::string*) {
    S(s)->enqueue([=] { std::memmove(dst, src, bytes); });
    return SW_OK;
}
sw_status memset_async(int32_t, void* dst, uint8_t v, uint64_t bytes, void* s, std::string*) {
    S(s)->enqueue([=] { std::memset(dst, v, bytes); });
    return SW_OK;
}
// Element i of a matrix of type t as float (16-bit values widened exactly), and a float rounded once to type t.
float load(sw_dtype t, const void* p, int64_t i) {
    switch (t) {
    case SW_DTYPE_F16: return sw_ref_f16_to_float(static_cast<const uint16_t*>(p)[i]);
    case SW_DTYPE_BF16: return sw_ref_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
    }
}
void store(sw_dtype t, void* p, int64_t i, float v) {
    switch (t) {
    case SW_DTYPE_F16: static_cast<uint16_t*>(p)[i] = sw_ref_float_to_f16(v); break;
    case SW_DTYPE_BF16: static_cast<uint16_t*>(p)[i] = sw_ref_float_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
    }
}
bool gemm_type(sw_dtype t) { return t == SW_DTYPE_F32 || t == SW_DTYPE_F16 || t == SW_DTYPE_BF16; }

double gelu64(double v) { return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// The tree kernel's arithmetic (cuda/gemm_tree.cu), element by element, in fp32. Separate statements, and this file is
// compiled as ISO C++ without -mfma: no product and sum are contracted into an FMA beyond the explicit std::fma.
void tree_gemm(const sw::GemmProblem& g) {
    const int64_t nleaves = g.k == 0 ? 0 : (g.k - 1) / g.k_leaf + 1;
    std::vector<float> leaves(static_cast<size_t>(nleaves));
    for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) {
            for (int64_t l = 0; l < nleaves; ++l) {
                float acc = 0.0f;
                const int64_t end = std::min(g.k, (l + 1) * g.k_leaf);
                for (int64_t p = l * g.k_leaf; p < end; ++p)
                    acc = std::fma(load(g.a_type, g.a, g.trans_a ? p * g.lda + i : i * g.lda + p),
                                   load(g.b_type, g.b, g.trans_b ? j * g.ldb + p : p * g.ldb + j), acc);
                leaves[static_cast<size_t>(l)] = acc;
            }
            const float root =
                nleaves == 0 ? 0.0f : sw::tree::sum(leaves.data(), nleaves, [](float x, float y) { return x + y; });
            float v;
            if (g.beta == 0.0f) {
                v = g.alpha * root; // C is never read
            } else {
                const float scaled_c = g.beta * load(g.c_type, g.c, i * g.ldc + j);
                v = std::fma(g.alpha, root, scaled_c);
            }
            if (g.bias) v = v + load(g.c_type, g.bias, j);
            if (g.epilogue == SW_EPILOGUE_GELU) v = static_cast<float>(gelu64(v));
            store(g.c_type, g.c, i * g.ldc + j, v);
        }
}

sw_status gemm(int32_t, const sw::GemmProblem* d, sw::cuda::GemmAlgo, void* s, std::string* err) {
    if (!gemm_type(d->a_type) || d->b_type != d->a_type || (d->c_type != SW_DTYPE_F32 && d->c_type != d->a_type) ||
        d->bias_type != d->c_type || d->accum_type != SW_DTYPE_F32) {
        if (err)
            *err = std::string("emulated GEMM: a = ") + sw::dtype_name(d->a_type) + ", b = " + sw::dtype_name(d->b_type) +
                   ", c = " + sw::dtype_name(d->c_type) + " is not supported";
        return SW_ERR_UNSUPPORTED;
    }
    if (d->k_leaf < 0 || d->k_leaf % 2 != 0) return fail(err, "emulated GEMM: k_leaf must be 0 or even and positive");
    const sw::GemmProblem g = *d;
    if (g.k_leaf > 0) {
        S(s)->enqueue([g] { tree_gemm(g); });
        return SW_OK;
    }
    S(s)->enqueue([g] {
        for (int64_t i = 0; i < g.m; ++i)
            for (int64_t j = 0; j < g.n; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < g.k; ++p)
                    acc += double(load(g.a_type, g.a, g.trans_a ? p * g.lda + i : i * g.lda + p)) *
                           double(load(g.b_type, g.b, g.trans_b ? j * g.ldb + p : p * g.ldb + j));
                double v = g.alpha * acc + (g.beta != 0 ? g.beta * double(load(g.c_type, g.c, i * g.ldc + j)) : 0.0);
                if (g.bias) v += load(g.c_type, g.bias, j);
                if (g.epilogue == SW_EPILOGUE_GELU) v = gelu64(v);
                store(g.c_type, g.c, i * g.ldc + j, static_cast<float>(v));
            }
    });
    return SW_OK;
}
sw_status copy_2d(int32_t, void* dst, int64_t ldd, const void* src, int64_t lds, int64_t rows, int64_t cols, int32_t esz,
                  void* s, std::string*) {
    S(s)->enqueue([=] {
        for (int64_t i = 0; i < rows; ++i)
            std::memmove(static_cast<char*>(dst) + i * ldd * esz, static_cast<const char*>(src) + i * lds * esz, cols * esz);
    });
    return SW_OK;
}
// One element of every source summed in A (float, double or uint32_t), in source order or in the tree's order.
template <class A, class Load>
A sum_sources(size_t nsrc, bool tree, Load load_source) {
    A x[64];
    for (size_t q = 0; q < nsrc; ++q) x[q] = load_source(q);
    if (tree) return sw::tree::sum(x, static_cast<int64_t>(nsrc), [](A l, A r) { return static_cast<A>(l + r); });
    A acc = x[0];
    for (size_t q = 1; q < nsrc; ++q) acc = static_cast<A>(acc + x[q]);
    return acc;
}

sw_status reduce_sum(int32_t, sw_dtype t, const void* const* srcs, int32_t nsrc, void* const* dsts, int32_t ndst,
                     uint64_t count, int32_t tree, void* s, std::string* err) {
    if (t != SW_DTYPE_F32 && t != SW_DTYPE_F16 && t != SW_DTYPE_BF16 && t != SW_DTYPE_F64 && t != SW_DTYPE_I32)
        return fail(err, "emulated reduce_sum: f32, f64, f16, bf16, i32 only");
    if (nsrc < 1 || nsrc > 64 || ndst < 1 || ndst > 64)
        return fail(err, "emulated reduce_sum: 1..64 sources and destinations");
    if (tree != 0 && tree != 1) return fail(err, "emulated reduce_sum: tree must be 0 or 1");
    std::vector<const void*> src(srcs, srcs + nsrc);
    std::vector<void*> dst(dsts, dsts + ndst);
    const bool by_tree = tree == 1;
    S(s)->enqueue([=] {
        for (uint64_t i = 0; i < count; ++i) {
            const auto e = static_cast<int64_t>(i);
            if (t == SW_DTYPE_F64) {
                const double v = sum_sources<double>(src.size(), by_tree,
                                                     [&](size_t q) { return static_cast<const double*>(src[q])[e]; });
                for (void* d : dst) static_cast<double*>(d)[e] = v;
            } else if (t == SW_DTYPE_I32) {
                const uint32_t v = sum_sources<uint32_t>(src.size(), by_tree, [&](size_t q) {
                    return static_cast<uint32_t>(static_cast<const int32_t*>(src[q])[e]);
                });
                for (void* d : dst) static_cast<int32_t*>(d)[e] = static_cast<int32_t>(v);
            } else { // fp32, one rounding at the end
                const float v = sum_sources<float>(src.size(), by_tree, [&](size_t q) { return load(t, src[q], e); });
                for (void* d : dst) store(t, d, e, v);
            }
        }
    });
    return SW_OK;
}
sw_status convert(int32_t, sw_dtype, const void*, sw_dtype, void*, uint64_t, void*, std::string* err) {
    return fail(err, "emulated: convert not emulated");
}
sw_status bias_act(int32_t, sw_dtype, void*, int64_t, int64_t, int64_t, const void*, sw_epilogue, void*, std::string* err) {
    return fail(err, "emulated: bias_act not emulated");
}
sw_status wait_flag(int32_t, volatile uint32_t* flag, uint32_t target, void* s, std::string*) {
    uint32_t* f = const_cast<uint32_t*>(flag);
    {
        std::lock_guard<std::mutex> lock(g_waits_mu);
        g_waits.push_back({f, target});
    }
    S(s)->enqueue([f, target] {
        while (!flag_reached(f, target)) std::this_thread::sleep_for(std::chrono::microseconds(50));
        std::lock_guard<std::mutex> lock(g_waits_mu);
        for (size_t i = 0; i < g_waits.size(); ++i)
            if (g_waits[i].flag == f && g_waits[i].target == target) {
                g_waits.erase(g_waits.begin() + static_cast<std::ptrdiff_t>(i));
                break;
            }
    }, true);
    return SW_OK;
}

sw_status gelu_backward(int32_t, sw_dtype t, const void*, const void*, void*, uint64_t, void*, std::string* err) {
    (void)t;
    return fail(err, "emulated: gelu_backward not emulated");
}

// Counts release_stream calls (the test reads it through emulated_cuda_released_streams).
std::atomic<int64_t> g_released_streams{0};
sw_status release_stream(int32_t, void* s, std::string* err) {
    g_released_streams.fetch_add(1);
    return stream_synchronize(0, s, err);
}

sw_status unscale_check(int32_t, sw_dtype, void*, uint64_t, float, float*, void*, std::string* err) {
    return fail(err, "emulated: unscale_check not emulated");
}
sw_status axpy(int32_t, sw_dtype, float, const void*, float*, uint64_t, void*, std::string* err) {
    return fail(err, "emulated: axpy not emulated");
}

// Attention and normalization (ABI 7): the CPU backend's loops (cpu/row_ops.cpp) over all rows, queued on the stream
// with a copy of the (validated) description.
sw_status softmax(int32_t, const sw::SoftmaxRows& args, void* s, std::string*) {
    const sw::SoftmaxRows a = args;
    S(s)->enqueue([a] { sw::cpu::softmax_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status softmax_backward(int32_t, const sw::SoftmaxBackwardRows& args, void* s, std::string*) {
    const sw::SoftmaxBackwardRows a = args;
    S(s)->enqueue([a] { sw::cpu::softmax_backward_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status norm(int32_t, const sw::NormRows& args, void* s, std::string*) {
    const sw::NormRows a = args;
    S(s)->enqueue([a] { sw::cpu::norm_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status norm_backward(int32_t, const sw::NormBackwardRows& args, void* s, std::string*) {
    const sw::NormBackwardRows a = args;
    S(s)->enqueue([a] {
        sw::cpu::norm_backward_param_cols(a, 0, a.cols); // reads dy, which dx may overwrite in place: first
        sw::cpu::norm_backward_dx_rows(a, 0, a.rows);
    });
    return SW_OK;
}

// Activations, gated units, dropout, embedding and cross-entropy (ABI 7): the CPU backend's loops over the whole range.
sw_status activation(int32_t, const sw::ActivationArgs& args, void* s, std::string*) {
    const sw::ActivationArgs a = args;
    S(s)->enqueue([a] { sw::cpu::activation_range(a, 0, a.count); });
    return SW_OK;
}
sw_status activation_backward(int32_t, const sw::ActivationBackwardArgs& args, void* s, std::string*) {
    const sw::ActivationBackwardArgs a = args;
    S(s)->enqueue([a] { sw::cpu::activation_backward_range(a, 0, a.count); });
    return SW_OK;
}
sw_status glu(int32_t, const sw::GluArgs& args, void* s, std::string*) {
    const sw::GluArgs a = args;
    S(s)->enqueue([a] { sw::cpu::glu_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status glu_backward(int32_t, const sw::GluBackwardArgs& args, void* s, std::string*) {
    const sw::GluBackwardArgs a = args;
    S(s)->enqueue([a] { sw::cpu::glu_backward_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status dropout(int32_t, const sw::DropoutArgs& args, void* s, std::string*) {
    const sw::DropoutArgs a = args;
    S(s)->enqueue([a] { sw::cpu::dropout_range(a, 0, a.count); });
    return SW_OK;
}
sw_status embedding(int32_t, const sw::EmbeddingArgs& args, void* s, std::string*) {
    const sw::EmbeddingArgs a = args;
    S(s)->enqueue([a] { sw::cpu::embedding_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status embedding_backward(int32_t, const sw::EmbeddingBackwardArgs& args, void* s, std::string*) {
    const sw::EmbeddingBackwardArgs a = args;
    S(s)->enqueue([a] {
        sw::cpu::embedding_backward_clear_rows(a, 0, a.shard_rows); // when not accumulating: before the scatter
        sw::cpu::embedding_backward_cols(a, 0, a.cols);
    });
    return SW_OK;
}
sw_status cross_entropy_partial(int32_t, const sw::CrossEntropyPartialArgs& args, void* s, std::string*) {
    const sw::CrossEntropyPartialArgs a = args;
    S(s)->enqueue([a] { sw::cpu::cross_entropy_partial_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status cross_entropy_partial_tree(int32_t, const sw::CrossEntropyPartialTreeArgs& args, void* s, std::string*) {
    const sw::CrossEntropyPartialTreeArgs a = args;
    S(s)->enqueue([a] { sw::cpu::cross_entropy_partial_tree_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status cross_entropy_combine(int32_t, const sw::CrossEntropyCombineArgs& args, void* s, std::string*) {
    const sw::CrossEntropyCombineArgs a = args;
    S(s)->enqueue([a] { sw::cpu::cross_entropy_combine_rows(a, 0, a.rows); });
    return SW_OK;
}
sw_status cross_entropy_backward(int32_t, const sw::CrossEntropyBackwardArgs& args, void* s, std::string*) {
    const sw::CrossEntropyBackwardArgs a = args;
    S(s)->enqueue([a] { sw::cpu::cross_entropy_backward_rows(a, 0, a.rows); });
    return SW_OK;
}

// Optimizers (ABI 7): the CPU backend's loops (cpu/row_ops.cpp) over the whole range; sum_squares sums the blocks in
// order and adds them in block order onto (accumulate ? *out : 0), as the CPU backend does (backend_cpu.cpp).
sw_status sgd_step(int32_t, const sw::SgdArgs& args, void* s, std::string*) {
    const sw::SgdArgs a = args;
    S(s)->enqueue([a] { sw::cpu::sgd_range(a, 0, a.count); });
    return SW_OK;
}
sw_status adamw_step(int32_t, const sw::AdamWArgs& args, void* s, std::string*) {
    const sw::AdamWArgs a = args;
    S(s)->enqueue([a] { sw::cpu::adamw_range(a, 0, a.count); });
    return SW_OK;
}
sw_status sum_squares(int32_t, const sw::SumSquaresArgs& args, void* s, std::string*) {
    const sw::SumSquaresArgs a = args;
    S(s)->enqueue([a] {
        const uint64_t blocks = (a.count + sw::kSumSquaresBlock - 1) / sw::kSumSquaresBlock;
        double total = a.accumulate ? *a.out : 0.0;
        for (uint64_t k = 0; k < blocks; ++k) total += sw::cpu::sum_squares_block(a, k);
        *a.out = total;
    });
    return SW_OK;
}
sw_status scale(int32_t, const sw::ScaleArgs& args, void* s, std::string*) {
    const sw::ScaleArgs a = args;
    S(s)->enqueue([a] { sw::cpu::scale_range(a, 0, a.count); });
    return SW_OK;
}

const sw::cuda::PluginApi kApi = {
    sw::cuda::kPluginAbi, versions, device_count, device_info, enable_peer, malloc_device, free_device, malloc_host,
    free_host, pointer_device, stream_create, stream_destroy, stream_synchronize, stream_wait_event, event_create,
    event_destroy, event_record, event_synchronize, event_query, event_elapsed, memcpy_async, memset_async, gemm,
    copy_2d, reduce_sum, convert, bias_act, wait_flag, gelu_backward, set_device, release_stream, unscale_check, axpy,
    softmax, softmax_backward, norm, norm_backward, activation, activation_backward, glu, glu_backward, dropout,
    embedding, embedding_backward, cross_entropy_partial, cross_entropy_combine, cross_entropy_backward, sgd_step,
    adamw_step, sum_squares, scale, cross_entropy_partial_tree,
};

} // namespace

extern "C" SW_API const sw::cuda::PluginApi* sw_cuda_plugin_api(void) { return &kApi; }
extern "C" SW_API int64_t emulated_cuda_released_streams(void) { return g_released_streams.load(); }
extern "C" SW_API int64_t emulated_cuda_unsafe_frees(void) { return g_unsafe_frees.load(); }
