// Sockets (see socket.h). Linux only (accept4, SOCK_CLOEXEC, MSG_NOSIGNAL, POLLRDHUP); other systems have no TCP
// communicators (comm_api.cpp answers SW_ERR_UNSUPPORTED there).
#if defined(__linux__)
#include "comm/socket.h"

#include "core/error.h"

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
#include <thread>

namespace sw {

void Fd::reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

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

static bool transfer_all(int fd, char* p, size_t n, bool writing, Clock::time_point deadline, std::string* err) {
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

} // namespace sw

#endif // __linux__
