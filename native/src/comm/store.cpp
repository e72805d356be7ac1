// The TCP store: server and client (see store.h). Everything polls with deadlines: no call here blocks past its
// timeout.
#include "comm/store.h"

#include "core/error.h"

#if defined(__linux__)
#include "comm/socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sw {
namespace {

// ------------------------------------------------------------------ store protocol
// Request: [u8 op][u32 key length][key][u64 value length][value]; op 1 = set (reply: u8 1), 2 = get (reply when the key
// exists: [u64 length][value]).
constexpr uint8_t kSet = 1, kGet = 2;
constexpr uint64_t kMaxKey = kStoreMaxKey, kMaxValue = kStoreMaxValue;

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

std::shared_ptr<StoreImpl> store_create(const char* host, int32_t port, bool is_server, int64_t timeout_ms) {
    auto impl = std::make_shared<StoreImpl>();
    impl->host = host;
    impl->timeout_ms = timeout_ms;
    impl->port = port;
    if (is_server) {
        impl->server = std::make_unique<StoreServer>(host, port);
        impl->port = impl->server->port();
    }
    impl->fd = connect_to(impl->host, impl->port, Clock::now() + std::chrono::milliseconds(impl->timeout_ms),
                          str("sw_store_create: connecting to the store at ", impl->host));
    impl->local_address = address_of(impl->fd.fd);
    return impl;
}

int32_t store_port(const StoreImpl& store) { return store.port; }
const std::string& store_local_address(const StoreImpl& store) { return store.local_address; }
void store_set(StoreImpl& store, const std::string& key, const void* value, uint64_t bytes) { store.set(key, value, bytes); }
std::string store_get(StoreImpl& store, const std::string& key, Clock::time_point deadline) { return store.get(key, deadline); }
std::string store_get(StoreImpl& store, const std::string& key) {
    return store.get(key, Clock::now() + std::chrono::milliseconds(store.timeout_ms));
}

} // namespace sw

#else // not Linux: no store (comm_api.cpp's exports say so before getting here)

namespace sw {
struct StoreImpl {};
std::shared_ptr<StoreImpl> store_create(const char*, int32_t, bool, int64_t) {
    fail(SW_ERR_UNSUPPORTED, "the TCP store is not available on this platform build");
}
int32_t store_port(const StoreImpl&) { fail(SW_ERR_UNSUPPORTED, "no TCP store"); }
const std::string& store_local_address(const StoreImpl&) { fail(SW_ERR_UNSUPPORTED, "no TCP store"); }
void store_set(StoreImpl&, const std::string&, const void*, uint64_t) { fail(SW_ERR_UNSUPPORTED, "no TCP store"); }
std::string store_get(StoreImpl&, const std::string&, Clock::time_point) { fail(SW_ERR_UNSUPPORTED, "no TCP store"); }
std::string store_get(StoreImpl&, const std::string&) { fail(SW_ERR_UNSUPPORTED, "no TCP store"); }
} // namespace sw

#endif
