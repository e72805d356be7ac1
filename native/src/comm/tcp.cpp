// TCP for multi-process communicators: the store (rendezvous: a key-value server run by rank 0, as torchrun's
// MASTER_ADDR:MASTER_PORT) and the TCP transport (a full mesh of sockets between the ranks, set up through the
// store). Everything polls with deadlines: no call here blocks past its timeout, and a peer that dies is noticed at
// once (its sockets close).
#include "comm/comm_internal.h"

#if defined(__linux__) // accept4, SOCK_CLOEXEC, MSG_NOSIGNAL, POLLRDHUP: other systems get the stubs at the end
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_map>

#ifndef POLLRDHUP
#define POLLRDHUP 0
#endif

using namespace sw;

namespace {

// ------------------------------------------------------------------ sockets

struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd = o.fd;
            o.fd = -1;
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    void reset() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

std::string errno_text(int e) { return std::strerror(e); }

int remaining_ms(Clock::time_point deadline, int cap_ms) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return 0;
    return static_cast<int>(std::min<long long>(left, cap_ms));
}

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        fail(SW_ERR_BACKEND, "fcntl(O_NONBLOCK) failed: ", errno_text(errno));
}

void tune(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

// Connects to host:port, retrying refused connections (the server may not be up yet) until the deadline.
Fd connect_to(const std::string& host, int port, Clock::time_point deadline, const std::string& what) {
    std::string last = "no attempt";
    while (true) {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* res = nullptr;
        const std::string service = std::to_string(port);
        const int gai = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
        if (gai != 0) fail(SW_ERR_INVALID_ARGUMENT, what, ": cannot resolve '", host, "': ", ::gai_strerror(gai));
        for (addrinfo* a = res; a; a = a->ai_next) {
            Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
            if (s.fd < 0) {
                last = errno_text(errno);
                continue;
            }
            set_nonblocking(s.fd);
            int rc = ::connect(s.fd, a->ai_addr, a->ai_addrlen);
            if (rc < 0 && errno == EINPROGRESS) {
                pollfd p{s.fd, POLLOUT, 0};
                rc = ::poll(&p, 1, std::max(1, remaining_ms(deadline, 1000)));
                int err = 0;
                socklen_t len = sizeof err;
                if (rc == 1 && ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) rc = 0;
                else {
                    errno = rc == 0 ? ETIMEDOUT : (err ? err : errno);
                    rc = -1;
                }
            }
            if (rc == 0) {
                ::freeaddrinfo(res);
                tune(s.fd);
                return s;
            }
            last = errno_text(errno);
        }
        ::freeaddrinfo(res);
        if (Clock::now() >= deadline)
            fail(SW_ERR_TIMEOUT, what, ": could not connect to ", host, ":", port, " before the timeout (last error: ", last, ")");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

// A listening socket on host:port (host empty: every interface; port 0: any free port).
Fd listen_on(const std::string& host, int port, int* actual_port, const std::string& what) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    const std::string service = std::to_string(port);
    const int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
    if (gai != 0) fail(SW_ERR_INVALID_ARGUMENT, what, ": cannot resolve '", host, "': ", ::gai_strerror(gai));
    std::string last = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
        Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
        if (s.fd < 0) {
            last = errno_text(errno);
            continue;
        }
        int one = 1;
        ::setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(s.fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(s.fd, 1024) == 0) {
            sockaddr_storage ss{};
            socklen_t len = sizeof ss;
            ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&ss), &len);
            *actual_port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                          : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
            ::freeaddrinfo(res);
            set_nonblocking(s.fd);
            return s;
        }
        last = errno_text(errno);
    }
    ::freeaddrinfo(res);
    fail(SW_ERR_BACKEND, what, ": cannot listen on ", host.empty() ? "*" : host, ":", port, ": ", last);
}

