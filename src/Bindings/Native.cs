using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>
/// The C ABI of shardwise.h, one declaration per exported function, same names and argument order.
/// Required handles are passed as <see cref="SafeHandle"/>s (the marshaller keeps them alive for the call);
/// optional ones as raw <see cref="nint"/> (0 for none). Every function returns <see cref="SwStatus"/>;
/// on failure <see cref="sw_last_error"/> holds the message, and
/// <see cref="ShardwiseException.ThrowIfFailed"/> turns both into a typed exception.
/// </summary>
public static unsafe partial class Native
{
    private const string Lib = NativeLibraryLoader.LibraryName;

    /// <summary>The ABI version this binding was written against (SW_ABI_VERSION).</summary>
    public const int AbiVersion = 8;

#pragma warning disable CS1591 // one-to-one with shardwise.h, documented there
    // ---------------------------------------------------------------- library
    [LibraryImport(Lib)] public static partial int sw_abi_version();
    [LibraryImport(Lib)] public static partial nint sw_version_string();
    [LibraryImport(Lib)] public static partial nint sw_last_error();
    [LibraryImport(Lib)] public static partial nint sw_status_string(SwStatus status);
    [LibraryImport(Lib)] public static partial nuint sw_dtype_size(SwDtype dtype);
    [LibraryImport(Lib)] public static partial SwStatus sw_shard_range(long total, int parts, int index, out long offset, out long count);
    [LibraryImport(Lib)] public static partial SwStatus sw_tree_range(long total, long leaf, int parts, int index, out long offset, out long count);

    // ---------------------------------------------------------------- devices
    [LibraryImport(Lib)] public static partial SwStatus sw_device_count(SwBackend backend, out int count);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_create(SwBackend backend, int ordinal, int numThreads, out DeviceHandle device);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_destroy(nint device);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_get_info(DeviceHandle device, out SwDeviceInfo info);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_device_set_kernel(DeviceHandle device, string kernel);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_get_tile_shape(DeviceHandle device, out SwTileShape shape);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_set_gemm_reduction(DeviceHandle device, long leaf);
    [LibraryImport(Lib)] public static partial SwStatus sw_device_get_gemm_reduction(DeviceHandle device, out long leaf);

