// Splitting NCCL communicators through the C ABI, on the host-memory stand-in for NCCL (native/tests/fake_nccl) over
// the emulated CUDA plugin: proves the core's paths, nothing about real NCCL.
//
//   split_nccl_check             NCCL 2.18 stand-in: per-process communicators (sw_comm_create_nccl, ranks on threads
//                                here) split with ncclCommSplit; in-process ones (sw_comm_create_nccl_local) split
//                                into new NCCL groups.
//   split_nccl_check --blocking  NCCL 2.13 stand-in (no ncclCommSplit, no ncclCommInitRankConfig): the per-process
//                                split makes its communicators with ncclCommInitRank and a unique id sent over the
//                                group's new TCP transport.
// Every group runs an all-reduce of fresh random data (bit-identical to the float sum in the group's rank order, and
// within (n - 1) * 2^-24 * sum |x| of the float64 sum) and an all-gather (exact: checks the rank order).
#include "shardwise.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

std::atomic<int> g_failures{0};
unsigned g_seed;
std::mutex g_print;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::lock_guard<std::mutex> lock_(g_print);                                   \
            std::fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);                   \
            std::fprintf(stderr, __VA_ARGS__);                                            \
            std::fprintf(stderr, " (last error: %s)\n", sw_last_error());                 \
            ++g_failures;                                                                 \
        }                                                                                 \
    } while (0)
#define OK(call) CHECK((call) == SW_OK, "%s", #call)

float value(int t, int r, long i) {
    unsigned x = g_seed ^ (unsigned)(t * 7919 + r * 104729 + (int)i * 2654435761u);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return ((float)(x % 2001u) - 1000.0f) / 997.0f + 0.001f;
}

// The group of `color`: the ranks with that color ordered by (key, rank).
std::vector<int> group_of(const std::vector<int>& colors, const std::vector<int>& keys, int color) {
    std::vector<int> g;
    for (int r = 0; r < (int)colors.size(); ++r)
        if (colors[r] == color) g.push_back(r);
    std::stable_sort(g.begin(), g.end(), [&](int a, int b) { return keys[a] < keys[b]; });
    return g;
}

