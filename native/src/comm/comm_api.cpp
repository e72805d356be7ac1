// The C exports of every communicator kind (shardwise.h): communicators (sw_comm_*), collectives (sw_all_reduce, ...),
// the TCP store (sw_store_*), NCCL and MPI. Thin: validate the arguments, translate them (a Desc for a collective),
// dispatch to the communicator object (Communicator::submit, abort, shut_down) or to the kind's creation. The top of
// comm/ (communicator.h draws the layers below).
#include "comm/comm_nccl.h"
#include "comm/communicator.h"
#include "comm/nccl_api.h"
#include "comm/store.h"
#include "core/enum_arg.h"
#include "core/index_math.h"

#include <cstring>

using namespace sw;

namespace {
sw_comm_s* checked_comm(sw_comm h) { return checked(h, HandleKind::Comm, "comm"); }
sw_store_s* checked_store(sw_store h) { return checked(h, HandleKind::Store, "store"); }

// ---- the argument checks of a collective call
// A rank argument: in range, and for a multi-process communicator this process's own rank.
void check_rank(const Communicator& c, int32_t rank) {
    if (rank < 0 || rank >= c.world)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " is out of range; expected 0 <= rank < ", c.world);
    if (c.self >= 0 && rank != c.self)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " but this process is rank ", c.self, " of the ", c.backend_name,
             " communicator; a multi-process communicator runs one rank per process, pass its own rank");
}

// The checks every collective call makes: comm and stream valid, rank valid, the stream on the rank's device, dtype
// valid (and summable when `reducing`). dtype is the export's parameter itself, by reference: dtype_size_checked reads
// it raw and range-checks it before it is ever loaded as a sw_dtype (core/enum_arg.h). Returns the element size.
struct CallArgs {
    struct sw_comm_s* comm;
    sw_stream_s* stream;
    size_t esz;
};
CallArgs check_call(sw_comm comm, int32_t rank, sw_stream stream, const sw_dtype& dtype, bool reducing) {
    auto* h = checked(comm, HandleKind::Comm, "comm");
    auto* s = checked(stream, "stream");
    const Communicator& c = *h->state;
    check_rank(c, rank);
    if (s->device_impl != c.devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, "stream runs on device '", s->device_impl->name, "' but rank ", rank,
             " of the communicator is on device '", c.devices[rank]->name, "'; expected a stream of rank ", rank,
             "'s device");
    const size_t esz = dtype_size_checked(dtype, "dtype");
    if (reducing && dtype == SW_DTYPE_U8) fail(SW_ERR_UNSUPPORTED, "dtype u8 cannot be summed");
    return {h, s, esz};
}

// The bytes at element `offset` of buffer `b` holding `count` elements (checked), on rank `rank`'s device; *keep holds
// the storage alive while the collective is queued.
char* span_of(sw_buffer b, const char* name, const CallArgs& call, int32_t rank, uint64_t offset, uint64_t count,
              std::shared_ptr<Storage>* keep) {
    auto* buf = checked(b, HandleKind::Buffer, name);
    if (buf->device_impl != call.comm->state->devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, name, " is not on rank ", rank, "'s device; expected a buffer of that device");
    *keep = buf->storage;
    return buffer_span(buf, offset, count, call.esz, name);
}

// Elements of `esz` bytes available in b from `offset` (0 past the end).
uint64_t capacity_from(sw_buffer b, uint64_t offset, size_t esz) {
    auto* buf = reinterpret_cast<sw_buffer_s*>(b);
    const uint64_t cap = buf->storage->bytes / esz;
    return offset <= cap ? cap - offset : 0;
}

// One contiguous span of a collective's send or recv: `count` elements, times the world size when `times_world`.
struct SpanArg {
    sw_buffer buffer;
    uint64_t offset;
    uint64_t count;
    bool times_world;
};

