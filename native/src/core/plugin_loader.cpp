#include "core/plugin_loader.h"

#include "core/error.h"

#include <cstdlib>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <sys/stat.h>
#endif

namespace sw {

#if defined(__linux__) || defined(__APPLE__)
namespace {
bool is_dir(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string own_folder() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&plugin_candidates), &info) && info.dli_fname) {
        std::string path = info.dli_fname;
        const auto slash = path.find_last_of('/');
        if (slash != std::string::npos) return path.substr(0, slash);
    }
    return {};
}
} // namespace

std::vector<std::string> plugin_candidates(const char* file, const char* env_var, bool beside_self) {
    std::vector<std::string> out;
    if (const char* env = env_var ? std::getenv(env_var) : nullptr; env && *env) {
        std::string p = env;
        out.push_back(is_dir(p) ? p + "/" + file : p);
    }
    if (beside_self)
        if (auto dir = own_folder(); !dir.empty()) out.push_back(dir + "/" + file);
    out.push_back(file);
    return out;
}

void* open_first(const std::vector<std::string>& candidates, const char* symbol, std::string* path, std::string* tried) {
    for (const auto& c : candidates) {
        void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = dlerror();
            *tried += str("\n  ", c, ": ", e ? e : "not loadable");
            continue;
        }
        if (symbol && !dlsym(h, symbol)) {
            *tried += str("\n  ", c, ": loaded, but has no symbol ", symbol);
            dlclose(h);
            continue;
        }
        if (path) *path = c;
        return h;
    }
    return nullptr;
}

void* find_symbol(void* library, const char* name) { return library ? dlsym(library, name) : nullptr; }
#else
std::vector<std::string> plugin_candidates(const char* file, const char*, bool) { return {file}; }
void* open_first(const std::vector<std::string>&, const char*, std::string*, std::string* tried) {
    *tried += "\n  (run-time loading is not available on this platform build)";
    return nullptr;
}
void* find_symbol(void*, const char*) { return nullptr; }
#endif

SymbolTable load_symbol_table(const char* file, const char* env_var, std::initializer_list<const char*> required,
                              std::initializer_list<const char*> optional, std::string* tried, std::string* missing_required) {
    SymbolTable t;
    t.library = open_first(plugin_candidates(file, env_var, /*beside_self=*/false), nullptr, &t.path, tried);
    if (!t.library) return t;
    for (const char* s : required)
        if (!find_symbol(t.library, s)) *missing_required += str(missing_required->empty() ? "" : ", ", s);
    if (!missing_required->empty()) {
        t.library = nullptr;
        return t;
    }
    for (const char* s : optional)
        if (!find_symbol(t.library, s)) t.optional_missing.push_back(s);
    return t;
}

} // namespace sw
