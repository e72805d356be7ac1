// cuBLASLt GEMM path (GemmAlgo::Auto / CublasLt).
//
// Row-major through the transpose identity: a row-major R x C matrix with leading dimension ld is the
// column-major C x R matrix with the same ld, so the row-major C = op(A) op(B) (m x n) is computed as the
// column-major C^T = op(B)^T op(A)^T (n x m): cuBLASLt's "A" is our B and its "B" is our A, with the
// transposes carried over unchanged:
//   cuBLASLt A = our B memory: column-major (trans_b ? k : n) x (trans_b ? n : k), ld = ldb, op = trans_b
//   cuBLASLt B = our A memory: column-major (trans_a ? m : k) x (trans_a ? k : m), ld = lda, op = trans_a
//   cuBLASLt C = D = our C:    column-major n x m, ld = ldc
// cuBLASLt's bias vector has one entry per row of D, i.e. per column j of our C: exactly bias[n].
//
// Types: A and B in f32, f16 or bf16, C = D in f32 or A's type, the bias in C's type, alpha/beta f32
// (CUDA_R_32F scale type) and CUBLAS_COMPUTE_32F accumulation (CUBLAS_COMPUTE_32F_FAST_TF32 only for f32 inputs with
// allow_tf32): A/B CUDA_R_16BF or CUDA_R_16F with C/D CUDA_R_32F is one of cublasLtMatmul's documented combinations.
//
// Epilogues: BIAS, GELU, GELU_BIAS (cuBLASLt's GELU is the tanh approximation, as ours) are fused when
// cuBLASLt offers an algorithm for them and the bias is 16-byte aligned (misaligned bias vectors are not
// reliably supported by the fused epilogues). Otherwise the GEMM runs with the default epilogue and the
// bias/GeLU kernel (kernels.cu) finishes in the same stream.
//
// Resources, per device: one cuBLASLt handle (created lazily); per (device, stream): one 32 MiB workspace,
// created lazily and freed by stream_destroy (a workspace must never be used by two streams at once).
// The heuristic's choice is cached per problem key (shape, types, transposes, leading dimensions, epilogue,
// pointer alignments, workspace size), including "no algorithm" answers.
#include "cuda/common.h"

#include <cublasLt.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace sw::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

void check_lt(cublasStatus_t status, const char* call) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    const char* name = cublasLtGetStatusName(status);
    const char* text = cublasLtGetStatusString(status);
    const sw_status st = status == CUBLAS_STATUS_ALLOC_FAILED ? SW_ERR_OUT_OF_MEMORY
                         : status == CUBLAS_STATUS_NOT_SUPPORTED ? SW_ERR_UNSUPPORTED
                                                                 : SW_ERR_BACKEND;
    fail(st, call, " failed: ", name ? name : "?", " (", text ? text : "?", ", status ", static_cast<int>(status),
         ")");
}

// ---- RAII for cuBLASLt descriptors (destroy status ignored: nothing useful to do with it in a destructor)
struct MatmulDesc {
    cublasLtMatmulDesc_t h = nullptr;
    MatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
        check_lt(cublasLtMatmulDescCreate(&h, compute, scale), "cublasLtMatmulDescCreate");
    }
    ~MatmulDesc() { if (h) (void)cublasLtMatmulDescDestroy(h); }
    MatmulDesc(const MatmulDesc&) = delete;
    MatmulDesc& operator=(const MatmulDesc&) = delete;
    template <class T>
    void set(cublasLtMatmulDescAttributes_t attr, const T& value, const char* what) {
        check_lt(cublasLtMatmulDescSetAttribute(h, attr, &value, sizeof(T)), what);
    }
};

struct Layout {
    cublasLtMatrixLayout_t h = nullptr;
    Layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
        check_lt(cublasLtMatrixLayoutCreate(&h, type, rows, cols, ld), "cublasLtMatrixLayoutCreate");
    }
    ~Layout() { if (h) (void)cublasLtMatrixLayoutDestroy(h); }
    Layout(const Layout&) = delete;
    Layout& operator=(const Layout&) = delete;
};

struct Preference {
    cublasLtMatmulPreference_t h = nullptr;
    Preference() { check_lt(cublasLtMatmulPreferenceCreate(&h), "cublasLtMatmulPreferenceCreate"); }
    ~Preference() { if (h) (void)cublasLtMatmulPreferenceDestroy(h); }
    Preference(const Preference&) = delete;
    Preference& operator=(const Preference&) = delete;
    template <class T>
    void set(cublasLtMatmulPreferenceAttributes_t attr, const T& value, const char* what) {
        check_lt(cublasLtMatmulPreferenceSetAttribute(h, attr, &value, sizeof(T)), what);
    }
};