// The export of a collective over one send span and one recv span: checks the call (and, for a reduction, `op`, read
// raw: pass the parameter itself), fills `d`'s dtype and spans, and queues it on the communicator.
void submit_spans(sw_comm comm, int32_t rank, sw_stream stream, const sw_dtype& dtype, const sw_reduce_op* op, Desc d,
                  SpanArg send, SpanArg recv) {
    const CallArgs ctx = check_call(comm, rank, stream, dtype, op != nullptr);
    if (op) d.root = reduce_op_arg(*op, "op"); // core/enum_arg.h: any int32 may arrive; carried as Desc::root
    const auto world = static_cast<uint64_t>(ctx.comm->state->world);
    auto elements = [&](const SpanArg& a) { return a.times_world ? saturating_mul(a.count, world) : a.count; };
    d.dtype = dtype;
    d.send = span_of(send.buffer, "send", ctx, rank, send.offset, elements(send), &d.keep_send);
    d.recv = span_of(recv.buffer, "recv", ctx, rank, recv.offset, elements(recv), &d.keep_recv);
    ctx.comm->state->submit(rank, std::move(d), ctx.stream);
}

Desc desc_of(Coll op, uint64_t count) {
    Desc d;
    d.op = op;
    d.count = count;
    return d;
}
} // namespace

extern "C" {

SW_API sw_status sw_comm_get_rank(sw_comm comm, int32_t* rank) {
    return guard(__func__, [&] {
        require(rank, "rank");
        *rank = checked_comm(comm)->state->self;
    });
}

SW_API sw_status sw_comm_get_backend(sw_comm comm, const char** name) {
    return guard(__func__, [&] {
        require(name, "name");
        *name = checked_comm(comm)->state->backend_name;
    });
}

SW_API sw_status sw_comm_get_transport(sw_comm comm, const char** name) {
    return guard(__func__, [&] {
        require(name, "name");
        *name = checked_comm(comm)->state->transport_name;
    });
}

SW_API sw_status sw_comm_create_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        *out = register_comm(make_local_comm(local_devices(world_size, devices, timeout_ms), timeout_ms));
    });
}

SW_API sw_status sw_comm_destroy(sw_comm comm) {
    return guard(__func__, [&] {
        if (!comm) return;
        auto* c = checked_comm(comm);
        unregister_handle(c);
        c->state->shut_down();
        for (auto& d : c->state->devices) --d->children;
        delete c; // queued collectives keep the communicator alive
    });
}

SW_API sw_status sw_comm_get_world_size(sw_comm comm, int32_t* world_size) {
    return guard(__func__, [&] {
        require(world_size, "world_size");
        *world_size = checked_comm(comm)->state->world;
    });
}

// sw_comm_abort and sw_comm_abort_with_reason: the first abort's reason wins, and the peers of a multi-process
// communicator are told it.
static void abort_comm(sw_comm comm, const char* given) {
    auto* c = checked_comm(comm);
    std::string why;
    if (given && *given) why.assign(given, strnlen(given, 4000));
    else why = c->state->is_remote() ? str("sw_comm_abort was called on rank ", c->state->self) : std::string("sw_comm_abort was called");
    c->state->abort(why);
}

SW_API sw_status sw_comm_abort(sw_comm comm) {
    return guard(__func__, [&] { abort_comm(comm, nullptr); });
}

SW_API sw_status sw_comm_abort_with_reason(sw_comm comm, const char* reason) {
    return guard(__func__, [&] { abort_comm(comm, reason); });
}

SW_API sw_status sw_comm_get_state(sw_comm comm, int32_t* aborted, char* reason, uint64_t reason_capacity) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        require(aborted, "aborted");
        std::lock_guard<std::mutex> lock(c->state->mu);
        *aborted = c->state->aborted ? 1 : 0;
        copy_name(reason, reason_capacity, c->state->reason);
    });
}

SW_API sw_status sw_comm_set_agreement_check(sw_comm comm, int32_t enabled) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        if (enabled != 0 && enabled != 1) fail(SW_ERR_INVALID_ARGUMENT, "enabled = ", enabled, "; expected 0 or 1");
        c->state->agreement_check.store(enabled == 1);
    });
}

