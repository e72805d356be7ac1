// Finds and loads the CUDA backend plugin (libshardwise_cuda.so) on first use.
#pragma once
#include "core/cuda_plugin_api.h"

#include <string>
#include <utility>

namespace sw {

// The plugin's API, or nullptr when it cannot be loaded; *why then says what was searched and why it
// failed. Thread-safe; the first call decides. Search order: SHARDWISE_CUDA_PLUGIN_PATH (file or folder),
// the folder of libshardwise itself, then the dynamic loader's default search.
const cuda::PluginApi* cuda_plugin(std::string* why);

// Throws sw::Error(status, err) when status != SW_OK.
void cuda_check(sw_status status, const std::string& err);

// Calls the table function `fn` with `args` (every parameter but the trailing std::string* err) and throws
// sw::Error(status, the plugin's message) when it fails: the one way the core checks a plugin call, e.g.
//   cuda_call(api, &cuda::PluginApi::memcpy_async, ordinal, dst, src, bytes, stream);
template <class... P, class... A>
void cuda_call(const cuda::PluginApi* api, sw_status (*cuda::PluginApi::*fn)(P...), A&&... args) {
    std::string err;
    cuda_check((api->*fn)(std::forward<A>(args)..., &err), err);
}

} // namespace sw
