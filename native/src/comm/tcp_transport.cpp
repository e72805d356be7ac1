// The TCP transport: a full mesh of sockets between the ranks of a job, set up through the TCP store (every rank
// publishes its listening address under the communicator's prefix). Everything polls with deadlines: no call here
// blocks past its timeout, and a peer that dies is noticed at once (its sockets close). Linux only (socket.cpp).
#include "comm/transport.h"

#include "comm/collectives.h" // rank_list
#include "comm/store.h"

#if defined(__linux__)
#include "comm/socket.h"

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>

#ifndef POLLRDHUP
#define POLLRDHUP 0
#endif

using namespace sw;

namespace {

constexpr uint32_t kFrameMagic = 0x53574d31; // "SWM1"
constexpr uint32_t kData = 1, kAbort = 2, kHello = 3;
// A header-only frame "alive and waiting at collective #seq", sent between frames while an exchange waits (at most
// every kStatusEvery); read and skipped wherever a header is expected.
constexpr uint32_t kStatus = 4;

struct Header {
    uint32_t magic;
    uint32_t kind;
    uint64_t seq;
    uint64_t bytes;
    CallTag tag; // kData: the sender's call (op -1: none)
};
static_assert(sizeof(Header) == 48, "Header has no padding");

class TcpTransport final : public Transport {
    struct Seg {
        const char* data;
        uint64_t bytes;
        bool ends_frame;
    };
    struct Out {
        std::vector<Seg> segs; // header, payload (when not empty), header, ...
        size_t seg = 0;
        uint64_t done = 0;
    };
    struct In {
        std::deque<Piece> pieces;
        Header hdr{};
        uint64_t got = 0; // bytes of the current header (< 24) or payload
        bool in_payload = false;
    };

public:
    TcpTransport(int32_t rank, int32_t world, std::vector<Fd> peers)
        : rank_(rank), world_(world), peers_(std::move(peers)), dirty_(world, 0), dead_(world, 0), notice_(world),
          notice_status_(world, SW_ERR_ABORTED), heard_(world), closed_by_peer_(world, 0) {
        // Busy-wait 50 us before a blocking poll while there is a core for every rank of this host (a bound: ranks
        // on other hosts are counted too); more ranks than cores block at once.
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        const int cores = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        spin_us_ = world <= cores ? 50 : 0;
    }
    int32_t rank() const override { return rank_; }
    int32_t world() const override { return world_; }
    const char* name() const override { return "tcp"; }
    bool carries_tags() const override { return true; }

