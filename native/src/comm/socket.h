// Sockets for the TCP store and the TCP transport (Linux): an owning file descriptor, connecting and listening with
// deadlines, and blocking-with-deadline I/O on nonblocking sockets. Nothing here knows about stores or collectives.
#pragma once
#include "comm/transport.h" // Clock

#include <string>

namespace sw {

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
    void reset(); // closes the descriptor (if any)
};

std::string errno_text(int e);
// Milliseconds left until `deadline`, at most cap_ms; 0 when it has passed.
int remaining_ms(Clock::time_point deadline, int cap_ms);
void set_nonblocking(int fd);
// TCP_NODELAY and SO_KEEPALIVE.
void tune(int fd);
// Connects to host:port, retrying refused connections (the server may not be up yet) until the deadline.
Fd connect_to(const std::string& host, int port, Clock::time_point deadline, const std::string& what);
// A listening socket on host:port (host empty: every interface; port 0: any free port).
Fd listen_on(const std::string& host, int port, int* actual_port, const std::string& what);
// Blocking-with-deadline I/O on a nonblocking socket: all n bytes sent (writing) or received. Returns false on
// EOF/error/deadline (err says which: "timed out", "connection closed" or the system's message).
bool write_all(int fd, const char* p, size_t n, Clock::time_point deadline, std::string* err);
bool read_all(int fd, char* p, size_t n, Clock::time_point deadline, std::string* err);
// The local address of a connected socket ("127.0.0.1" when it cannot be read).
std::string address_of(int fd);

} // namespace sw