// Blocking-with-deadline I/O on a nonblocking socket: all n bytes sent (writing) or received. Returns false on
// EOF/error/deadline (err says which: "timed out", "connection closed" or the system's message).
bool transfer_all(int fd, char* p, size_t n, bool writing, Clock::time_point deadline, std::string* err) {
    while (n) {
        const ssize_t k = writing ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= static_cast<size_t>(k);
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            pollfd pf{fd, static_cast<short>(writing ? POLLOUT : POLLIN), 0};
            const int ms = remaining_ms(deadline, 1000);
            if (ms == 0) {
                *err = "timed out";
                return false;
            }
            ::poll(&pf, 1, ms);
            continue;
        }
        *err = k < 0 ? errno_text(errno) : "connection closed";
        return false;
    }
    return true;
}
bool write_all(int fd, const char* p, size_t n, Clock::time_point deadline, std::string* err) {
    return transfer_all(fd, const_cast<char*>(p), n, true, deadline, err); // send() only reads
}
bool read_all(int fd, char* p, size_t n, Clock::time_point deadline, std::string* err) {
    return transfer_all(fd, p, n, false, deadline, err);
}

// ------------------------------------------------------------------ store protocol
// Request: [u8 op][u32 key length][key][u64 value length][value]; op 1 = set (reply: u8 1), 2 = get (reply when the key
// exists: [u64 length][value]).
constexpr uint8_t kSet = 1, kGet = 2;
constexpr uint64_t kMaxKey = 4096, kMaxValue = uint64_t{64} << 20;

class StoreServer {
public:
    StoreServer(const std::string& host, int port) {
        listener_ = listen_on(host, port, &port_, "sw_store_create (server)");
        int fds[2];
        if (::pipe(fds) != 0) fail(SW_ERR_BACKEND, "sw_store_create: pipe failed: ", errno_text(errno));
        wake_r_ = Fd(fds[0]);
        wake_w_ = Fd(fds[1]);
        thread_ = std::thread([this] { serve(); });
    }
    ~StoreServer() {
        const char c = 'x';
        (void)!::write(wake_w_.fd, &c, 1);
        thread_.join();
    }
    int port() const { return port_; }

private:
    struct Client {
        Fd fd;
        std::string in;
        std::deque<std::string> waiting; // keys of gets not answered yet, in order
    };

    void reply(Client& c, const std::string& bytes) {
        std::string err;
        if (!write_all(c.fd.fd, bytes.data(), bytes.size(), Clock::now() + std::chrono::seconds(10), &err)) c.fd.reset();
    }
    static std::string value_reply(const std::string& v) {
        std::string out(8, '\0');
        const uint64_t n = v.size();
        std::memcpy(out.data(), &n, 8);
        return out + v;
    }
    // Parses complete requests from c.in; false when the client sent garbage.
    bool handle(Client& c) {
        while (true) {
            if (c.in.size() < 5) return true;
            const uint8_t op = static_cast<uint8_t>(c.in[0]);
            uint32_t klen;
            std::memcpy(&klen, c.in.data() + 1, 4);
            if ((op != kSet && op != kGet) || klen > kMaxKey) return false;
            if (c.in.size() < 5 + klen + 8) return true;
            uint64_t vlen;
            std::memcpy(&vlen, c.in.data() + 5 + klen, 8);
            if (vlen > kMaxValue) return false;
            if (c.in.size() < 5 + klen + 8 + vlen) return true;
            std::string key = c.in.substr(5, klen);
            std::string value = c.in.substr(5 + klen + 8, vlen);
            c.in.erase(0, 5 + klen + 8 + vlen);
            if (op == kSet) {
                data_[key] = std::move(value);
                reply(c, std::string(1, '\1'));
                answer_waiting();
            } else {
                c.waiting.push_back(std::move(key));
                answer_waiting();
            }
        }
    }
    void answer_waiting() {
        for (auto& c : clients_)
            while (c.fd.fd >= 0 && !c.waiting.empty()) {
                auto it = data_.find(c.waiting.front());
                if (it == data_.end()) break; // gets are answered in order
                c.waiting.pop_front();
                reply(c, value_reply(it->second));
            }
    }
    void serve() {
        while (true) {
            std::vector<pollfd> p;
            p.push_back({wake_r_.fd, POLLIN, 0});
            p.push_back({listener_.fd, POLLIN, 0});
            for (auto& c : clients_) p.push_back({c.fd.fd, POLLIN, 0});
            if (::poll(p.data(), p.size(), 1000) < 0 && errno != EINTR) return;
            if (p[0].revents) return;
            if (p[1].revents & POLLIN) {
                while (true) {
                    const int fd = ::accept4(listener_.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    tune(fd);
                    clients_.push_back(Client{Fd(fd), {}, {}});
                }
            }
            for (size_t i = 0; i + 2 < p.size(); ++i) {
                if (!p[i + 2].revents) continue;
                Client& c = clients_[i];
                char buf[65536];
                while (c.fd.fd >= 0) {
                    const ssize_t r = ::recv(c.fd.fd, buf, sizeof buf, 0);
                    if (r > 0) {
                        c.in.append(buf, static_cast<size_t>(r));
                        continue;
                    }
                    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
                    c.fd.reset(); // closed or failed
                }
                if (c.fd.fd >= 0 && !handle(c)) c.fd.reset();
            }
            clients_.erase(std::remove_if(clients_.begin(), clients_.end(), [](const Client& c) { return c.fd.fd < 0; }),
                           clients_.end());
        }
    }

    Fd listener_, wake_r_, wake_w_;
    int port_ = 0;
    std::vector<Client> clients_;
    std::unordered_map<std::string, std::string> data_;
    std::thread thread_;
};

} // namespace

