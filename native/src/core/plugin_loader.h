// The one loader of optional shared libraries at run time, with two entry points: load_plugin_api for Shardwise's own
// plugins (libshardwise_cuda, libshardwise_mpi: one exported function returns a versioned table) and
// load_symbol_table for third-party libraries it never links, whose functions are looked up one by one (libnccl.so.2).
#pragma once
#include <cstdint>
#include <initializer_list>
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

// A Shardwise plugin as a process loads it once: its table, or null and why not.
template <class Api>
struct LoadedPlugin {
    const Api* api = nullptr;
    std::string why; // "<what> (<file>) could not be loaded<reason> Tried:" and every attempt
};

// load_plugin_api for the plugin lib<stem> (.so; .dylib on macOS), with the message a caller reports when it fails.
// Call it once (from a function-local static): the plugin is found and opened only once per process.
template <class Api>
LoadedPlugin<Api> load_plugin(const char* stem, const char* env_var, const char* entry, int32_t abi, const char* what,
                              const char* reason) {
#if defined(__APPLE__)
    const std::string file = std::string("lib") + stem + ".dylib";
#else
    const std::string file = std::string("lib") + stem + ".so";
#endif
    LoadedPlugin<Api> out;
    std::string tried;
    out.api = load_plugin_api<Api>(file.c_str(), env_var, entry, abi, &tried);
    if (!out.api) out.why = std::string(what) + " (" + file + ") could not be loaded" + reason + " Tried:" + tried;
    return out;
}

// A third-party library opened by load_symbol_table: null `library` when none of the candidates loaded or the one that
// loaded lacks a required symbol.
struct SymbolTable {
    void* library = nullptr;                    // look the symbols up with find_symbol
    std::string path;                           // the candidate that loaded
    std::vector<std::string> optional_missing;  // the optional symbols it does not have
};
// Tries plugin_candidates(file, env_var, not beside libshardwise) in order and opens the first that loads (every attempt
// that failed is appended to *tried, "\n  candidate: reason"); then every name of `required` must resolve, else the
// result has no library and *missing_required lists the absent ones ("a, b"). Libraries are never unloaded.
SymbolTable load_symbol_table(const char* file, const char* env_var, std::initializer_list<const char*> required,
                              std::initializer_list<const char*> optional, std::string* tried, std::string* missing_required);

} // namespace sw
