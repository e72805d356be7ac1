#include "core/cuda_loader.h"

#include "core/error.h"
#include "core/plugin_loader.h"

namespace sw {

const cuda::PluginApi* cuda_plugin(std::string* why) {
    static const LoadedPlugin<cuda::PluginApi> loaded = load_plugin<cuda::PluginApi>(
        "shardwise_cuda", "SHARDWISE_CUDA_PLUGIN_PATH", "sw_cuda_plugin_api", cuda::kPluginAbi, "the CUDA backend",
        "; this build or installation has no CUDA backend.");
    if (!loaded.api && why) *why = loaded.why;
    return loaded.api;
}

void cuda_check(sw_status status, const std::string& err) {
    if (status != SW_OK) throw Error(status, err.empty() ? std::string("CUDA backend call failed") : err);
}

} // namespace sw
