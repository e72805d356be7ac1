#include "core/cuda_loader.h"

#include "core/error.h"
#include "core/plugin_loader.h"

#include <cstdlib>
#include <mutex>
#include <vector>


namespace sw {
namespace {

#if defined(__APPLE__)
constexpr const char* kPluginFile = "libshardwise_cuda.dylib";
#else
constexpr const char* kPluginFile = "libshardwise_cuda.so";
#endif

struct Loaded {
    const cuda::PluginApi* api = nullptr;
    std::string why;
};

Loaded load() {
    Loaded out;
    std::string tried;
    const auto candidates = plugin_candidates(kPluginFile, "SHARDWISE_CUDA_PLUGIN_PATH", /*beside_self=*/true);
    for (const auto& c : candidates) { // one at a time: a plugin of another ABI is skipped for the next candidate
        void* h = open_first({c}, "sw_cuda_plugin_api", nullptr, &tried);
        if (!h) continue;
        using Fn = const cuda::PluginApi* (*)();
        const cuda::PluginApi* api = reinterpret_cast<Fn>(find_symbol(h, "sw_cuda_plugin_api"))();
        if (!api || api->abi != cuda::kPluginAbi) {
            tried += str("\n  ", c, ": plugin ABI ", api ? api->abi : -1, ", expected ", cuda::kPluginAbi);
            continue; // left loaded: harmless
        }
        out.api = api; // never unloaded: devices may hold its function pointers until exit
        return out;
    }
    out.why = str("the CUDA backend (", kPluginFile, ") could not be loaded; this build or installation has no "
                  "CUDA backend. Tried:", tried);
    return out;
}

} // namespace

const cuda::PluginApi* cuda_plugin(std::string* why) {
    static Loaded loaded = load();
    if (!loaded.api && why) *why = loaded.why;
    return loaded.api;
}

void cuda_check(sw_status status, const std::string& err) {
    if (status != SW_OK) throw Error(status, err.empty() ? std::string("CUDA backend call failed") : err);
}

} // namespace sw