namespace sw {

// The store handle: a client connected to the server (which this process may also run).
struct StoreImpl {
    std::string host;
    int port = 0;
    int64_t timeout_ms = 0;
    std::unique_ptr<StoreServer> server;
    Fd fd;
    std::mutex mu; // one request at a time
    std::string local_address; // this process's address as the server sees it

    void request(const std::string& frame, const std::string& what) {
        std::string err;
        if (!write_all(fd.fd, frame.data(), frame.size(), Clock::now() + std::chrono::milliseconds(timeout_ms), &err))
            fail(SW_ERR_BACKEND, what, ": the store at ", host, ":", port, " failed: ", err);
    }
    static std::string frame(uint8_t op, const std::string& key, const void* value, uint64_t bytes) {
        std::string f(1, static_cast<char>(op));
        const uint32_t klen = static_cast<uint32_t>(key.size());
        f.append(reinterpret_cast<const char*>(&klen), 4);
        f += key;
        f.append(reinterpret_cast<const char*>(&bytes), 8);
        if (bytes) f.append(static_cast<const char*>(value), bytes);
        return f;
    }
    void set(const std::string& key, const void* value, uint64_t bytes) {
        std::lock_guard<std::mutex> lock(mu);
        request(frame(kSet, key, value, bytes), "sw_store_set");
        char ack = 0;
        std::string err;
        if (!read_all(fd.fd, &ack, 1, Clock::now() + std::chrono::milliseconds(timeout_ms), &err))
            fail(SW_ERR_BACKEND, "sw_store_set('", key, "'): the store at ", host, ":", port, " did not acknowledge: ", err);
        if (ack != 1) {
            fd.reset();
            fail(SW_ERR_BACKEND, "sw_store_set('", key, "'): the store at ", host, ":", port,
                 " sent a malformed reply: is MASTER_ADDR:MASTER_PORT a Shardwise store of the same version?");
        }
    }
    std::string get(const std::string& key, Clock::time_point deadline) {
        std::lock_guard<std::mutex> lock(mu);
        request(frame(kGet, key, nullptr, 0), "sw_store_get");
        uint64_t n = 0;
        std::string err;
        if (!read_all(fd.fd, reinterpret_cast<char*>(&n), 8, deadline, &err)) {
            const bool timeout = err == "timed out";
            // The reply may still come: this connection is out of step, so no later request may use it.
            fd.reset();
            if (timeout)
                fail(SW_ERR_TIMEOUT, "sw_store_get: key '", key, "' was not set within ", timeout_ms,
                     " ms (is every rank running, with the same MASTER_ADDR/MASTER_PORT?)");
            fail(SW_ERR_BACKEND, "sw_store_get('", key, "'): the store at ", host, ":", port, " failed: ", err);
        }
        if (n > kMaxValue) { // not a Shardwise store (a web server's "HTTP/1.1" read as a length, say)
            fd.reset();
            fail(SW_ERR_BACKEND, "sw_store_get('", key, "'): the store at ", host, ":", port, " sent a malformed reply (a value of ",
                 n, " bytes; at most ", kMaxValue, "): is MASTER_ADDR:MASTER_PORT a Shardwise store of the same version?");
        }
        std::string v(n, '\0');
        if (n && !read_all(fd.fd, v.data(), n, Clock::now() + std::chrono::milliseconds(timeout_ms), &err))
            fail(SW_ERR_BACKEND, "sw_store_get('", key, "'): the store at ", host, ":", port, " failed: ", err);
        return v;
    }
};

} // namespace sw