    void exchange(uint64_t seq, const std::vector<Piece>& sends, const std::vector<Piece>& recvs, Clock::time_point deadline,
                  const std::atomic<bool>& local_abort, const std::string& what, const CallTag* tag = nullptr) override {
        std::unique_lock<std::mutex> lock(io_mu_);
        if (closed_) fail(SW_ERR_ABORTED, what, ": the communicator's connections are closed (it was aborted)");
        std::vector<Out> out(world_);
        std::vector<In> in(world_);
        std::vector<Header> headers;
        headers.reserve(sends.size());
        for (const auto& s : sends) {
            headers.push_back(Header{kFrameMagic, kData, seq, s.bytes, tag ? *tag : CallTag{}});
            out[s.peer].segs.push_back({reinterpret_cast<const char*>(&headers.back()), sizeof(Header), s.bytes == 0});
            if (s.bytes) out[s.peer].segs.push_back({s.data, s.bytes, true});
        }
        for (const auto& r : recvs) in[r.peer].pieces.push_back(r);
        auto pending_out = [&](int q) { return out[q].seg < out[q].segs.size(); };
        auto pending_in = [&](int q) { return !in[q].pieces.empty(); };
        auto lost = [&](int q, const std::string& why) {
            // A peer that aborted sent a notice before closing: it explains the loss better (and carries the status).
            if (!in[q].in_payload && in[q].got == 0) drain_unexpected(q, what);
            dead_[q] = 1;
            if (!notice_[q].empty()) fail(notice_status_[q], what, ": ", who(q), " aborted the communicator: ", notice_[q]);
            fail(SW_ERR_ABORTED, what, ": lost the connection to ", who(q), " (", why,
                 "): that process exited, was killed or closed the communicator");
        };
        auto next_status = Clock::now() + kStatusEvery;
        while (true) {
            std::vector<pollfd> p;
            std::vector<int> who;
            bool any = false;
            for (int q = 0; q < world_; ++q) {
                if (q == rank_) continue;
                const bool o = pending_out(q), i = pending_in(q);
                any |= o || i;
                if (dead_[q]) {
                    if (o || i) {
                        if (!notice_[q].empty()) fail(notice_status_[q], what, ": ", this->who(q), " aborted the communicator: ", notice_[q]);
                        fail(SW_ERR_ABORTED, what, ": lost the connection to ", this->who(q),
                             " (closed earlier): that process exited, was killed or closed the communicator");
                    }
                    continue;
                }
                // Every peer is watched for a closed connection (after an abort notice, a peer closes), not only those
                // with work; POLLIN only where data is expected (a peer may already have sent its next collective).
                p.push_back({peers_[q].fd, static_cast<short>((o ? POLLOUT : 0) | (i ? POLLIN : 0) | POLLRDHUP), 0});
                who.push_back(q);
            }
            if (!any) return;
            if (local_abort.load()) fail(SW_ERR_ABORTED, what, ": the communicator was aborted in this process");
            const int ms = remaining_ms(deadline, 50);
            const auto now = Clock::now();
            if (ms == 0 && now >= deadline) {
                // Missing: the peers still needed that said nothing lately; the others are alive, waiting themselves.
                std::vector<int> missing, waiting;
                for (int q = 0; q < world_; ++q)
                    if (q != rank_ && (pending_in(q) || pending_out(q)))
                        (heard_[q] != Clock::time_point{} && now - heard_[q] < kAliveFor ? waiting : missing).push_back(q);
                throw timeout_error(what, std::move(missing), std::move(waiting), &parent_ranks());
            }
            if (now >= next_status) { // still waiting: tell the peers this rank is alive (between frames only)
                next_status = now + kStatusEvery;
                for (int q = 0; q < world_; ++q)
                    if (q != rank_ && !dead_[q] && !dirty_[q] && !pending_out(q)) send_status(q, seq);
            }
            // A short busy phase first (non-blocking polls, spin_us_ after the last progress, while every rank has a
            // core): a reply on loopback often comes within microseconds, and a blocking poll's sleep and wake-up
            // cost tens of them.
            int n = ::poll(p.data(), p.size(), 0);
            if (n == 0 && spin_us_ > 0) {
                const auto spin_until = Clock::now() + std::chrono::microseconds(spin_us_);
                while (n == 0 && Clock::now() < spin_until && !local_abort.load()) n = ::poll(p.data(), p.size(), 0);
            }
            if (n == 0) n = ::poll(p.data(), p.size(), ms);
            if (n < 0) {
                if (errno == EINTR) continue;
                fail(SW_ERR_BACKEND, what, ": poll failed: ", errno_text(errno));
            }
            for (size_t k = 0; k < p.size(); ++k) {
                const int q = who[k];
                const short ev = p[k].revents;
                if (!ev) continue;
                const int fd = peers_[q].fd;
                if ((ev & POLLOUT) && pending_out(q)) {
                    Out& o = out[q];
                    while (o.seg < o.segs.size()) {
                        const Seg& sg = o.segs[o.seg];
                        const ssize_t w = ::send(fd, sg.data + o.done, sg.bytes - o.done, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (w > 0) {
                            dirty_[q] = 1;
                            o.done += static_cast<uint64_t>(w);
                            if (o.done == sg.bytes) {
                                ++o.seg;
                                o.done = 0;
                                if (sg.ends_frame) dirty_[q] = 0;
                            }
                            continue;
                        }
                        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
                        lost(q, w < 0 ? errno_text(errno) : "send failed");
                    }
                }
                if (ev & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) {
                    if (!pending_in(q)) {
                        // Nothing expected from q: only an abort notice or a closed connection can be here, or the
                        // start of q's next collective (q finished this one first) — leave that for the next call.
                        if (ev & (POLLRDHUP | POLLHUP | POLLERR)) drain_unexpected(q, what);
                        continue;
                    }
                    read_from(q, in[q], seq, what, tag, lost);
                }
            }
        }
    }

    bool can_split() const override { return true; }
    std::unique_ptr<Transport> split(uint64_t seq, const std::vector<int32_t>& colors, const std::vector<int32_t>& members,
                                     Clock::time_point deadline, const std::atomic<bool>& local_abort,
                                     const std::string& what) override;

    int poll_idle(sw_status* status, std::string* why) noexcept override;

    void notify_abort(sw_status status, const std::string& reason) noexcept override {
        // A running exchange sees the local abort within its 50 ms poll and lets go. (A plain mutex polled with
        // try_lock: std::timed_mutex's timed lock is invisible to ThreadSanitizer.)
        std::unique_lock<std::mutex> lock(io_mu_, std::defer_lock);
        const auto give_up = Clock::now() + std::chrono::seconds(2);
        while (!lock.try_lock()) {
            if (Clock::now() >= give_up) return; // an exchange is stuck: the peers time out instead
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (closed_) return;
        closed_ = true;
        const std::string text = reason.substr(0, 4000);
        const auto deadline = Clock::now() + std::chrono::milliseconds(500);
        for (int q = 0; q < world_; ++q) {
            if (q == rank_ || peers_[q].fd < 0) continue;
            if (!dirty_[q] && !dead_[q]) {
                Header h{kFrameMagic, kAbort, static_cast<uint64_t>(status), text.size(), CallTag{}}; // seq carries the status
                std::string err;
                if (write_all(peers_[q].fd, reinterpret_cast<const char*>(&h), sizeof h, deadline, &err))
                    write_all(peers_[q].fd, text.data(), text.size(), deadline, &err);
            }
            ::shutdown(peers_[q].fd, SHUT_WR); // the peer sees the end of the stream after the notice
        }
    }

private:
    template <class Lost>
    void read_from(int q, In& st, uint64_t seq, const std::string& what, const CallTag* tag, Lost&& lost) {
        const int fd = peers_[q].fd;
        while (!st.pieces.empty()) {
            if (!st.in_payload) {
                const ssize_t r = ::recv(fd, reinterpret_cast<char*>(&st.hdr) + st.got, sizeof(Header) - st.got, 0);
                if (r > 0) {
                    st.got += static_cast<uint64_t>(r);
                    if (st.got < sizeof(Header)) continue;
                    check_header(q, st.hdr, what);
                    if (st.hdr.kind == kAbort) abort_notice(q, st.hdr, what);
                    if (st.hdr.kind == kStatus) { // q is alive (and waiting): noted, then the next header
                        heard_[q] = Clock::now();
                        st.got = 0;
                        continue;
                    }
                    const Piece& piece = st.pieces.front();
                    if (st.hdr.seq == seq) check_tag(tag, st.hdr.tag, rank_, q, seq); // before the sizes: names the calls
                    if (st.hdr.seq != seq || st.hdr.bytes != piece.bytes) {
                        // seq with the top bit: a point-to-point transfer (p2p.h's kP2PTag)
                        auto call = [](uint64_t s) { return s >> 63 ? std::string("a point-to-point transfer") : str("collective #", s); };
                        fail(SW_ERR_MISMATCH, what, ": rank ", q, " sent ", st.hdr.bytes, " bytes for ", call(st.hdr.seq),
                             " where ", piece.bytes, " bytes of ", call(seq), " were expected (calls in an order the ranks do not match?)");
                    }
                    st.in_payload = true;
                    st.got = 0;
                    if (piece.bytes == 0) {
                        st.pieces.pop_front();
                        st.in_payload = false;
                    }
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
                lost(q, r < 0 ? errno_text(errno) : "connection closed");
            } else {
                Piece& piece = st.pieces.front();
                const ssize_t r = ::recv(fd, piece.data + st.got, piece.bytes - st.got, 0);
                if (r > 0) {
                    st.got += static_cast<uint64_t>(r);
                    if (st.got == piece.bytes) {
                        st.pieces.pop_front();
                        st.in_payload = false;
                        st.got = 0;
                    }
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
                lost(q, r < 0 ? errno_text(errno) : "connection closed");
            }
        }
    }

    // A status frame to q (io_mu_ held; nothing partly sent to q). Whole or not at all in practice (24 bytes into
    // a socket with room); a partial write is completed within 200 ms or the connection counts as lost.
    void send_status(int q, uint64_t seq) {
        const Header h{kFrameMagic, kStatus, seq, 0, CallTag{}};
        const ssize_t w = ::send(peers_[q].fd, &h, sizeof h, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w <= 0 || w == static_cast<ssize_t>(sizeof h)) return; // sent, or no room now (the next one may go)
        std::string err;
        if (!write_all(peers_[q].fd, reinterpret_cast<const char*>(&h) + w, sizeof h - static_cast<size_t>(w),
                       Clock::now() + std::chrono::milliseconds(200), &err))
            dirty_[q] = 1; // a torn frame: no abort notice may follow it (the peer sees the connection end)
    }

    void check_header(int q, const Header& h, const std::string& what) {
        if (h.magic != kFrameMagic || (h.kind != kData && h.kind != kAbort && h.kind != kStatus) ||
            (h.kind == kStatus && h.bytes != 0))
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent a malformed message (another program or version?)");
    }

    // Reads the reason of peer q's abort notice (header h already read) and remembers it; q is done.
    void take_notice(int q, const Header& h) {
        std::string reason(std::min<uint64_t>(h.bytes, 4000), '\0');
        std::string err;
        read_all(peers_[q].fd, reason.data(), reason.size(), Clock::now() + std::chrono::milliseconds(500), &err);
        dead_[q] = 1;
        const auto status = static_cast<sw_status>(h.seq);
        closed_by_peer_[q] = status == SW_OK; // a destroy notice (transport.h): no failure for poll_idle
        const bool known = status == SW_ERR_TIMEOUT || status == SW_ERR_MISMATCH || status == SW_ERR_BACKEND;
        notice_status_[q] = known ? status : SW_ERR_ABORTED;
        notice_[q] = reason.empty() ? std::string("(no reason given)") : reason;
    }

    [[noreturn]] void abort_notice(int q, const Header& h, const std::string& what) {
        take_notice(q, h);
        fail(notice_status_[q], what, ": ", who(q), " aborted the communicator: ", notice_[q]);
    }

    // Peer q closed while this rank needs nothing from it: read what is left until an abort notice or the end. q is
    // then dead; that is an error only when a collective needs q (a peer that finished and left is not).
    void drain_unexpected(int q, const std::string& what) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(500);
        std::string err;
        while (true) {
            Header h{};
            if (!read_all(peers_[q].fd, reinterpret_cast<char*>(&h), sizeof h, deadline, &err)) {
                if (err == "timed out") return; // data of a later collective, still arriving: not an error yet
                dead_[q] = 1;
                return; // reported when something is expected from q
            }
            check_header(q, h, what);
            if (h.kind == kStatus) continue;
            if (h.kind == kAbort) { // fatal only when this rank needs q (lost() reports it then)
                take_notice(q, h);
                return;
            }
            // Data of q's next collective: this process cannot take it now, and q closed, so the job is over.
            std::string skip(std::min<uint64_t>(h.bytes, uint64_t{1} << 20), '\0');
            uint64_t left = h.bytes;
            while (left) {
                const uint64_t n = std::min<uint64_t>(left, skip.size());
                if (!read_all(peers_[q].fd, skip.data(), n, deadline, &err)) {
                    dead_[q] = 1;
                    return;
                }
                left -= n;
            }
        }
    }

    int32_t rank_, world_;
    std::vector<Fd> peers_;
    std::vector<char> dirty_; // a frame to that peer is partly sent: no abort notice may follow it
    std::vector<char> dead_;
    std::vector<std::string> notice_; // a dead peer's abort notice
    std::vector<sw_status> notice_status_;
    std::vector<Clock::time_point> heard_; // when each peer's last status frame came
    std::mutex io_mu_;
    bool closed_ = false;
    int spin_us_ = 0; // the busy phase of a wait (see exchange)
    // ---- sub-communicators (split, poll_idle)
    std::vector<char> closed_by_peer_; // the peer destroyed its communicator (its notice had status SW_OK)
};

// Connects to host:port until the deadline; with `abort`, gives up (SW_ERR_ABORTED) within 0.5 s of it becoming true.
Fd connect_until(const std::string& host, int port, Clock::time_point deadline, const std::atomic<bool>* abort,
                 const std::string& what) {
    for (;;) {
        if (abort && abort->load()) fail(SW_ERR_ABORTED, what, ": the communicator was aborted in this process");
        const auto step = abort ? std::min(deadline, Clock::now() + std::chrono::milliseconds(500)) : deadline;
        try {
            return connect_to(host, port, step, what);
        } catch (const Error& e) {
            if (e.status() != SW_ERR_TIMEOUT || Clock::now() >= deadline) throw;
        }
    }
}

// Builds the mesh: rank r listens on `listener`, connects to every lower rank q (at address_of(q): "host port"),
// sending a hello with its rank, and accepts one connection from every higher rank. `what` prefixes the messages;
// `abort` (may be null) ends the wait early (a split's family was aborted meanwhile).
std::unique_ptr<Transport> build_mesh(Fd listener, const std::function<std::string(int)>& address_of_rank, int32_t rank,
                                      int32_t world, Clock::time_point deadline, int64_t timeout_ms,
                                      const std::atomic<bool>* abort, const std::string& what) {
    std::vector<Fd> peers(world);
    for (int q = 0; q < rank; ++q) {
        const std::string addr = address_of_rank(q);
        const auto space = addr.rfind(' ');
        if (space == std::string::npos) fail(SW_ERR_BACKEND, what, ": rank ", q, " published a bad address '", addr, "'");
        Fd s = connect_until(addr.substr(0, space), std::atoi(addr.c_str() + space + 1), deadline, abort,
                             str(what, ": rank ", rank, " connecting to rank ", q));
        Header hello{kFrameMagic, kHello, static_cast<uint64_t>(rank), static_cast<uint64_t>(world), CallTag{}};
        std::string err;
        if (!write_all(s.fd, reinterpret_cast<const char*>(&hello), sizeof hello, deadline, &err))
            fail(SW_ERR_BACKEND, what, ": greeting rank ", q, " failed: ", err);
        peers[q] = std::move(s);
    }
    // Accepted connections wait here until their hello arrives: one that says nothing (a port scanner, a health
    // check) must not hold up the ranks behind it.
    std::vector<Fd> pending;
    for (int accepted = 0; accepted < world - 1 - rank;) {
        if (abort && abort->load()) fail(SW_ERR_ABORTED, what, ": the communicator was aborted in this process");
        const int ms = remaining_ms(deadline, 200);
        if (ms == 0) {
            std::vector<int> missing;
            for (int q = rank + 1; q < world; ++q)
                if (peers[q].fd < 0) missing.push_back(q);
            fail(SW_ERR_TIMEOUT, what, ": rank ", rank, " timed out after ", timeout_ms,
                 " ms waiting for rank(s) ", rank_list(missing), " of ", world, " to connect");
        }
        std::vector<pollfd> p{{listener.fd, POLLIN, 0}};
        for (const auto& c : pending) p.push_back({c.fd, POLLIN, 0});
        if (::poll(p.data(), p.size(), ms) <= 0) continue;
        if (p[0].revents & POLLIN) {
            Fd s(::accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (s.fd >= 0) {
                tune(s.fd);
                pending.push_back(std::move(s)); // polled from the next round
            }
        }
        std::vector<Fd> ready;
        for (size_t k = 1; k < p.size(); ++k)
            if (p[k].revents) ready.push_back(std::move(pending[k - 1]));
        pending.erase(std::remove_if(pending.begin(), pending.end(), [](const Fd& f) { return f.fd < 0; }), pending.end());
        for (Fd& s : ready) {
            Header hello{};
            std::string err;
            // The hello is 24 bytes sent right after connecting: once readable, it is all there (or the sender is not ours).
            if (!read_all(s.fd, reinterpret_cast<char*>(&hello), sizeof hello,
                          std::min(deadline, Clock::now() + std::chrono::milliseconds(1000)), &err))
                continue;
            if (hello.magic != kFrameMagic || hello.kind != kHello) continue; // not one of ours
            const auto q = static_cast<int64_t>(hello.seq);
            if (static_cast<int64_t>(hello.bytes) != world)
                fail(SW_ERR_MISMATCH, what, ": rank ", q, " was started with world size ", hello.bytes,
                     " but rank ", rank, " with ", world);
            if (q <= rank || q >= world || peers[q].fd >= 0)
                fail(SW_ERR_MISMATCH, what, ": two processes claim rank ", q, " (or it is out of range for world size ",
                     world, "); every process needs its own RANK");
            peers[q] = std::move(s);
            ++accepted;
        }
    }
    for (int q = 0; q < world; ++q)
        if (q != rank) set_nonblocking(peers[q].fd);
    return std::make_unique<TcpTransport>(rank, world, std::move(peers));
}

// The mesh of a job: rank r publishes its listening address in the store under `prefix`, the others read it there.
std::unique_ptr<Transport> connect_mesh_impl(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                             int64_t timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    int port = 0;
    Fd listener = listen_on("", 0, &port, "sw_comm_create_tcp");
    const std::string me = store_local_address(store) + " " + std::to_string(port);
    store_set(store, str(prefix, "/addr/", rank), me.data(), me.size());
    return build_mesh(
        std::move(listener), [&](int q) { return store_get(store, str(prefix, "/addr/", q), deadline); }, rank, world,
        deadline, timeout_ms, nullptr, "sw_comm_create_tcp");
}

// A sub-communicator's mesh (split.cpp): the members' listening addresses travel over this (the parent's)
// connections, in the split's collective #seq; then the members connect to each other as at creation.
std::unique_ptr<Transport> TcpTransport::split(uint64_t seq, const std::vector<int32_t>&, const std::vector<int32_t>& members,
                                               Clock::time_point deadline, const std::atomic<bool>& local_abort,
                                               const std::string& what) {
    if (members.empty()) return nullptr;
    const int n = static_cast<int>(members.size());
    const int me = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
    if (me == n) fail(SW_ERR_INTERNAL, what, ": rank ", rank_, " is not among its group's members");
    int port = 0;
    Fd listener = listen_on("", 0, &port, what);
    // This process's address as the group's peers reach it: this end of a connection to one of them (the parent's
    // connections run over the network the job uses).
    std::string host = "127.0.0.1";
    for (int32_t q : members)
        if (q != rank_ && peers_[q].fd >= 0) {
            host = address_of(peers_[q].fd);
            break;
        }
    constexpr size_t kAddr = 128; // "host port": an IPv6 address is at most 45 characters
    std::vector<char> addrs(static_cast<size_t>(n) * kAddr, 0);
    std::snprintf(addrs.data() + static_cast<size_t>(me) * kAddr, kAddr, "%s %d", host.c_str(), port);
    std::vector<Piece> sends, recvs;
    for (int i = 0; i < n; ++i) {
        if (i == me) continue;
        sends.push_back({members[i], addrs.data() + static_cast<size_t>(me) * kAddr, kAddr});
        recvs.push_back({members[i], addrs.data() + static_cast<size_t>(i) * kAddr, kAddr});
    }
    exchange(seq, sends, recvs, deadline, local_abort, what);
    auto address = [&](int i) {
        std::string a(addrs.data() + static_cast<size_t>(i) * kAddr, kAddr);
        return a.substr(0, a.find('\0'));
    };
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return build_mesh(std::move(listener), address, me, n, deadline, left > 0 ? left : 0, &local_abort, what);
}

// Between collectives: peeks at every peer's connection without blocking. A status frame is consumed, an abort
// notice taken (a destroy notice is no failure), data of a later collective left alone; a connection closed with
// nothing pending, and no destroy notice before it, is a lost peer.
int TcpTransport::poll_idle(sw_status* status, std::string* why) noexcept {
    std::unique_lock<std::mutex> lock(io_mu_, std::try_to_lock);
    if (!lock.owns_lock() || closed_) return -1; // an exchange runs (it watches the peers itself), or aborted
    try {
        std::vector<pollfd> p;
        std::vector<int> who;
        for (int q = 0; q < world_; ++q) {
            if (q == rank_ || dead_[q] || peers_[q].fd < 0) continue;
            p.push_back({peers_[q].fd, static_cast<short>(POLLIN | POLLRDHUP), 0});
            who.push_back(q);
        }
        if (p.empty() || ::poll(p.data(), p.size(), 0) <= 0) return -1;
        for (size_t k = 0; k < p.size(); ++k) {
            if (!p[k].revents) continue;
            const int q = who[k];
            const int fd = peers_[q].fd;
            for (;;) {
                Header h{};
                const ssize_t r = ::recv(fd, &h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
                if (r == static_cast<ssize_t>(sizeof h)) {
                    if (h.magic != kFrameMagic) break; // not ours to judge here: the next exchange reports it
                    if (h.kind == kStatus) {
                        ::recv(fd, &h, sizeof h, MSG_DONTWAIT); // whole (peeked): consumed
                        heard_[q] = Clock::now();
                        continue;
                    }
                    if (h.kind == kAbort) {
                        ::recv(fd, &h, sizeof h, MSG_DONTWAIT);
                        take_notice(q, h);
                        if (closed_by_peer_[q]) break; // destroyed: no failure
                        *status = notice_status_[q];
                        *why = str("aborted it: ", notice_[q]);
                        return q;
                    }
                    break; // data of a later collective: the next exchange reads it
                }
                if (r == 0) { // closed with nothing pending
                    dead_[q] = 1;
                    if (closed_by_peer_[q]) break;
                    *status = SW_ERR_ABORTED;
                    *why = "was lost: its connection closed without a notice (that process exited or was killed)";
                    return q;
                }
                if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    dead_[q] = 1;
                    *status = SW_ERR_ABORTED;
                    *why = str("was lost: its connection failed (", errno_text(errno), ")");
                    return q;
                }
                break; // nothing (or part of a frame) yet
            }
        }
    } catch (...) {
    }
    return -1;
}

} // namespace

std::unique_ptr<Transport> sw::connect_tcp_mesh(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                                int64_t timeout_ms) {
    return connect_mesh_impl(store, prefix, rank, world, timeout_ms);
}

#else // not Linux

std::unique_ptr<sw::Transport> sw::connect_tcp_mesh(StoreImpl&, const std::string&, int32_t, int32_t, int64_t) {
    fail(SW_ERR_UNSUPPORTED, "TCP communicators are not available on this platform build");
}

#endif
