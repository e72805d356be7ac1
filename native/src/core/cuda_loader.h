// Finds and loads the CUDA backend plugin (libshardwise_cuda.so) on first use.
#pragma once
#include "core/cuda_plugin_api.h"

#include <string>

namespace sw {

// The plugin's API, or nullptr when it cannot be loaded; *why then says what was searched and why it
// failed. Thread-safe; the first call decides. Search order: SHARDWISE_CUDA_PLUGIN_PATH (file or folder),
// the folder of libshardwise itself, then the dynamic loader's default search.
const cuda::PluginApi* cuda_plugin(std::string* why);

// Throws sw::Error(status, err) when status != SW_OK.
void cuda_check(sw_status status, const std::string& err);

} // namespace sw