SW_API sw_status sw_comm_get_agreement_check(sw_comm comm, int32_t* enabled) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        require(enabled, "enabled");
        *enabled = c->state->agreement_check.load() ? 1 : 0;
    });
}

SW_API sw_status sw_comm_get_collective_count(sw_comm comm, int32_t rank, uint64_t* count) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        require(count, "count");
        check_rank(*c->state, rank);
        std::lock_guard<std::mutex> lock(c->state->mu);
        *count = c->state->completed[rank];
    });
}

SW_API sw_status sw_all_gather(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                               uint64_t recv_offset, uint64_t count, sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] {
        submit_spans(comm, rank, stream, dtype, nullptr, desc_of(Coll::AllGather, count), {send, send_offset, count, false},
                     {recv, recv_offset, count, true});
    });
}

SW_API sw_status sw_all_gather_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, uint64_t count,
                                 sw_buffer recv, uint64_t recv_offset, uint64_t recv_capacity, sw_dtype dtype,
                                 sw_stream stream) {
    return guard(__func__, [&] {
        Desc d = desc_of(Coll::AllGatherV, count);
        d.recv_capacity = recv_capacity;
        submit_spans(comm, rank, stream, dtype, nullptr, std::move(d), {send, send_offset, count, false},
                     {recv, recv_offset, recv_capacity, false});
    });
}

SW_API sw_status sw_all_gather_columns(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, int64_t rows,
                                       int64_t cols, int64_t ld_send, sw_buffer recv, uint64_t recv_offset,
                                       int64_t ld_recv, sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] {
        const CallArgs ctx = check_call(comm, rank, stream, dtype, false);
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected rows >= 0");
        if (cols < 0) fail(SW_ERR_INVALID_ARGUMENT, "cols = ", cols, "; expected cols >= 0");
        if (ld_send < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_send = ", ld_send, " is smaller than cols = ", cols);
        if (ld_recv < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_recv = ", ld_recv, " is smaller than cols = ", cols);
        Desc d;
        d.op = Coll::AllGatherColumns;
        d.dtype = dtype;
        d.rows = rows;
        d.cols = cols;
        d.ld_send = ld_send;
        d.ld_recv = ld_recv;
        d.send = cols > 0 && rows > 0
                     ? span_of(send, "send", ctx, rank, send_offset, matrix_extent(rows, cols, ld_send), &d.keep_send)
                     : nullptr;
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, matrix_extent(rows, cols, ld_recv), &d.keep_recv);
        d.recv_capacity = capacity_from(recv, recv_offset, ctx.esz);
        ctx.comm->state->submit(rank, std::move(d), ctx.stream);
    });
}

SW_API sw_status sw_all_reduce(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                               uint64_t recv_offset, uint64_t count, sw_dtype dtype, sw_reduce_op op,
                               sw_stream stream) {
    return guard(__func__, [&] {
        submit_spans(comm, rank, stream, dtype, &op, desc_of(Coll::AllReduce, count), {send, send_offset, count, false},
                     {recv, recv_offset, count, false});
    });
}

SW_API sw_status sw_reduce_scatter(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                                   uint64_t recv_offset, uint64_t recv_count, sw_dtype dtype, sw_reduce_op op,
                                   sw_stream stream) {
    return guard(__func__, [&] {
        submit_spans(comm, rank, stream, dtype, &op, desc_of(Coll::ReduceScatter, recv_count),
                     {send, send_offset, recv_count, true}, {recv, recv_offset, recv_count, false});
    });
}

SW_API sw_status sw_reduce_scatter_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                     uint64_t send_capacity, sw_buffer recv, uint64_t recv_offset, uint64_t recv_count,
                                     sw_dtype dtype, sw_reduce_op op, sw_stream stream) {
    return guard(__func__, [&] {
        Desc d = desc_of(Coll::ReduceScatterV, recv_count);
        d.send_capacity = send_capacity;
        submit_spans(comm, rank, stream, dtype, &op, std::move(d), {send, send_offset, send_capacity, false},
                     {recv, recv_offset, recv_count, false});
    });
}