// ---- per-device and per-stream state, and the heuristic cache
struct AlgoKey {
    int32_t ordinal;
    int32_t a_type, c_type, compute;
    int32_t trans_a, trans_b;
    int64_t m, n, k, lda, ldb, ldc;
    uint32_t epilogue;
    uint32_t align_a, align_b, align_c, align_bias;
    uint64_t workspace;
    auto tie() const {
        return std::tie(ordinal, a_type, c_type, compute, trans_a, trans_b, m, n, k, lda, ldb, ldc, epilogue, align_a,
                        align_b, align_c, align_bias, workspace);
    }
    bool operator<(const AlgoKey& o) const { return tie() < o.tie(); }
};

struct AlgoEntry {
    bool found = false;
    cublasLtMatmulAlgo_t algo{};
    size_t workspace = 0;
};

struct Workspace {
    void* ptr = nullptr;
    size_t bytes = 0;
    bool pooled = false; // from cudaMallocAsync on its stream (else cudaMalloc)
};

// Never destroyed (leaked on purpose at exit): destroying handles or freeing device memory from static
// destructors races with the CUDA runtime's own teardown.
struct State {
    std::mutex mutex;
    std::vector<cublasLtHandle_t> handles;                               // per device, lazily created
    std::map<std::pair<int32_t, cudaStream_t>, Workspace> workspaces;    // per (device, stream)
    std::map<AlgoKey, AlgoEntry> algos;
};
State& state() {
    static State* s = new State();
    return *s;
}

// Caller: current device = ordinal.
cublasLtHandle_t handle_for(int32_t ordinal) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.handles.size() < static_cast<size_t>(device_count())) s.handles.resize(device_count(), nullptr);
    cublasLtHandle_t& h = s.handles.at(static_cast<size_t>(ordinal));
    if (!h) check_lt(cublasLtCreate(&h), "cublasLtCreate");
    return h;
}

// Caller: current device = ordinal. An allocation failure is not an error: the GEMM then runs without
// workspace (and tries again to get one next time).
Workspace workspace_for(int32_t ordinal, cudaStream_t stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    auto it = s.workspaces.find({ordinal, stream});
    if (it != s.workspaces.end()) return it->second;
    // Stream-ordered (cudaMallocAsync / cudaFreeAsync on the workspace's own stream): cudaFree would wait for the
    // whole device, which deadlocks against a collective's wait-flag kernel pending on another stream (see
    // core/objects.h, DeferredFrees). Devices without memory pools take cudaMalloc (and cudaFree) instead.
    void* p = nullptr;
    bool pooled = true;
    cudaError_t st = cudaMallocAsync(&p, kWorkspaceBytes, stream);
    if (st == cudaErrorNotSupported) {
        (void)cudaGetLastError();
        pooled = false;
        st = cudaMalloc(&p, kWorkspaceBytes);
    }
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        if (st == cudaErrorMemoryAllocation) return Workspace{};
        check_cuda(st, "cudaMallocAsync (cuBLASLt workspace)");
    }
    Workspace w{p, kWorkspaceBytes, pooled};
    s.workspaces.emplace(std::make_pair(ordinal, stream), w);
    return w;
}

cudaDataType_t cuda_type(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return CUDA_R_32F;
    case SW_DTYPE_F16: return CUDA_R_16F;
    case SW_DTYPE_BF16: return CUDA_R_16BF;
    default: fail(SW_ERR_INTERNAL, "cuBLASLt path reached with dtype ", dtype_name(t));
    }
}

// Everything about one cublasLtMatmul call but the algorithm.
struct Problem {
    cublasLtEpilogue_t epilogue;
    const void* bias; // when the epilogue has BIAS
    std::unique_ptr<MatmulDesc> desc;
    std::unique_ptr<Layout> a, b, c;
};

