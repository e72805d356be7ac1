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
    out.api = load_plugin_api<cuda::PluginApi>(kPluginFile, "SHARDWISE_CUDA_PLUGIN_PATH", "sw_cuda_plugin_api",
                                               cuda::kPluginAbi, &tried);
    if (!out.api)
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