    // ---------------------------------------------------------------- buffers
    [LibraryImport(Lib)] public static partial SwStatus sw_buffer_alloc(DeviceHandle device, ulong bytes, out BufferHandle buffer);
    [LibraryImport(Lib)] public static partial SwStatus sw_buffer_wrap(DeviceHandle device, nint ptr, ulong bytes, out BufferHandle buffer);
    [LibraryImport(Lib)] public static partial SwStatus sw_buffer_destroy(nint buffer);
    [LibraryImport(Lib)] public static partial SwStatus sw_buffer_get_pointer(BufferHandle buffer, out nint ptr);
    [LibraryImport(Lib)] public static partial SwStatus sw_buffer_get_size(BufferHandle buffer, out ulong bytes);
    [LibraryImport(Lib)] public static partial SwStatus sw_memcpy_h2d_async(BufferHandle dst, ulong dstOffsetBytes, void* src, ulong bytes, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_memcpy_d2h_async(void* dst, BufferHandle src, ulong srcOffsetBytes, ulong bytes, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_memcpy_d2d_async(BufferHandle dst, ulong dstOffsetBytes, BufferHandle src, ulong srcOffsetBytes, ulong bytes, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_memset_async(BufferHandle dst, ulong dstOffsetBytes, byte value, ulong bytes, StreamHandle stream);

    // ---------------------------------------------------------------- streams and events
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_create(DeviceHandle device, out StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_wrap(DeviceHandle device, nint nativeStream, out StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_get_native(StreamHandle stream, out nint nativeStream);
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_destroy(nint stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_synchronize(StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_stream_wait_event(StreamHandle stream, EventHandle evt);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_create(DeviceHandle device, out EventHandle evt);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_destroy(nint evt);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_record(EventHandle evt, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_synchronize(EventHandle evt);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_query(EventHandle evt, out int done);
    [LibraryImport(Lib)] public static partial SwStatus sw_event_elapsed_ms(EventHandle start, EventHandle end, out double ms);

    // ---------------------------------------------------------------- GEMM
    [LibraryImport(Lib)]
    public static partial SwStatus sw_gemm(StreamHandle stream, SwDtype dtype, SwOp transA, SwOp transB,
        long m, long n, long k, float alpha,
        BufferHandle a, ulong aOffset, long lda,
        BufferHandle b, ulong bOffset, long ldb,
        float beta,
        BufferHandle c, ulong cOffset, long ldc,
        nint bias, ulong biasOffset, SwEpilogue epilogue);
    [LibraryImport(Lib)] public static partial SwStatus sw_gemm_ex(StreamHandle stream, SwGemmDesc* desc);
    /// <summary>sw_gemm_grouped (ABI 4): streams holds count raw stream handles (kept alive by the caller).</summary>
    [LibraryImport(Lib)] public static partial SwStatus sw_gemm_grouped(int count, IntPtr* streams, SwGemmDesc* descs);

    // ---------------------------------------------------------------- element-wise activations
    [LibraryImport(Lib)] public static partial SwStatus sw_gelu(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, BufferHandle y, ulong yOffset, ulong count);
    [LibraryImport(Lib)] public static partial SwStatus sw_gelu_backward(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, BufferHandle dy, ulong dyOffset, BufferHandle dx, ulong dxOffset, ulong count);

    // ---------------------------------------------------------------- attention and normalization (ABI 7; optional buffers are raw handles, 0 for none)
    [LibraryImport(Lib)] public static partial SwStatus sw_softmax(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, BufferHandle y, ulong yOffset,
        long rows, long cols, long ld, float scale, long causalPeriod);
    [LibraryImport(Lib)] public static partial SwStatus sw_softmax_backward(StreamHandle stream, SwDtype dtype, BufferHandle y, ulong yOffset, BufferHandle dy, ulong dyOffset,
        BufferHandle dx, ulong dxOffset, long rows, long cols, long ld, float scale);
    [LibraryImport(Lib)] public static partial SwStatus sw_norm(StreamHandle stream, SwNormKind kind, SwDtype dtype, BufferHandle x, ulong xOffset, nint gamma, ulong gammaOffset,
        nint beta, ulong betaOffset, BufferHandle y, ulong yOffset, nint stats, ulong statsOffset, long rows, long cols, float eps);
    [LibraryImport(Lib)] public static partial SwStatus sw_norm_backward(StreamHandle stream, SwNormKind kind, SwDtype dtype, BufferHandle x, ulong xOffset, nint gamma, ulong gammaOffset,
        BufferHandle stats, ulong statsOffset, BufferHandle dy, ulong dyOffset, BufferHandle dx, ulong dxOffset, nint dgamma, ulong dgammaOffset,
        nint dbeta, ulong dbetaOffset, long rows, long cols, int accumulate);

    [LibraryImport(Lib)] public static partial SwStatus sw_activation_forward(StreamHandle stream, SwActivation act, SwDtype dtype, BufferHandle x, ulong xOffset,
        BufferHandle y, ulong yOffset, ulong count);
    [LibraryImport(Lib)] public static partial SwStatus sw_activation_backward(StreamHandle stream, SwActivation act, SwDtype dtype, BufferHandle x, ulong xOffset,
        BufferHandle dy, ulong dyOffset, BufferHandle dx, ulong dxOffset, ulong count);
    [LibraryImport(Lib)] public static partial SwStatus sw_glu(StreamHandle stream, SwActivation act, SwDtype dtype, BufferHandle gu, ulong guOffset, BufferHandle h, ulong hOffset,
        long rows, long cols);
    [LibraryImport(Lib)] public static partial SwStatus sw_glu_backward(StreamHandle stream, SwActivation act, SwDtype dtype, BufferHandle gu, ulong guOffset,
        BufferHandle dh, ulong dhOffset, BufferHandle dgu, ulong dguOffset, long rows, long cols);
    [LibraryImport(Lib)] public static partial SwStatus sw_dropout(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, BufferHandle y, ulong yOffset,
        ulong count, float p, ulong seed, ulong counter);
    [LibraryImport(Lib)] public static partial SwStatus sw_embedding(StreamHandle stream, SwDtype dtype, BufferHandle table, ulong tableOffset, long shardRows,
        BufferHandle ids, ulong idsOffset, long vocabOffset, BufferHandle output, ulong outOffset, long rows, long cols);
    [LibraryImport(Lib)] public static partial SwStatus sw_embedding_backward(StreamHandle stream, SwDtype dtype, BufferHandle dout, ulong doutOffset, BufferHandle ids,
        ulong idsOffset, long vocabOffset, BufferHandle dtable, ulong dtableOffset, long shardRows, long rows, long cols, int accumulate);
    [LibraryImport(Lib)] public static partial SwStatus sw_cross_entropy_partial(StreamHandle stream, SwDtype dtype, BufferHandle logits, ulong logitsOffset,
        long rows, long cols, long ld, BufferHandle ids, ulong idsOffset, long vocabOffset, BufferHandle stats, ulong statsOffset);
    [LibraryImport(Lib)] public static partial SwStatus sw_cross_entropy_partial_tree(StreamHandle stream, SwDtype dtype, BufferHandle logits,
        ulong logitsOffset, long rows, long cols, long ld, BufferHandle ids, ulong idsOffset, long vocabOffset, BufferHandle gathered,
        ulong gatheredOffset, int parts, long leaf, int includeMax, BufferHandle output, ulong outOffset);
    [LibraryImport(Lib)] public static partial SwStatus sw_cross_entropy_combine(StreamHandle stream, SwDtype dtype, BufferHandle stats, ulong statsOffset, int parts,
        long rows, BufferHandle ids, ulong idsOffset, long vocabSize, BufferHandle lse, ulong lseOffset, BufferHandle loss, ulong lossOffset);
    [LibraryImport(Lib)] public static partial SwStatus sw_cross_entropy_backward(StreamHandle stream, SwDtype dtype, BufferHandle logits, ulong logitsOffset,
        long rows, long cols, long ld, BufferHandle ids, ulong idsOffset, long vocabOffset, long vocabSize, BufferHandle lse, ulong lseOffset,
        BufferHandle dloss, ulong dlossOffset, BufferHandle dlogits, ulong dlogitsOffset);

    // ---------------------------------------------------------------- optimizers (ABI 7; an optional buffer is a raw handle, 0 for none)
    [LibraryImport(Lib)] public static partial SwStatus sw_sgd_step(StreamHandle stream, SwDtype gradType, BufferHandle param, ulong paramOffset,
        BufferHandle grad, ulong gradOffset, nint momentumBuf, ulong momentumOffset, ulong count, float lr, float momentum, float weightDecay, int nesterov);
    [LibraryImport(Lib)] public static partial SwStatus sw_adamw_step(StreamHandle stream, SwDtype gradType, BufferHandle param, ulong paramOffset,
        BufferHandle grad, ulong gradOffset, BufferHandle m, ulong mOffset, BufferHandle v, ulong vOffset, ulong count, float lr, float beta1,
        float beta2, float eps, float weightDecay, long step);
    [LibraryImport(Lib)] public static partial SwStatus sw_sum_squares(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, ulong count,
        BufferHandle output, ulong outOffset, int accumulate);
    [LibraryImport(Lib)] public static partial SwStatus sw_scale(StreamHandle stream, SwDtype dtype, BufferHandle x, ulong xOffset, ulong count, float alpha);

    // ---------------------------------------------------------------- communicators
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_create_local(int worldSize, nint* devices, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_destroy(nint comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_world_size(CommHandle comm, out int worldSize);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_abort(CommHandle comm);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_comm_abort_with_reason(CommHandle comm, string? reason);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_state(CommHandle comm, out int aborted, byte* reason, ulong reasonCapacity);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_collective_count(CommHandle comm, int rank, out ulong count);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_set_agreement_check(CommHandle comm, int enabled);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_agreement_check(CommHandle comm, out int enabled);
    [LibraryImport(Lib)] public static partial SwStatus sw_all_gather(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, BufferHandle recv, ulong recvOffset, ulong count, SwDtype dtype, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_all_gather_v(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, ulong count, BufferHandle recv, ulong recvOffset, ulong recvCapacity, SwDtype dtype, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_all_gather_columns(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, long rows, long cols, long ldSend, BufferHandle recv, ulong recvOffset, long ldRecv, SwDtype dtype, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_all_reduce(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, BufferHandle recv, ulong recvOffset, ulong count, SwDtype dtype, SwReduceOp op, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_reduce_scatter(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, BufferHandle recv, ulong recvOffset, ulong recvCount, SwDtype dtype, SwReduceOp op, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_reduce_scatter_v(CommHandle comm, int rank, BufferHandle send, ulong sendOffset, ulong sendCapacity, BufferHandle recv, ulong recvOffset, ulong recvCount, SwDtype dtype, SwReduceOp op, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_broadcast(CommHandle comm, int rank, BufferHandle buf, ulong offset, ulong count, SwDtype dtype, int root, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_barrier(CommHandle comm, int rank, StreamHandle stream);

    // ---------------------------------------------------------------- multi-process communicators
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_rank(CommHandle comm, out int rank);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_backend(CommHandle comm, out nint name);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_transport(CommHandle comm, out nint name);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_store_create(string host, int port, int isServer, long timeoutMs, out StoreHandle store);
    [LibraryImport(Lib)] public static partial SwStatus sw_store_destroy(nint store);
    [LibraryImport(Lib)] public static partial SwStatus sw_store_get_port(StoreHandle store, out int port);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_store_set(StoreHandle store, string key, byte* value, ulong bytes);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_store_get(StoreHandle store, string key, byte* value, ulong capacity, out ulong bytes);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_comm_create_tcp(DeviceHandle device, StoreHandle store, string prefix, int rank, int worldSize, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_mpi_get_info(out int available, byte* version, ulong versionCapacity);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_create_mpi(DeviceHandle device, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_mpi_finalize();
    [LibraryImport(Lib)] public static partial SwStatus sw_nccl_get_unique_id(byte* id);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_create_nccl_local(int worldSize, nint* devices, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial SwStatus sw_comm_create_nccl(DeviceHandle device, StoreHandle store, string prefix, int rank, int worldSize, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_create_nccl_id(DeviceHandle device, byte* uniqueId, int rank, int worldSize, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_create_nccl_mpi(DeviceHandle device, long timeoutMs, out CommHandle comm);
    [LibraryImport(Lib)] public static partial SwStatus sw_nccl_get_info(out int available, out int versionCode, byte* text, ulong textCapacity);

    // ---------------------------------------------------------------- sub-communicators and point-to-point
    // Split results are raw handles: NULL for a rank that opted out, and sw_comm_split_local gives ranks of one color
    // the same handle (the caller wraps each distinct one once).
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_split_local(CommHandle comm, int* colors, int* keys, nint* comms);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_split(CommHandle comm, int rank, int color, int key, out nint subComm);
    [LibraryImport(Lib)] public static partial SwStatus sw_comm_get_parent_rank(CommHandle comm, int rank, out int parentRank);
    [LibraryImport(Lib)] public static partial SwStatus sw_send(CommHandle comm, int rank, int peer, BufferHandle buf, ulong offset, ulong count, SwDtype dtype, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_recv(CommHandle comm, int rank, int peer, BufferHandle buf, ulong offset, ulong count, SwDtype dtype, StreamHandle stream);
    [LibraryImport(Lib)] public static partial SwStatus sw_sendrecv(CommHandle comm, int rank, int sendPeer, BufferHandle send, ulong sendOffset, ulong sendCount, int recvPeer, BufferHandle recv, ulong recvOffset, ulong recvCount, SwDtype dtype, StreamHandle stream);
#pragma warning restore CS1591

    /// <summary>The native library's version string.</summary>
    public static string VersionString => Marshal.PtrToStringUTF8(sw_version_string()) ?? "";

    /// <summary>Throws unless the loaded library speaks the ABI these bindings were written for.</summary>
    public static void EnsureCompatible()
    {
        var v = sw_abi_version();
        if (v != AbiVersion)
            throw new ShardwiseException(SwStatus.Unsupported, nameof(sw_abi_version),
                $"the native library '{NativeLibraryLoader.LoadedFrom}' has ABI version {v}; these bindings expect {AbiVersion}");
    }

    // ---------------------------------------------------------------- mixed-precision training (element-wise)
#pragma warning disable CS1591
    [LibraryImport(Lib)] public static partial SwStatus sw_convert(StreamHandle stream, SwDtype srcType, BufferHandle src, ulong srcOffset, SwDtype dstType, BufferHandle dst, ulong dstOffset, ulong count);
    [LibraryImport(Lib)] public static partial SwStatus sw_unscale_check(StreamHandle stream, SwDtype dtype, BufferHandle buf, ulong offset, ulong count, float scale, BufferHandle flag, ulong flagOffset);
    [LibraryImport(Lib)] public static partial SwStatus sw_axpy(StreamHandle stream, SwDtype xType, float alpha, BufferHandle x, ulong xOffset, BufferHandle y, ulong yOffset, ulong count);
#pragma warning restore CS1591
}