Problem make_problem(const GemmProblem& d, cublasComputeType_t compute, cublasLtEpilogue_t epilogue) {
    Problem p;
    p.epilogue = epilogue;
    p.bias = (epilogue == CUBLASLT_EPILOGUE_BIAS || epilogue == CUBLASLT_EPILOGUE_GELU_BIAS) ? d.bias : nullptr;
    p.desc = std::make_unique<MatmulDesc>(compute, CUDA_R_32F);
    const cublasOperation_t op_a = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; // cuBLASLt A = our B
    const cublasOperation_t op_b = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N; // cuBLASLt B = our A
    p.desc->set(CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(op_a), "set CUBLASLT_MATMUL_DESC_TRANSA");
    p.desc->set(CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(op_b), "set CUBLASLT_MATMUL_DESC_TRANSB");
    p.desc->set(CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(epilogue), "set CUBLASLT_MATMUL_DESC_EPILOGUE");
    if (p.bias) {
        // The bias has C's type (f32 for 16-bit inputs with an f32 C). cublasLt.h: the default
        // (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = -1) is D's type except for int8 and fp8 kernels; set explicitly all
        // the same, so that the bias type never depends on which kernel family cuBLASLt picks.
        p.desc->set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(cuda_type(d.c_type)),
                    "set CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE");
        // The heuristic reads the bias pointer's value for its alignment, and its answer is cached for every
        // bias that is 16-byte aligned: so it sees a canonical address aligned to exactly 16 bytes, and the
        // real pointer is set right before cublasLtMatmul.
        const void* canonical = reinterpret_cast<const void*>(uintptr_t{16});
        p.desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, canonical, "set CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    }
    const cudaDataType_t ta = cuda_type(d.a_type), tc = cuda_type(d.c_type);
    const uint64_t m = static_cast<uint64_t>(d.m), n = static_cast<uint64_t>(d.n), k = static_cast<uint64_t>(d.k);
    p.a = std::make_unique<Layout>(ta, d.trans_b ? k : n, d.trans_b ? n : k, d.ldb);
    p.b = std::make_unique<Layout>(ta, d.trans_a ? m : k, d.trans_a ? k : m, d.lda);
    p.c = std::make_unique<Layout>(tc, n, m, d.ldc);
    return p;
}

// The cached algorithm for this problem, asking the heuristic on a miss.
AlgoEntry find_algo(cublasLtHandle_t handle, const Problem& p, const AlgoKey& key) {
    State& s = state();
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        auto it = s.algos.find(key);
        if (it != s.algos.end()) return it->second;
    }
    Preference pref;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(key.workspace),
             "set CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES");
    // cuBLASLt's "A" is our B and its "B" our A.
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b, "set CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES");
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a, "set CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES");
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c, "set CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES");
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c, "set CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES");
    // Split-K: the INPLACE and OUTPUT_TYPE reduction schemes keep the partial sums in C's data type (cublasLt.h),
    // which for an f16/bf16 C rounds every partial sum to 16 bits. Only NONE and COMPUTE_TYPE (fp32 partial sums)
    // keep the accumulation in fp32 throughout; the default mask allows every scheme.
    if (key.c_type == SW_DTYPE_F16 || key.c_type == SW_DTYPE_BF16)
        pref.set(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                 static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE),
                 "set CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK");

    cublasLtMatmulHeuristicResult_t result;
    std::memset(&result, 0, sizeof result);
    int returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc->h, p.a->h, p.b->h, p.c->h, p.c->h, pref.h,
                                                             1, &result, &returned);
    AlgoEntry e;
    if (st == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
        result.workspaceSize <= key.workspace) {
        e.found = true;
        e.algo = result.algo;
        e.workspace = result.workspaceSize;
    } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
        check_lt(st, "cublasLtMatmulAlgoGetHeuristic"); // a real failure, not "no algorithm": not cached
    }
    std::lock_guard<std::mutex> lock(s.mutex);
    s.algos.emplace(key, e);
    return e;
}

} // namespace

std::string cublaslt_version() {
    const size_t v = cublasLtGetVersion(); // major * 10000 + minor * 100 + patch
    return str("cuBLASLt ", v / 10000, ".", (v / 100) % 100, ".", v % 100);
}

void release_stream_resources(int32_t ordinal, cudaStream_t stream) {
    State& s = state();
    Workspace w;
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        auto it = s.workspaces.find({ordinal, stream});
        if (it == s.workspaces.end()) return;
        w = it->second;
        s.workspaces.erase(it);
    }
    if (w.pooled) check_cuda(cudaFreeAsync(w.ptr, stream), "cudaFreeAsync (cuBLASLt workspace)");
    else check_cuda(cudaFree(w.ptr), "cudaFree (cuBLASLt workspace)");
}