SW_API sw_status sw_broadcast(sw_comm comm, int32_t rank, sw_buffer buf, uint64_t offset, uint64_t count,
                              sw_dtype dtype, int32_t root, sw_stream stream) {
    return guard(__func__, [&] {
        const CallArgs ctx = check_call(comm, rank, stream, dtype, false);
        if (root < 0 || root >= ctx.comm->state->world)
            fail(SW_ERR_INVALID_ARGUMENT, "root = ", root, " is out of range; expected 0 <= root < ",
                 ctx.comm->state->world);
        Desc d;
        d.op = Coll::Broadcast;
        d.dtype = dtype;
        d.count = count;
        d.root = root;
        d.recv = span_of(buf, "buf", ctx, rank, offset, count, &d.keep_recv);
        d.send = d.recv;
        ctx.comm->state->submit(rank, std::move(d), ctx.stream);
    });
}

SW_API sw_status sw_barrier(sw_comm comm, int32_t rank, sw_stream stream) {
    return guard(__func__, [&] {
        const CallArgs ctx = check_call(comm, rank, stream, SW_DTYPE_U8, false);
        Desc d;
        d.op = Coll::Barrier;
        ctx.comm->state->submit(rank, std::move(d), ctx.stream);
    });
}

// ---- the TCP store and TCP communicators (Linux; elsewhere every call says they are not available)

#if defined(__linux__)

SW_API sw_status sw_store_create(const char* host, int32_t port, int32_t is_server, int64_t timeout_ms, sw_store* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        require(host, "host");
        if (!*host) fail(SW_ERR_INVALID_ARGUMENT, "host is empty; expected the store's host name or address (MASTER_ADDR)");
        if (port < 0 || port > 65535 || (port == 0 && !is_server))
            fail(SW_ERR_INVALID_ARGUMENT, "port = ", port, "; expected 1..65535 (0 only for a server: any free port)");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        auto impl = store_create(host, port, is_server != 0, resolve_timeout(timeout_ms));
        auto* s = new sw_store_s{std::move(impl)};
        register_handle(s, HandleKind::Store);
        *out = s;
    });
}

SW_API sw_status sw_store_destroy(sw_store store) {
    return guard(__func__, [&] {
        if (!store) return;
        auto* s = checked_store(store);
        unregister_handle(s);
        delete s;
    });
}

SW_API sw_status sw_store_get_port(sw_store store, int32_t* port) {
    return guard(__func__, [&] {
        require(port, "port");
        *port = store_port(*checked_store(store)->impl);
    });
}

SW_API sw_status sw_store_set(sw_store store, const char* key, const void* value, uint64_t bytes) {
    return guard(__func__, [&] {
        auto* s = checked_store(store);
        require(key, "key");
        if (!*key || std::strlen(key) > kStoreMaxKey) fail(SW_ERR_INVALID_ARGUMENT, "key must have 1..", kStoreMaxKey, " characters");
        if (bytes) require(value, "value");
        if (bytes > kStoreMaxValue) fail(SW_ERR_INVALID_ARGUMENT, "bytes = ", bytes, "; a store value holds at most ", kStoreMaxValue);
        store_set(*s->impl, key, value, bytes);
    });
}

SW_API sw_status sw_store_get(sw_store store, const char* key, void* value, uint64_t capacity, uint64_t* bytes) {
    return guard(__func__, [&] {
        auto* s = checked_store(store);
        require(key, "key");
        require(bytes, "bytes");
        if (!*key || std::strlen(key) > kStoreMaxKey) fail(SW_ERR_INVALID_ARGUMENT, "key must have 1..", kStoreMaxKey, " characters");
        if (capacity) require(value, "value");
        const std::string v = store_get(*s->impl, key);
        *bytes = v.size();
        if (v.size() > capacity)
            fail(SW_ERR_INVALID_ARGUMENT, "the value of '", key, "' has ", v.size(), " bytes but capacity is ", capacity);
        if (!v.empty()) std::memcpy(value, v.data(), v.size());
    });
}