// Queues rank `sub`'s all-reduce and all-gather of group `c` (members top[], the data's identities) on stream s and
// checks them. Called for every local rank of the group before any is checked (in-process) or on its own thread.
struct RankRun {
    sw_buffer x = nullptr, y = nullptr, g = nullptr;
    long n = 0;
};
void queue_rank(sw_comm c, int sub, sw_stream s, sw_device dev, const std::vector<int>& top, int t, RankRun* run) {
    const int world = (int)top.size();
    const long n = 301 + 13 * world + t;
    run->n = n;
    std::vector<float> host(n);
    for (long i = 0; i < n; ++i) host[i] = value(t, top[sub], i);
    OK(sw_buffer_alloc(dev, n * 4, &run->x));
    OK(sw_buffer_alloc(dev, n * 4, &run->y));
    OK(sw_buffer_alloc(dev, n * 4 * world, &run->g));
    OK(sw_memcpy_h2d_async(run->x, 0, host.data(), n * 4, s));
    OK(sw_memset_async(run->y, 0, 0xFF, n * 4, s)); // poisoned: NaN
    OK(sw_memset_async(run->g, 0, 0xFF, n * 4 * world, s));
    OK(sw_stream_synchronize(s));
    OK(sw_all_reduce(c, sub, run->x, 0, run->y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_all_gather(c, sub, run->x, 0, run->g, 0, n, SW_DTYPE_F32, s));
}
void check_rank(int sub, sw_stream s, const std::vector<int>& top, int t, RankRun* run) {
    const int world = (int)top.size();
    const long n = run->n;
    OK(sw_stream_synchronize(s));
    std::vector<float> y(n), g(n * world);
    OK(sw_memcpy_d2h_async(y.data(), run->y, 0, n * 4, s));
    OK(sw_memcpy_d2h_async(g.data(), run->g, 0, n * 4 * world, s));
    OK(sw_stream_synchronize(s));
    long bad_bits = 0, bad_ref = 0, bad_gather = 0;
    for (long i = 0; i < n; ++i) {
        double ref = 0, mag = 0;
        float f = 0;
        for (int j = 0; j < world; ++j) {
            const float v = value(t, top[j], i);
            ref += v;
            mag += std::fabs(v);
            f = j ? f + v : v;
            bad_gather += std::memcmp(&g[j * n + i], &v, 4) != 0;
        }
        bad_bits += std::memcmp(&y[i], &f, 4) != 0;
        bad_ref += !(std::fabs(y[i] - ref) <= (world - 1) * std::ldexp(1.0, -24) * mag);
    }
    CHECK(bad_bits == 0 && bad_ref == 0 && bad_gather == 0,
          "group rank %d (test %d): %ld sums not the rank-order float sum, %ld beyond the float64 bound, %ld gathered "
          "elements wrong (of %ld)", sub, t, bad_bits, bad_ref, bad_gather, n);
    sw_buffer_destroy(run->x);
    sw_buffer_destroy(run->y);
    sw_buffer_destroy(run->g);
}

// In-process: sw_comm_create_nccl_local of 6 GPUs split by colors (an opt-out, reordering keys with a tie), every
// group's collectives, then the family fate (an abort of one group aborts the parent and the other group).
void in_process() {
    const int p = 6;
    sw_device dev[p];
    sw_stream s[p];
    for (int r = 0; r < p; ++r) {
        OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &dev[r]));
        OK(sw_stream_create(dev[r], &s[r]));
    }
    sw_comm parent = nullptr;
    OK(sw_comm_create_nccl_local(p, dev, 20000, &parent));
    if (!parent) return;
    const std::vector<int> colors = {1, 0, 1, SW_SPLIT_NO_COLOR, 0, 1}, keys = {5, 2, 1, 0, 2, 3};
    std::vector<int32_t> c32(colors.begin(), colors.end()), k32(keys.begin(), keys.end());
    sw_comm out[p];
    OK(sw_comm_split_local(parent, c32.data(), k32.data(), out));
    CHECK(out[3] == nullptr && out[0] == out[2] && out[0] == out[5] && out[1] == out[4] && out[0] != out[1],
          "in-process NCCL split: handles");
    for (int color : {0, 1}) {
        const std::vector<int> m = group_of(colors, keys, color);
        sw_comm c = out[m[0]];
        const char* kind = nullptr;
        OK(sw_comm_get_backend(c, &kind));
        CHECK(kind && std::strcmp(kind, "nccl") == 0, "in-process split of NCCL: backend %s", kind ? kind : "?");
        std::vector<RankRun> runs(m.size());
        for (size_t k = 0; k < m.size(); ++k) {
            int32_t up = -1;
            OK(sw_comm_get_parent_rank(c, (int)k, &up));
            CHECK(up == m[k], "color %d rank %zu: parent rank %d, expected %d", color, k, (int)up, m[k]);
            queue_rank(c, (int)k, s[m[k]], dev[m[k]], m, 10 + color, &runs[k]);
        }
        for (size_t k = 0; k < m.size(); ++k) check_rank((int)k, s[m[k]], m, 10 + color, &runs[k]);
    }
    OK(sw_comm_abort_with_reason(out[1], "planted abort of the NCCL group 0"));
    int32_t aborted = 0;
    char reason[512] = {0};
    for (int i = 0; i < 200 && !aborted; ++i) {
        OK(sw_comm_get_state(parent, &aborted, reason, sizeof reason));
        if (!aborted) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    CHECK(aborted && std::strstr(reason, "planted abort"), "in-process NCCL: the parent was not aborted by its child: '%s'", reason);
    OK(sw_comm_destroy(parent)); // the parent first, then the children
    OK(sw_comm_destroy(out[0]));
    OK(sw_comm_destroy(out[1]));
    for (int r = 0; r < p; ++r) {
        sw_stream_destroy(s[r]);
        sw_device_destroy(dev[r]);
    }
    std::printf("in-process NCCL split: %s\n", g_failures ? "FAILED" : "ok");
}

