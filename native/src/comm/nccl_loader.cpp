// NCCL, loaded at run time (libnccl.so.2; SHARDWISE_NCCL_PATH, a file or a folder, first). Shardwise never links
// NCCL: a machine without it loads the library fine and is told, on asking, what was searched and why it failed.
// The symbols the NCCL process group needs are required; newer ones it can use when present are optional. The search
// and the opening are core/plugin_loader's (load_symbol_table, the loader of Shardwise's own plugins too).
#include "comm/nccl_api.h"
#include "core/error.h"
#include "core/plugin_loader.h"

#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

using namespace sw;

namespace {

constexpr const char* kNcclFile = "libnccl.so.2";

// ncclResult_t is an int enum; ncclComm_t, ncclUniqueId and cudaStream_t are passed as opaque pointers/blobs.
const std::initializer_list<const char*> kRequired = {
    "ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRank", "ncclCommDestroy", "ncclCommAbort", "ncclCommGetAsyncError",
    "ncclCommCount", "ncclCommUserRank", "ncclAllReduce", "ncclAllGather", "ncclReduceScatter", "ncclBroadcast",
    "ncclReduce", "ncclSend", "ncclRecv", "ncclGroupStart", "ncclGroupEnd", "ncclGetErrorString",
};
const std::initializer_list<const char*> kOptional = {
    "ncclCommInitRankConfig", "ncclCommFinalize", "ncclGetLastError", "ncclCommSplit", "ncclCommInitAll",
};

struct Nccl {
    NcclApi api;
    void* lib = nullptr;
    std::string path;
    int version = 0;
    std::vector<std::string> optional_missing;
    std::string why; // set when unusable
};

const Nccl& nccl() {
    static const Nccl loaded = [] {
        Nccl n;
        std::string tried, missing;
        SymbolTable t = load_symbol_table(kNcclFile, "SHARDWISE_NCCL_PATH", kRequired, kOptional, &tried, &missing);
        n.path = t.path;
        if (!missing.empty()) {
            n.why = str(n.path, " was loaded but lacks required NCCL symbols: ", missing, " (not NCCL, or older than 2.7?)");
            return n;
        }
        if (!t.library) {
            n.why = str("NCCL (", kNcclFile, ") could not be loaded; install NCCL or point SHARDWISE_NCCL_PATH at "
                        "libnccl.so.2 (or its folder). Tried:", tried);
            return n;
        }
        n.lib = t.library;
        n.optional_missing = std::move(t.optional_missing);
        auto bind = [&](auto& fn, const char* name) { fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(find_symbol(n.lib, name)); };
        NcclApi& a = n.api;
        bind(a.GetVersion, "ncclGetVersion");
        bind(a.GetUniqueId, "ncclGetUniqueId");
        bind(a.CommInitRank, "ncclCommInitRank");
        bind(a.CommInitRankConfig, "ncclCommInitRankConfig");
        bind(a.CommDestroy, "ncclCommDestroy");
        bind(a.CommAbort, "ncclCommAbort");
        bind(a.CommGetAsyncError, "ncclCommGetAsyncError");
        bind(a.CommCount, "ncclCommCount");
        bind(a.CommUserRank, "ncclCommUserRank");
        bind(a.AllReduce, "ncclAllReduce");
        bind(a.AllGather, "ncclAllGather");
        bind(a.ReduceScatter, "ncclReduceScatter");
        bind(a.Broadcast, "ncclBroadcast");
        bind(a.Reduce, "ncclReduce");
        bind(a.Send, "ncclSend");
        bind(a.Recv, "ncclRecv");
        bind(a.GroupStart, "ncclGroupStart");
        bind(a.GroupEnd, "ncclGroupEnd");
        bind(a.GetErrorString, "ncclGetErrorString");
        bind(a.GetLastError, "ncclGetLastError");
        bind(a.CommSplit, "ncclCommSplit");
        const int rc = a.GetVersion(&n.version);
        a.version = n.version;
        if (rc != 0) {
            n.why = str(n.path, ": ncclGetVersion failed with ncclResult_t ", rc);
            n.lib = nullptr;
        }
        return n;
    }();
    return loaded;
}

// NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + minor*100 + patch before.
std::string version_text(int v) {
    int major, minor, patch;
    if (v >= 10000) {
        major = v / 10000;
        minor = (v % 10000) / 100;
        patch = v % 100;
    } else {
        major = v / 1000;
        minor = (v % 1000) / 100;
        patch = v % 100;
    }
    return str(major, ".", minor, ".", patch);
}

} // namespace

const NcclApi& sw::nccl_api() {
    const Nccl& n = nccl();
    if (!n.lib) fail(SW_ERR_NOT_FOUND, n.why);
    return n.api;
}

std::string sw::nccl_info(int32_t* available, int32_t* version_code) {
    const Nccl& n = nccl();
    *available = n.lib ? 1 : 0;
    if (version_code) *version_code = n.version;
    if (!n.lib) return n.why;
    std::string t = str("NCCL ", version_text(n.version), " (", n.path, ")");
    if (!n.optional_missing.empty()) {
        t += "; optional symbols not present:";
        for (const auto& s : n.optional_missing) t += " " + s;
    }
    return t;
}