SW_API sw_status sw_comm_create_tcp(sw_device device, sw_store store, const char* prefix, int32_t rank, int32_t world_size,
                                    int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        auto* s = checked_store(store);
        require(prefix, "prefix");
        check_prefix(prefix);
        check_job(rank, world_size, timeout_ms);
        if (dev->impl->is_cuda())
            fail(SW_ERR_UNSUPPORTED, "device is a CUDA device; TCP communicators carry host memory (CPU devices): use NCCL for GPUs");
        const int64_t t = resolve_timeout(timeout_ms);
        static const std::atomic<bool> never{false};
        auto mesh = connect_tcp_mesh(*s->impl, prefix, rank, world_size, t);
        auto transport = with_shared_memory(std::move(mesh), Clock::now() + std::chrono::milliseconds(t), never,
                                            "sw_comm_create_tcp");
        *out = register_comm(make_remote_comm(dev->impl, std::move(transport), t, nullptr, "tcp"));
    });
}


#else // not Linux


SW_API sw_status sw_store_create(const char*, int32_t, int32_t, int64_t, sw_store* out) {
    return sw::guard(__func__, [&] {
        if (out) *out = nullptr;
        sw::fail(SW_ERR_UNSUPPORTED, "the TCP store is not available on this platform build");
    });
}
SW_API sw_status sw_store_destroy(sw_store) { return SW_OK; }
SW_API sw_status sw_store_get_port(sw_store, int32_t*) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_store_set(sw_store, const char*, const void*, uint64_t) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_store_get(sw_store, const char*, void*, uint64_t, uint64_t*) { return sw::guard(__func__, [] { sw::fail(SW_ERR_UNSUPPORTED, "no TCP store"); }); }
SW_API sw_status sw_comm_create_tcp(sw_device, sw_store, const char*, int32_t, int32_t, int64_t, sw_comm* out) {
    return sw::guard(__func__, [&] {
        if (out) *out = nullptr;
        sw::fail(SW_ERR_UNSUPPORTED, "TCP communicators are not available on this platform build");
    });
}
#endif

// ---- MPI

SW_API sw_status sw_mpi_get_info(int32_t* available, char* version, uint64_t version_capacity) {
    return guard(__func__, [&] {
        require(available, "available");
        copy_name(version, version_capacity, mpi_info(available));
    });
}

SW_API sw_status sw_comm_create_mpi(sw_device device, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        if (dev->impl->is_cuda())
            fail(SW_ERR_UNSUPPORTED, "device is a CUDA device; MPI communicators carry host memory (CPU devices): use NCCL for GPUs");
        *out = register_comm(make_remote_comm(dev->impl, create_mpi_transport(resolve_timeout(timeout_ms)), timeout_ms));
    });
}

SW_API sw_status sw_mpi_finalize(void) {
    return guard(__func__, [&] { mpi_finalize(); });
}

// ---- NCCL

SW_API sw_status sw_nccl_get_info(int32_t* available, int32_t* version_code, char* text, uint64_t text_capacity) {
    return guard(__func__, [&] {
        require(available, "available");
        copy_name(text, text_capacity, nccl_info(available, version_code));
    });
}

SW_API sw_status sw_nccl_get_unique_id(uint8_t* id) {
    return guard(__func__, [&] {
        require(id, "id");
        nccl_unique_id(id);
    });
}

SW_API sw_status sw_comm_create_nccl_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        *out = register_comm(create_nccl_local(world_size, devices, timeout_ms));
    });
}

SW_API sw_status sw_comm_create_nccl(sw_device device, sw_store store, const char* prefix, int32_t rank, int32_t world_size,
                                     int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        StoreImpl& s = *checked_store(store)->impl;
        *out = register_comm(create_nccl_store(d, s, prefix, rank, world_size, timeout_ms));
    });
}

SW_API sw_status sw_comm_create_nccl_id(sw_device device, const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                        int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        *out = register_comm(create_nccl_id(d, unique_id, rank, world_size, timeout_ms));
    });
}

SW_API sw_status sw_comm_create_nccl_mpi(sw_device device, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        *out = register_comm(create_nccl_mpi(d, timeout_ms));
    });
}

} // extern "C"
