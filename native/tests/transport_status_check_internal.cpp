// A timeout names only the ranks that are missing, not the live ranks held up by them (TCP and MPI transports).
//
// Three ranks; rank 2 "freezes" (never calls exchange); rank 1 waits for a piece from rank 2 with a long deadline;
// rank 0 waits for pieces from ranks 1 and 2 and times out first. Rank 1 is alive (its exchange sends "alive and
// waiting" statuses), so rank 0's TimeoutError must list rank 2 as missing and rank 1 apart as waiting.
//
//   transport_status_check_internal         the three ranks as threads of this process over the TCP transport
//   transport_status_check_internal --mpi   one rank of an mpirun -n 3 job over the MPI transport
// Prints "-> ok" per checked rank; exit 0 when every check passed, 77 for --mpi without the MPI plugin.
#include "comm/collectives.h" // rank_list
#include "comm/store.h"
#include "comm/transport.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <unistd.h>

using namespace sw;

namespace {

std::atomic<int> g_failures{0};

// What rank `rank` does on its transport; returns a line describing the outcome.
void play(Transport& t, int rank) {
    std::atomic<bool> no_abort{false};
    char buf[2][64];
    std::vector<Piece> sends, recvs;
    std::chrono::milliseconds wait{0};
    if (rank == 0) {
        recvs = {{1, buf[0], sizeof buf[0]}, {2, buf[1], sizeof buf[1]}};
        wait = std::chrono::milliseconds(1500);
    } else if (rank == 1) {
        recvs = {{2, buf[0], sizeof buf[0]}};
        wait = std::chrono::milliseconds(4000);
    } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5000)); // frozen: never joins
        return;
    }
    try {
        t.exchange(1, sends, recvs, Clock::now() + wait, no_abort, "exchange #1");
        std::printf("[rank %d] exchange completed without rank 2 -> FAILED\n", rank);
        ++g_failures;
    } catch (const TimeoutError& e) {
        const bool ok = e.missing == std::vector<int>{2} && std::strstr(e.what(), "rank(s) 2") &&
                        !std::strstr(e.what(), "rank(s) 1") && (rank != 0 || e.waiting == std::vector<int>{1});
        std::printf("[rank %d] %s: missing [%s], waiting [%s] -> %s\n", rank, e.what(), rank_list(e.missing).c_str(),
                    rank_list(e.waiting).c_str(), ok ? "ok" : "FAILED");
        if (!ok) ++g_failures;
    } catch (const Error& e) {
        std::printf("[rank %d] unexpected error: %s -> FAILED\n", rank, e.what());
        ++g_failures;
    }
}

int run_tcp() {
    sw_store server = nullptr;
    if (sw_store_create("127.0.0.1", 0, 1, 10000, &server) != SW_OK) {
        std::printf("store: %s -> FAILED\n", sw_last_error());
        return 1;
    }
    int32_t port = 0;
    sw_store_get_port(server, &port);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 3; ++r)
        ranks.emplace_back([r, port, server] {
            sw_store mine = server;
            if (r != 0 && sw_store_create("127.0.0.1", port, 0, 10000, &mine) != SW_OK) {
                std::printf("[rank %d] store: %s -> FAILED\n", r, sw_last_error());
                ++g_failures;
                return;
            }
            try {
                auto t = connect_tcp_mesh(*reinterpret_cast<sw_store_s*>(mine)->impl, "status", r, 3, 10000);
                play(*t, r);
            } catch (const Error& e) {
                std::printf("[rank %d] %s -> FAILED\n", r, e.what());
                ++g_failures;
            }
            if (r != 0) sw_store_destroy(mine);
        });
    for (auto& th : ranks) th.join();
    sw_store_destroy(server);
    std::printf("%s\n", g_failures ? "FAILED" : "transport status checks (tcp) passed");
    return g_failures ? 1 : 0;
}

int run_mpi() {
    int32_t available = 0;
    char info[512];
    sw_mpi_get_info(&available, info, sizeof info);
    if (!available) {
        std::printf("skipped: %s\n", info);
        return 77;
    }
    try {
        auto t = create_mpi_transport(20000);
        if (t->world() != 3) {
            std::printf("needs 3 ranks (mpirun -n 3), got %d -> FAILED\n", t->world());
            return 1;
        }
        const auto start = Clock::now();
        play(*t, t->rank());
        std::fflush(stdout);
        // every rank stays until rank 1 has timed out too (a rank that ends makes mpirun end the job)
        std::this_thread::sleep_until(start + std::chrono::seconds(6));
    } catch (const Error& e) {
        std::printf("%s -> FAILED\n", e.what());
        ++g_failures;
    }
    std::fflush(stdout);
    _exit(g_failures ? 1 : 0); // no MPI_Finalize (skipped after a failure anyway; rank 2 would wait in it)
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--mpi") == 0) return run_mpi();
    return run_tcp();
}
