// Error channel of the C ABI: C++ code throws sw::Error; every exported function runs its body through
// sw::guard, which turns any exception into a status plus a thread-local message (sw_last_error).
#pragma once
#include "shardwise.h"

#include <exception>
#include <sstream>
#include <string>
#include <utility>

namespace sw {

class Error : public std::exception {
public:
    Error(sw_status status, std::string message) : status_(status), message_(std::move(message)) {}
    sw_status status() const noexcept { return status_; }
    const char* what() const noexcept override { return message_.c_str(); }
    const std::string& message() const noexcept { return message_; }

private:
    sw_status status_;
    std::string message_;
};

template <class... Parts>
std::string str(Parts&&... parts) {
    std::ostringstream os;
    (os << ... << std::forward<Parts>(parts));
    return os.str();
}

template <class... Parts>
[[noreturn]] void fail(sw_status status, Parts&&... parts) {
    throw Error(status, str(std::forward<Parts>(parts)...));
}

void set_last_error(const std::string& message) noexcept;

// Runs body(); returns SW_OK or the status of the exception it threw, recording "<fn>: <message>".
template <class Body>
sw_status guard(const char* fn, Body&& body) noexcept {
    try {
        body();
        return SW_OK;
    } catch (const Error& e) {
        set_last_error(str(fn, ": ", e.message()));
        return e.status();
    } catch (const std::bad_alloc&) {
        set_last_error(str(fn, ": out of memory"));
        return SW_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_last_error(str(fn, ": internal error: ", e.what()));
        return SW_ERR_INTERNAL;
    } catch (...) {
        set_last_error(str(fn, ": internal error: unknown exception"));
        return SW_ERR_INTERNAL;
    }
}

// Argument checks that name the argument.
template <class T>
T* require(T* p, const char* name) {
    if (!p) fail(SW_ERR_NULL_HANDLE, name, " is NULL; expected a valid pointer");
    return p;
}

} // namespace sw