// Per process (ranks on threads): sw_comm_create_nccl over a TCP store, split by colors r % 2 and keys -r (ranks
// reversed), then the child's collectives; a second split where rank 3 opts out.
void per_process() {
    const int p = 4;
    sw_store server = nullptr;
    OK(sw_store_create("127.0.0.1", 0, 1, 20000, &server));
    int32_t port = 0;
    OK(sw_store_get_port(server, &port));
    std::vector<int> colors(p), keys(p), colors2(p), keys2(p, 0);
    for (int r = 0; r < p; ++r) {
        colors[r] = r % 2;
        keys[r] = -r;
        colors2[r] = r == 3 ? SW_SPLIT_NO_COLOR : 7;
    }
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r)
        th.emplace_back([&, r] {
            sw_device dev = nullptr;
            sw_stream s = nullptr;
            sw_store store = nullptr;
            sw_comm comm = nullptr, child = nullptr, child2 = nullptr;
            OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &dev));
            OK(sw_stream_create(dev, &s));
            OK(sw_store_create("127.0.0.1", port, 0, 20000, &store));
            OK(sw_comm_create_nccl(dev, store, "split-nccl", r, p, 20000, &comm));
            if (!comm) return;
            OK(sw_comm_split(comm, r, colors[r], keys[r], &child));
            OK(sw_comm_split(comm, r, colors2[r], keys2[r], &child2));
            CHECK((child2 == nullptr) == (r == 3), "rank %d: second split handle", r);
            for (int round = 0; round < 2; ++round) {
                sw_comm c = round ? child2 : child;
                if (!c) continue;
                const auto m = group_of(round ? colors2 : colors, round ? keys2 : keys, (round ? colors2 : colors)[r]);
                int32_t sub = -1, up = -1;
                OK(sw_comm_get_rank(c, &sub));
                CHECK(sub >= 0 && sub < (int)m.size() && m[sub] == r, "rank %d: rank %d of its group", r, (int)sub);
                OK(sw_comm_get_parent_rank(c, sub, &up));
                CHECK(up == r, "rank %d: parent rank %d", r, (int)up);
                const char* kind = nullptr;
                OK(sw_comm_get_backend(c, &kind));
                CHECK(kind && std::strcmp(kind, "nccl") == 0, "a split of NCCL is %s", kind ? kind : "?");
                RankRun run;
                queue_rank(c, sub, s, dev, m, 20 + round * 10 + (round ? 0 : colors[r]), &run);
                check_rank(sub, s, m, 20 + round * 10 + (round ? 0 : colors[r]), &run);
            }
            OK(sw_comm_destroy(comm)); // the parent first
            if (child2) OK(sw_comm_destroy(child2));
            OK(sw_comm_destroy(child));
            sw_stream_destroy(s);
            sw_store_destroy(store);
            sw_device_destroy(dev);
        });
    for (auto& t : th) t.join();
    sw_store_destroy(server);
    std::printf("per-process NCCL split: %s\n", g_failures ? "FAILED" : "ok");
}

// An NCCL communicator made from a unique id has no channel but NCCL: sw_comm_split refuses it (SW_ERR_UNSUPPORTED)
// before taking a collective, so the communicator stays usable.
void by_unique_id() {
    const int p = 2;
    uint8_t id[128];
    OK(sw_nccl_get_unique_id(id));
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r)
        th.emplace_back([&, r] {
            sw_device dev = nullptr;
            sw_stream s = nullptr;
            sw_comm comm = nullptr, child = nullptr;
            OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &dev));
            OK(sw_stream_create(dev, &s));
            OK(sw_comm_create_nccl_id(dev, id, r, p, 20000, &comm));
            if (!comm) return;
            const sw_status st = sw_comm_split(comm, r, 0, 0, &child);
            CHECK(st == SW_ERR_UNSUPPORTED && child == nullptr && std::strstr(sw_last_error(), "cannot be split"),
                  "rank %d: split of an NCCL communicator made from a unique id: status %d", r, (int)st);
            RankRun run;
            const std::vector<int> top = {0, 1};
            queue_rank(comm, r, s, dev, top, 40, &run);
            check_rank(r, s, top, 40, &run);
            OK(sw_comm_destroy(comm));
            sw_stream_destroy(s);
            sw_device_destroy(dev);
        });
    for (auto& t : th) t.join();
    std::printf("NCCL from a unique id: split refused: %s\n", g_failures ? "FAILED" : "ok");
}

} // namespace

int main(int argc, char** argv) {
    g_seed = (unsigned)std::time(nullptr) ^ (unsigned)getpid();
    const bool blocking = argc > 1 && std::strcmp(argv[1], "--blocking") == 0;
    setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
    setenv("SHARDWISE_EMULATED_CUDA_DEVICES", "8", 1);
    setenv("SHARDWISE_NCCL_PATH", blocking ? SHARDWISE_FAKE_NCCL_NOCONFIG : SHARDWISE_FAKE_NCCL, 1);
    std::printf("seed %u (%s)\n", g_seed, blocking ? "NCCL 2.13 stand-in: no ncclCommSplit" : "NCCL 2.18 stand-in: ncclCommSplit");
    in_process();
    per_process();
    by_unique_id();
    std::printf("%s\n", g_failures ? "FAILED" : "all NCCL split checks passed");
    return g_failures ? 1 : 0;
}
