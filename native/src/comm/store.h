// The TCP store (rendezvous of a job: a key-value server run by rank 0, as torchrun's MASTER_ADDR:MASTER_PORT) and its
// client. The sw_store handle holds a client; the server runs on a thread of the process that created it with
// is_server. TCP communicators (tcp_transport.cpp) and NCCL communicators (comm_nccl.cpp) publish and look up what
// they need under a prefix. Linux only: elsewhere store_create fails with SW_ERR_UNSUPPORTED.
#pragma once
#include "comm/transport.h" // Clock

#include <cstdint>
#include <memory>
#include <string>

namespace sw {

// Request limits of the store protocol.
constexpr uint64_t kStoreMaxKey = 4096, kStoreMaxValue = uint64_t{64} << 20;

struct StoreImpl; // store.cpp

// A client of the store at host:port (with is_server, the server too: port 0 picks a free port). Arguments are checked
// by the caller (comm_api.cpp). timeout_ms is already resolved (> 0).
std::shared_ptr<StoreImpl> store_create(const char* host, int32_t port, bool is_server, int64_t timeout_ms);
int32_t store_port(const StoreImpl& store);
// This process's address as the server sees it (what the ranks publish for their peers).
const std::string& store_local_address(const StoreImpl& store);
void store_set(StoreImpl& store, const std::string& key, const void* value, uint64_t bytes);
// The key's value, waiting until it is set (SW_ERR_TIMEOUT at the deadline; without one, at the store's timeout).
std::string store_get(StoreImpl& store, const std::string& key, Clock::time_point deadline);
std::string store_get(StoreImpl& store, const std::string& key);

} // namespace sw

// The handle (comm_api.cpp registers it).
struct sw_store_s {
    std::shared_ptr<sw::StoreImpl> impl;
};