struct sw_store_s {
    std::shared_ptr<sw::StoreImpl> impl;
};

namespace {

// ------------------------------------------------------------------ TCP transport

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
};
static_assert(sizeof(Header) == 24, "Header has no padding");

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
          notice_status_(world, SW_ERR_ABORTED), heard_(world) {}
    int32_t rank() const override { return rank_; }
    int32_t world() const override { return world_; }
    const char* name() const override { return "tcp"; }

    void exchange(uint64_t seq, const std::vector<Piece>& sends, const std::vector<Piece>& recvs, Clock::time_point deadline,
                  const std::atomic<bool>& local_abort, const std::string& what) override {
        std::unique_lock<std::mutex> lock(io_mu_);
        if (closed_) fail(SW_ERR_ABORTED, what, ": the communicator's connections are closed (it was aborted)");
        std::vector<Out> out(world_);
        std::vector<In> in(world_);
        std::vector<Header> headers;
        headers.reserve(sends.size());
        for (const auto& s : sends) {
            headers.push_back(Header{kFrameMagic, kData, seq, s.bytes});
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
            if (!notice_[q].empty()) fail(notice_status_[q], what, ": rank ", q, " aborted the communicator: ", notice_[q]);
            fail(SW_ERR_ABORTED, what, ": lost the connection to rank ", q, " (", why,
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
                        if (!notice_[q].empty()) fail(notice_status_[q], what, ": rank ", q, " aborted the communicator: ", notice_[q]);
                        fail(SW_ERR_ABORTED, what, ": lost the connection to rank ", q,
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
                throw timeout_error(what, std::move(missing), std::move(waiting));
            }
            if (now >= next_status) { // still waiting: tell the peers this rank is alive (between frames only)
                next_status = now + kStatusEvery;
                for (int q = 0; q < world_; ++q)
                    if (q != rank_ && !dead_[q] && !dirty_[q] && !pending_out(q)) send_status(q, seq);
            }
            const int n = ::poll(p.data(), p.size(), ms);
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
                    read_from(q, in[q], seq, what, lost);
                }
            }
        }
    }

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
                Header h{kFrameMagic, kAbort, static_cast<uint64_t>(status), text.size()}; // seq carries the status
                std::string err;
                if (write_all(peers_[q].fd, reinterpret_cast<const char*>(&h), sizeof h, deadline, &err))
                    write_all(peers_[q].fd, text.data(), text.size(), deadline, &err);
            }
            ::shutdown(peers_[q].fd, SHUT_WR); // the peer sees the end of the stream after the notice
        }
    }

private:
    template <class Lost>
    void read_from(int q, In& st, uint64_t seq, const std::string& what, Lost&& lost) {
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
                    if (st.hdr.seq != seq || st.hdr.bytes != piece.bytes)
                        fail(SW_ERR_MISMATCH, what, ": rank ", q, " sent ", st.hdr.bytes, " bytes for its collective #",
                             st.hdr.seq, " where ", piece.bytes, " bytes of #", seq, " were expected");
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
        const Header h{kFrameMagic, kStatus, seq, 0};
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
        const bool known = status == SW_ERR_TIMEOUT || status == SW_ERR_MISMATCH || status == SW_ERR_BACKEND;
        notice_status_[q] = known ? status : SW_ERR_ABORTED;
        notice_[q] = reason.empty() ? std::string("(no reason given)") : reason;
    }

    [[noreturn]] void abort_notice(int q, const Header& h, const std::string& what) {
        take_notice(q, h);
        fail(notice_status_[q], what, ": rank ", q, " aborted the communicator: ", notice_[q]);
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
};

sw_store_s* checked_store(sw_store h) { return checked(h, HandleKind::Store, "store"); }