void cublaslt_gemm(int32_t ordinal, const GemmProblem& d, cudaStream_t stream) {
    if (d.m > INT32_MAX || d.n > INT32_MAX || d.k > INT32_MAX)
        fail(SW_ERR_UNSUPPORTED, "cuBLASLt takes m, n and k up to 2^31 - 1 (m = ", d.m, ", n = ", d.n, ", k = ", d.k,
             ")");
    const cublasLtHandle_t handle = handle_for(ordinal);
    const Workspace ws = workspace_for(ordinal, stream);
    const cublasComputeType_t compute =
        (d.a_type == SW_DTYPE_F32 && d.allow_tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;

    const bool gelu = d.epilogue == SW_EPILOGUE_GELU;
    const bool has_bias = d.bias != nullptr;
    AlgoKey key{};
    key.ordinal = ordinal;
    key.a_type = d.a_type;
    key.c_type = d.c_type;
    key.compute = static_cast<int32_t>(compute);
    key.trans_a = d.trans_a ? 1 : 0;
    key.trans_b = d.trans_b ? 1 : 0;
    key.m = d.m;
    key.n = d.n;
    key.k = d.k;
    key.lda = d.lda;
    key.ldb = d.ldb;
    key.ldc = d.ldc;
    key.align_a = pointer_alignment(d.a);
    key.align_b = pointer_alignment(d.b);
    key.align_c = pointer_alignment(d.c);
    key.align_bias = has_bias ? pointer_alignment(d.bias) : 0;
    key.workspace = ws.bytes;

    if ((d.c_type == SW_DTYPE_F16 || d.c_type == SW_DTYPE_BF16) && (has_bias || gelu)) {
        // A 16-bit C with a bias or GeLU: cuBLASLt's epilogues (and the default epilogue followed by ours) round the
        // product to 16 bits before the bias is added, which an H200 run showed (cuBLASLt 13.1: up to half an ulp of
        // the product, many ulps of a result where product and bias nearly cancel). The contract is one rounding
        // after an fp32 epilogue: so the product goes to an fp32 buffer (stream-ordered allocation, no device-wide
        // synchronization) and one kernel computes act(product + beta * C + bias) in fp32 and rounds once.
        const size_t bytes = static_cast<size_t>(d.m) * static_cast<size_t>(d.n) * sizeof(float);
        void* w = nullptr;
        check_cuda(cudaMallocAsync(&w, bytes, stream), "cudaMallocAsync (fp32 product for a 16-bit C epilogue)");
        struct Free {
            void* p;
            cudaStream_t s;
            ~Free() { (void)cudaFreeAsync(p, s); }
        } free_w{w, stream};
        GemmProblem f = d;
        f.c = w;
        f.ldc = d.n;
        f.c_type = SW_DTYPE_F32;
        f.bias_type = SW_DTYPE_F32;
        f.bias = nullptr;
        f.beta = 0.0f;
        f.epilogue = SW_EPILOGUE_NONE;
        cublaslt_gemm(ordinal, f, stream);
        check_cuda(launch_finish_f32(d.c_type, d.c, d.ldc, static_cast<const float*>(w), d.n, d.m, d.n, d.beta, d.bias,
                                     gelu, stream),
                   "fp32 epilogue kernel launch");
        return;
    }

    // Fused epilogue first (when there is one to fuse and the bias is 16-byte aligned), else the default one
    // plus the bias/GeLU kernel.
    cublasLtEpilogue_t fused = CUBLASLT_EPILOGUE_DEFAULT;
    if (has_bias && gelu) fused = CUBLASLT_EPILOGUE_GELU_BIAS;
    else if (has_bias) fused = CUBLASLT_EPILOGUE_BIAS;
    else if (gelu) fused = CUBLASLT_EPILOGUE_GELU;
    const bool fusable = !has_bias || key.align_bias >= 16; // pointer_alignment caps at 16

    const cublasLtEpilogue_t attempts[2] = {fused, CUBLASLT_EPILOGUE_DEFAULT};
    for (int i = (fused != CUBLASLT_EPILOGUE_DEFAULT && fusable) ? 0 : 1; i < 2; ++i) {
        const Problem p = make_problem(d, compute, attempts[i]);
        key.epilogue = static_cast<uint32_t>(attempts[i]);
        const AlgoEntry e = find_algo(handle, p, key);
        if (!e.found) continue;
        if (p.bias) p.desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias, "set CUBLASLT_MATMUL_DESC_BIAS_POINTER");
        const float alpha = d.alpha, beta = d.beta;
        // D = C = our C (in place). With beta == 0, C is not read.
        check_lt(cublasLtMatmul(handle, p.desc->h, &alpha, d.b, p.a->h, d.a, p.b->h, &beta, d.c, p.c->h, d.c, p.c->h,
                                &e.algo, e.workspace ? ws.ptr : nullptr, e.workspace, stream),
                 "cublasLtMatmul");
        const bool fused_done = i == 0;
        if (!fused_done && (has_bias || gelu)) {
            // Finish with y = act(1 * y + bias) in the same stream.
            check_cuda(launch_scale_bias_act(d.c_type, d.c, d.ldc, d.m, d.n, 1.0f, d.bias, gelu, stream),
                       "bias/GeLU epilogue kernel launch");
        }
        return;
    }
    fail(SW_ERR_UNSUPPORTED, "cuBLASLt has no algorithm for this GEMM (a ", dtype_name(d.a_type), ", c ",
         dtype_name(d.c_type), ", m ", d.m, ", n ", d.n, ", k ", d.k, ", lda ", d.lda, ", ldb ", d.ldb, ", ldc ", d.ldc,
         ", alignments a/b/c ", key.align_a, "/", key.align_b, "/", key.align_c, " bytes)");
}

} // namespace sw::cuda
