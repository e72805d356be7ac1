#include "core/cuda_loader.h"

#include "core/error.h"

#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <sys/stat.h>
#endif

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

#if defined(__linux__) || defined(__APPLE__)
bool is_dir(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string own_folder() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&cuda_plugin), &info) && info.dli_fname) {
        std::string path = info.dli_fname;
        const auto slash = path.find_last_of('/');
        if (slash != std::string::npos) return path.substr(0, slash);
    }
    return {};
}

Loaded load() {
    Loaded out;
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("SHARDWISE_CUDA_PLUGIN_PATH"); env && *env) {
        std::string p = env;
        candidates.push_back(is_dir(p) ? p + "/" + kPluginFile : p);
    }
    if (auto dir = own_folder(); !dir.empty()) candidates.push_back(dir + "/" + kPluginFile);
    candidates.push_back(kPluginFile); // default search (LD_LIBRARY_PATH, rpath, ...)
    std::string tried;
    for (const auto& c : candidates) {
        void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = dlerror();
            tried += str("\n  ", c, ": ", e ? e : "not loadable");
            continue;
        }
        using Fn = const cuda::PluginApi* (*)();
        auto fn = reinterpret_cast<Fn>(dlsym(h, "sw_cuda_plugin_api"));
        if (!fn) {
            tried += str("\n  ", c, ": no symbol sw_cuda_plugin_api");
            dlclose(h);
            continue;
        }
        const cuda::PluginApi* api = fn();
        if (!api || api->abi != cuda::kPluginAbi) {
            tried += str("\n  ", c, ": plugin ABI ", api ? api->abi : -1, ", expected ", cuda::kPluginAbi);
            dlclose(h);
            continue;
        }
        out.api = api; // never unloaded: devices may hold its function pointers until exit
        return out;
    }
    out.why = str("the CUDA backend (", kPluginFile, ") could not be loaded; this build or installation has no "
                  "CUDA backend. Tried:", tried);
    return out;
}
#else
Loaded load() { return Loaded{nullptr, "the CUDA backend is not available on this platform build"}; }
#endif

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