std::string address_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "127.0.0.1";
    char buf[INET6_ADDRSTRLEN] = {0};
    if (ss.ss_family == AF_INET6)
        ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof buf);
    else
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
    return buf;
}

// Builds the mesh: rank r publishes its listening address, connects to every lower rank (sending a hello with its
// rank) and accepts one connection from every higher rank.
std::unique_ptr<Transport> connect_mesh_impl(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                        int64_t timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    std::vector<Fd> peers(world);
    int port = 0;
    Fd listener = listen_on("", 0, &port, "sw_comm_create_tcp");
    const std::string me = store.local_address + " " + std::to_string(port);
    store.set(str(prefix, "/addr/", rank), me.data(), me.size());
    for (int q = 0; q < rank; ++q) {
        const std::string addr = store.get(str(prefix, "/addr/", q), deadline);
        const auto space = addr.rfind(' ');
        if (space == std::string::npos) fail(SW_ERR_BACKEND, "sw_comm_create_tcp: rank ", q, " published a bad address '", addr, "'");
        Fd s = connect_to(addr.substr(0, space), std::atoi(addr.c_str() + space + 1), deadline,
                          str("sw_comm_create_tcp: rank ", rank, " connecting to rank ", q));
        Header hello{kFrameMagic, kHello, static_cast<uint64_t>(rank), static_cast<uint64_t>(world)};
        std::string err;
        if (!write_all(s.fd, reinterpret_cast<const char*>(&hello), sizeof hello, deadline, &err))
            fail(SW_ERR_BACKEND, "sw_comm_create_tcp: greeting rank ", q, " failed: ", err);
        peers[q] = std::move(s);
    }
    // Accepted connections wait here until their hello arrives: one that says nothing (a port scanner, a health
    // check) must not hold up the ranks behind it.
    std::vector<Fd> pending;
    for (int accepted = 0; accepted < world - 1 - rank;) {
        const int ms = remaining_ms(deadline, 200);
        if (ms == 0) {
            std::vector<int> missing;
            for (int q = rank + 1; q < world; ++q)
                if (peers[q].fd < 0) missing.push_back(q);
            fail(SW_ERR_TIMEOUT, "sw_comm_create_tcp: rank ", rank, " timed out after ", timeout_ms,
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
                fail(SW_ERR_MISMATCH, "sw_comm_create_tcp: rank ", q, " was started with world size ", hello.bytes,
                     " but rank ", rank, " with ", world);
            if (q <= rank || q >= world || peers[q].fd >= 0)
                fail(SW_ERR_MISMATCH, "sw_comm_create_tcp: two processes claim rank ", q, " (or it is out of range for world size ",
                     world, "); every process needs its own RANK");
            peers[q] = std::move(s);
            ++accepted;
        }
    }
    for (int q = 0; q < world; ++q)
        if (q != rank) set_nonblocking(peers[q].fd);
    return std::make_unique<TcpTransport>(rank, world, std::move(peers));
}

} // namespace

StoreImpl* sw::store_of(sw_store store) { return checked_store(store)->impl.get(); }
std::unique_ptr<Transport> sw::connect_tcp_mesh(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                                int64_t timeout_ms) {
    return connect_mesh_impl(store, prefix, rank, world, timeout_ms);
}
std::string sw::store_get(StoreImpl& store, const std::string& key) {
    return store.get(key, Clock::now() + std::chrono::milliseconds(store.timeout_ms));
}
void sw::store_set(StoreImpl& store, const std::string& key, const void* value, uint64_t bytes) { store.set(key, value, bytes); }

extern "C" {

SW_API sw_status sw_store_create(const char* host, int32_t port, int32_t is_server, int64_t timeout_ms, sw_store* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        require(host, "host");
        if (!*host) fail(SW_ERR_INVALID_ARGUMENT, "host is empty; expected the store's host name or address (MASTER_ADDR)");
        if (port < 0 || port > 65535 || (port == 0 && !is_server))
            fail(SW_ERR_INVALID_ARGUMENT, "port = ", port, "; expected 1..65535 (0 only for a server: any free port)");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        auto impl = std::make_shared<StoreImpl>();
        impl->host = host;
        impl->timeout_ms = resolve_timeout(timeout_ms);
        impl->port = port;
        if (is_server) {
            impl->server = std::make_unique<StoreServer>(host, port);
            impl->port = impl->server->port();
        }
        impl->fd = connect_to(impl->host, impl->port, Clock::now() + std::chrono::milliseconds(impl->timeout_ms),
                              str("sw_store_create: connecting to the store at ", impl->host));
        impl->local_address = address_of(impl->fd.fd);
        auto* s = new sw_store_s{std::move(impl)};
        register_handle(s, HandleKind::Store);
        *out = s;
    });
}

