// Point-to-point transfers (sw_send, sw_recv, sw_sendrecv): what one call of one rank is (Transfer), the per-communicator
// state (P2PState: pair counters, in-process meeting points, the multi-process call order), the messages both sides
// of a failed pair agree on, and the two ways a transfer runs (p2p.cpp draws the design):
//   p2p_local.cpp      in-process communicators: a meeting point per transfer, the receiver's copy (Mover::p2p_copy)
//   p2p_transport.cpp  multi-process communicators: descriptors, then data, over the communicator's Transport
//                      (Mover::p2p_move: the transport's exchange, or NCCL)
#pragma once
#include "comm/communicator.h"

#include <deque>
#include <map>
#include <string>
#include <tuple>

namespace sw {

// The transport tag (exchange seq) of every point-to-point exchange: collectives' sequence numbers never reach it, so
// a collective and a transfer that meet on a connection fail with SW_ERR_MISMATCH (TCP) or time out (MPI: distinct tags).
constexpr uint64_t kP2PTag = uint64_t{1} << 63;

// One half of a call: to (send) or from (recv) `peer`, the pair's n-th transfer; peer -1: no such half.
struct Half {
    int32_t peer = -1;
    uint64_t n = 0;     // the pair sequence number (a -> b: the n-th send from a to b, the n-th receive at b from a)
    uint64_t count = 0; // elements
    char* data = nullptr;
    std::shared_ptr<Storage> keep;
};

// One call of one rank.
struct Transfer {
    const char* call = "sw_send"; // the export's name, for messages
    int32_t rank = 0;
    sw_dtype dtype = SW_DTYPE_F32;
    Half send, recv;
    uint64_t ticket = 0; // multi-process: this process's transfers run in call order
    uint64_t after = 0;  // multi-process: the collectives called before it (run first)
};

// A transfer from `from` to `to` as its side `side_rank` called it: "sw_send(to rank 1 #3: count 10, f32)".
std::string describe_side(const char* call, int32_t side_rank, bool sending, int32_t peer, uint64_t n, uint64_t count,
                          sw_dtype dtype);
// The agreement of one pair: "" or the mismatch, the same text on both sides (the sender named first).
std::string check_pair(const char* send_call, int32_t from, uint64_t send_n, uint64_t send_count, sw_dtype send_dtype,
                       const char* recv_call, int32_t to, uint64_t recv_n, uint64_t recv_count, sw_dtype recv_dtype);
// "sw_send from rank 0 to rank 1 (#3): timed out after 2000 ms waiting for rank 1's matching receive" (sending) or
// "sw_recv at rank 1 from rank 0 (#3): ... waiting for rank 0's matching send"; in a split communicator every rank also
// by its parent rank ("rank 1 (parent rank 3)").
std::string timeout_text(const Communicator& c, const Transfer& t, bool sending);

struct P2PState {
    // Next pair numbers: sends[{a, b}] counts a's sends to b, recvs[{a, b}] b's receives from a.
    std::map<std::pair<int32_t, int32_t>, uint64_t> sends, recvs;

    // In-process: the meeting point of transfer #n from a to b, keyed {a, b, n}; the Transfers live on the ranks'
    // stream workers while they wait here (pointers valid while the side has not left).
    struct Meet {
        const Transfer* sender = nullptr;
        const Transfer* receiver = nullptr;
        bool copying = false; // the receiver reads the sender's region (outside the lock): the sender stays
        bool copied = false;
        int left = 0; // sides gone; the entry goes with the second
    };
    std::map<std::tuple<int32_t, int32_t, uint64_t>, Meet> meets;

    // Multi-process: transfers run one at a time in call order (ticket), each after the collectives called before it,
    // and each collective after the transfers called before it: afters[t - done_base] is ticket t's `after` (not
    // decreasing), for the tickets from done_base on.
    uint64_t issued = 0, next = 0;
    std::deque<uint64_t> afters;
    uint64_t done_base = 0;
};

// Runs a transfer on its rank's stream worker; throws sw::Error after aborting the communicator (and its peers).
void run_local_transfer(Communicator& c, const Transfer& t, cpu::Stream* stream);  // p2p_local.cpp
void run_remote_transfer(Communicator& c, const Transfer& t, cpu::Stream* stream); // p2p_transport.cpp
// Multi-process, c.mu held: whether every transfer called before collective #seq has run (agree_transport.cpp waits for
// it; p2p_transport.cpp).
bool transfers_done_before(Communicator& c, uint64_t seq);
// The transport a multi-process communicator agrees over (agree_transport.cpp); null for an in-process one.
Transport* agreement_transport(Agreement& a);

} // namespace sw
