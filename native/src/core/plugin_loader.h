// Finding and opening optional shared libraries at run time: Shardwise's own plugins (libshardwise_cuda,
// libshardwise_mpi) and third-party libraries it never links (libnccl.so.2).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sw {

// Where to look for `file`, in order: the environment variable `env_var` (a file, or a folder holding `file`;
// skipped when unset or empty), the folder of libshardwise itself (when beside_self), then `file` alone, which the
// dynamic loader resolves through its default search (LD_LIBRARY_PATH, rpath, the system's library paths).
std::vector<std::string> plugin_candidates(const char* file, const char* env_var, bool beside_self);

// dlopen()s the candidates in order (RTLD_NOW | RTLD_LOCAL) until one loads and has `symbol` (when not null);
// returns its handle (never closed) and sets *path, or returns null with every attempt and its error appended to
// *tried ("\n  candidate: reason").
void* open_first(const std::vector<std::string>& candidates, const char* symbol, std::string* path, std::string* tried);

// dlsym, or null.
void* find_symbol(void* library, const char* name);

// A Shardwise plugin: its exported `entry` function (no arguments) returns a table whose first member is an int32 `abi`.
// Tries plugin_candidates(file, env_var, beside libshardwise) one at a time and returns the table of the first that
// loads and has ABI `abi` (a plugin of another ABI is skipped for the next candidate; libraries are never unloaded:
// devices and communicators keep function pointers until exit); null with every attempt appended to *tried.
template <class Api>
const Api* load_plugin_api(const char* file, const char* env_var, const char* entry, int32_t abi, std::string* tried) {
    for (const auto& c : plugin_candidates(file, env_var, /*beside_self=*/true)) {
        void* h = open_first({c}, entry, nullptr, tried);
        if (!h) continue;
        const Api* api = reinterpret_cast<const Api* (*)()>(find_symbol(h, entry))();
        if (api && api->abi == abi) return api;
        *tried += "\n  " + c + ": plugin ABI " + std::to_string(api ? api->abi : -1) + ", expected " + std::to_string(abi);
    }
    return nullptr;
}

} // namespace sw