SW_API sw_status sw_store_destroy(sw_store store) {
    return guard(__func__, [&] {
        if (!store) return;
        auto* s = checked_store(store);
        unregister_handle(s);
        delete s;
    });
}

SW_API sw_status sw_store_get_port(sw_store store, int32_t* port) {
    return guard(__func__, [&] {
        require(port, "port");
        *port = checked_store(store)->impl->port;
    });
}

SW_API sw_status sw_store_set(sw_store store, const char* key, const void* value, uint64_t bytes) {
    return guard(__func__, [&] {
        auto* s = checked_store(store);
        require(key, "key");
        if (!*key || std::strlen(key) > kMaxKey) fail(SW_ERR_INVALID_ARGUMENT, "key must have 1..", kMaxKey, " characters");
        if (bytes) require(value, "value");
        if (bytes > kMaxValue) fail(SW_ERR_INVALID_ARGUMENT, "bytes = ", bytes, "; a store value holds at most ", kMaxValue);
        s->impl->set(key, value, bytes);
    });
}

SW_API sw_status sw_store_get(sw_store store, const char* key, void* value, uint64_t capacity, uint64_t* bytes) {
    return guard(__func__, [&] {
        auto* s = checked_store(store);
        require(key, "key");
        require(bytes, "bytes");
        if (!*key || std::strlen(key) > kMaxKey) fail(SW_ERR_INVALID_ARGUMENT, "key must have 1..", kMaxKey, " characters");
        if (capacity) require(value, "value");
        const std::string v = s->impl->get(key, Clock::now() + std::chrono::milliseconds(s->impl->timeout_ms));
        *bytes = v.size();
        if (v.size() > capacity)
            fail(SW_ERR_INVALID_ARGUMENT, "the value of '", key, "' has ", v.size(), " bytes but capacity is ", capacity);
        if (!v.empty()) std::memcpy(value, v.data(), v.size());
    });
}

SW_API sw_status sw_comm_create_tcp(sw_device device, sw_store store, const char* prefix, int32_t rank, int32_t world_size,
                                    int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        auto* s = checked_store(store);
        require(prefix, "prefix");
        check_prefix(prefix);
        check_job(rank, world_size, timeout_ms);
        if (dev->impl->is_cuda())
            fail(SW_ERR_UNSUPPORTED, "device is a CUDA device; TCP communicators carry host memory (CPU devices): use NCCL for GPUs");
        const int64_t t = resolve_timeout(timeout_ms);
        auto transport = connect_mesh_impl(*s->impl, prefix, rank, world_size, t);
        *out = make_remote_comm(dev->impl, std::move(transport), t);
    });
}

} // extern "C"

#else // not Linux

extern "C" {
SW_API sw_status sw_store_create(const char*, int32_t, int32_t, int64_t, sw_store* out) {
    return sw::guard(__func__, [&] {
        if (out) *out = nullptr;
        sw::fail(SW_ERR_UNSUPPORTED, "the TCP store is not available on this platform build");
    });
}
SW_API sw_status sw_store_destroy(sw_store) { return SW_OK; }
SW_API sw_status sw_store_get_port(sw_store, int32_t*) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_store_set(sw_store, const char*, const void*, uint64_t) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_store_get(sw_store, const char*, void*, uint64_t, uint64_t*) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_comm_create_tcp(sw_device, sw_store, const char*, int32_t, int32_t, int64_t, sw_comm* out) {
    return sw::guard(__func__, [&] {
        if (out) *out = nullptr;
        sw::fail(SW_ERR_UNSUPPORTED, "TCP communicators are not available on this platform build");
    });
}
}
#endif
