// The exact overlap test of sw_gemm_grouped's outputs (core/gemm_overlap.h) against a byte map: random strided blocks
// (equal and different strides, one-row blocks, rows that touch without sharing a byte, starts on both sides), and
// check_grouped_outputs' verdict and message on a few groups.
#include "check.h" // CHECK, failures
#include "core/gemm_overlap.h"
#include "core/error.h"

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

using sw::StridedBytes;

namespace {

bool brute(const StridedBytes& x, const StridedBytes& y, size_t bytes) {
    std::vector<char> map(bytes, 0);
    for (int64_t r = 0; r < x.rows; ++r)
        for (int64_t c = 0; c < x.width; ++c) map[x.start + r * x.stride + c] = 1;
    for (int64_t r = 0; r < y.rows; ++r)
        for (int64_t c = 0; c < y.width; ++c)
            if (map[y.start + r * y.stride + c]) return true;
    return false;
}

StridedBytes random_block(std::mt19937& rng, int64_t stride_hint) {
    StridedBytes b;
    b.rows = std::uniform_int_distribution<int64_t>(1, 9)(rng);
    b.width = std::uniform_int_distribution<int64_t>(1, 12)(rng);
    b.stride = stride_hint > 0 ? stride_hint : b.width + std::uniform_int_distribution<int64_t>(0, 9)(rng);
    if (b.stride < b.width) b.width = b.stride;
    b.start = std::uniform_int_distribution<uintptr_t>(0, 80)(rng);
    return b;
}

sw::GemmProblem f32_problem(float* a, float* b, float* c, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                            int64_t ldc, float* bias) {
    sw::GemmProblem p;
    p.m = m, p.n = n, p.k = k;
    p.a = a, p.b = b, p.c = c, p.lda = lda, p.ldb = ldb, p.ldc = ldc, p.bias = bias;
    return p;
}

// "" when accepted, else the message.
std::string verdict(const std::vector<sw::GemmProblem>& ps) {
    try {
        sw::check_grouped_outputs(ps.data(), static_cast<int32_t>(ps.size()));
        return "";
    } catch (const sw::Error& e) {
        CHECK(e.status() == SW_ERR_INVALID_ARGUMENT, "status %d", (int)e.status());
        return e.message();
    }
}

} // namespace

int main() {
    std::mt19937 rng(std::random_device{}());
    int hits = 0, trials = 0, interleaved = 0; // interleaved: the [first, last byte] spans meet, no byte is shared
    for (int t = 0; t < 200000; ++t) {
        const int kind = t % 3; // 0: equal strides, 1: different strides, 2: any
        StridedBytes x = random_block(rng, 0);
        StridedBytes y = random_block(rng, kind == 0 ? x.stride : 0);
        if (kind == 1 && y.stride == x.stride) y.stride += 1;
        const size_t bytes = 80 + 9 * 22 + 16;
        const bool want = brute(x, y, bytes), got = sw::strided_overlap(x, y), back = sw::strided_overlap(y, x);
        ++trials;
        hits += want;
        const auto end = [](const StridedBytes& b) { return b.start + (b.rows - 1) * b.stride + b.width; };
        interleaved += !want && x.start < end(y) && y.start < end(x);
        if (want != got || want != back) {
            CHECK(false, "x = {%zu, %lld x %lld / %lld}, y = {%zu, %lld x %lld / %lld}: overlap %d, test says %d / %d",
                  (size_t)x.start, (long long)x.rows, (long long)x.width, (long long)x.stride, (size_t)y.start,
                  (long long)y.rows, (long long)y.width, (long long)y.stride, want, got, back);
            if (failures > 10) break;
        }
    }
    CHECK(hits > trials / 10 && hits < trials * 9 / 10, "the random blocks overlap in %d of %d trials", hits, trials);
    CHECK(interleaved > trials / 50, "only %d of %d trials interleave without overlapping", interleaved, trials);
    // Empty blocks overlap nothing; column blocks of one 64-row matrix (stride 4096 bytes) never do.
    CHECK(!sw::strided_overlap({0, 0, 8, 8}, {0, 4, 8, 8}), "empty block");
    for (int64_t w = 1; w < 1024; w += 37)
        CHECK(!sw::strided_overlap({1 << 20, 64, 4 * w, 4096}, {(1 << 20) + 4 * (uintptr_t)w, 64, 4096 - 4 * w, 4096}),
              "adjacent column blocks w = %lld", (long long)w);

    // check_grouped_outputs: the sharded GEMM's shape (shared X, shards of W, column blocks of Y and of the bias).
    const int64_t M = 5, K = 7, N = 23;
    std::vector<float> x(M * K), w(K * N), y(M * N), bias(N);
    std::vector<sw::GemmProblem> ps;
    const int64_t cuts[] = {0, 1, 9, 9 + 13, N};
    for (int r = 0; r < 4; ++r) {
        const int64_t off = cuts[r], n = cuts[r + 1] - off;
        ps.push_back(f32_problem(x.data(), w.data() + off, y.data() + off, M, n, K, K, N, N, bias.data() + off));
    }
    CHECK(verdict(ps).empty(), "the column blocks of one Y are refused: %s", verdict(ps).c_str());
    auto bad = ps;
    bad[2].n += 1; // member 2's block reaches into member 3's first column
    std::string msg = verdict(bad);
    CHECK(msg.find("descs[2].c overlaps descs[3].c") != std::string::npos, "C/C: %s", msg.c_str());
    bad = ps;
    bad[3].c = x.data(); bad[3].ldc = 2; bad[3].n = 2; // member 3 writes into X (shared by everyone)
    msg = verdict(bad);
    CHECK(msg.find("descs[3].c overlaps descs[0].a") != std::string::npos, "C/A: %s", msg.c_str());
    bad = ps;
    bad[1].c = w.data() + 3 * N + 22; bad[1].m = 1; bad[1].n = 1; // into member 3's shard of W (column 22)
    msg = verdict(bad);
    CHECK(msg.find("descs[1].c overlaps descs[3].b") != std::string::npos, "C/B: %s", msg.c_str());
    bad = ps;
    bad[0].bias = y.data() + (M - 1) * N + 5; // member 0's bias inside member 1's block of Y
    msg = verdict(bad);
    CHECK(msg.find("descs[1].c overlaps descs[0].bias") != std::string::npos, "C/bias: %s", msg.c_str());
    bad = ps;
    bad[2].k = 0; bad[2].a = nullptr; bad[2].b = y.data(); // k = 0: a and b are not read, not checked
    CHECK(verdict(bad).empty(), "k = 0 member's unused b: %s", verdict(bad).c_str());

    std::printf("%s (%d trials, %d overlapping, %d interleaved apart)\n", failures ? "FAILED" : "gemm_overlap_check_internal: ok",
                trials, hits, interleaved);
    return failures ? 1 : 0;
}
