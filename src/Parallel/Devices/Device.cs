using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>Compute backends.</summary>
public enum Backend
{
    /// <summary>The CPU backend: always present.</summary>
    Cpu = SwBackend.Cpu,
    /// <summary>CUDA GPUs.</summary>
    Cuda = SwBackend.Cuda,
}

/// <summary>
/// A compute device: memory, streams and the threads (CPU) or the GPU that run kernels.
/// The CPU device has the same model as a GPU: buffers, in-order asynchronous streams and events.
/// </summary>
public sealed class Device : IDisposable
{
    private readonly DeviceHandle _handle;

    private Device(DeviceHandle handle, Backend backend)
    {
        _handle = handle;
        Backend = backend;
        ThrowHelper.Check(Native.sw_device_get_info(handle, out var info));
        Name = info.NameString;
        NumThreads = info.NumThreads;
        TotalMemoryBytes = info.TotalMemoryBytes;
    }

    /// <summary>The native handle (for interop with the C API).</summary>
    public DeviceHandle Handle
    {
        get { _handle.ThrowIfDisposed("device"); return _handle; }
    }

    /// <summary>The backend.</summary>
    public Backend Backend { get; }

    /// <summary>Human-readable name, e.g. "AMD EPYC, 2 threads".</summary>
    public string Name { get; }

    /// <summary>CPU: compute threads. CUDA: multiprocessors.</summary>
    public int NumThreads { get; }

    /// <summary>Physical memory (CPU) or device memory (CUDA), in bytes.</summary>
    public ulong TotalMemoryBytes { get; }

    /// <summary>The GEMM micro-kernel currently selected ("avx512", "avx2", "generic").</summary>
    public string Kernel
    {
        get
        {
            ThrowHelper.Check(Native.sw_device_get_info(Handle, out var info));
            return info.KernelString;
        }
    }

    /// <summary>
    /// The memory a plan may use on this device (default: <see cref="TotalMemoryBytes"/>). Layers check their shard
    /// against it when they are built and fail up front, naming the fewest ranks on which the layer would fit.
    /// </summary>
    public ulong MemoryLimitBytes
    {
        get => _memoryLimit == 0 ? TotalMemoryBytes : _memoryLimit;
        set => _memoryLimit = value;
    }

    private ulong _memoryLimit;

    /// <summary>Level 2 of the tiling: the GEMM tile shape of the current kernel (zeros on CUDA, where cuBLASLt picks per shape).</summary>
    public SwTileShape TileShape
    {
        get
        {
            ThrowHelper.Check(Native.sw_device_get_tile_shape(Handle, out var t));
            return t;
        }
    }

    /// <summary>
    /// TP-invariant numerics (<c>sw_device_set_gemm_reduction</c>; <see cref="TreeReduction"/>, docs/tp-invariance.md):
    /// 0 (the default) lets every GEMM on this device sum k in its fastest order; an even L &gt; 0 makes every GEMM enqueued
    /// afterwards sum k in leaves of L elements combined by a fixed binary tree, and every layer built afterwards on this
    /// device split its reduction dimension by that tree and combine the ranks with <see cref="SwReduceOp.SumTree"/>: its
    /// results are then bit-identical for every power-of-two tensor-parallel degree (other degrees are refused).
    /// <see cref="TreeReduction.DefaultLeaf"/> (512) costs the least on the CPU. Set it on every rank's device alike before
    /// building layers (a layer keeps the setting it was built with and refuses to run after it changed).
    /// </summary>
    public long GemmReductionLeaf
    {
        get
        {
            ThrowHelper.Check(Native.sw_device_get_gemm_reduction(Handle, out long leaf));
            return leaf;
        }
        set
        {
            if (value < 0 || value % 2 != 0 || value > (1L << 24))
                throw new ArgumentOutOfRangeException(nameof(value), value,
                    "GemmReductionLeaf must be 0 (the default order) or an even leaf size 2..16777216 (the TP-invariant tree).");
            ThrowHelper.Check(Native.sw_device_set_gemm_reduction(Handle, value));
        }
    }

    /// <summary>Number of devices of a backend (0 when it is not built in or has no device).</summary>
    public static int Count(Backend backend)
    {
        Native.EnsureCompatible();
        ThrowHelper.Check(Native.sw_device_count((SwBackend)backend, out int n));
        return n;
    }

    /// <summary>Opens the CPU device with <paramref name="threads"/> compute threads (0: SHARDWISE_NUM_THREADS or all).</summary>
    public static Device Cpu(int threads = 0)
    {
        if (threads < 0) throw new ArgumentOutOfRangeException(nameof(threads), threads, "threads must be >= 0 (0 = default).");
        return Open(Backend.Cpu, 0, threads);
    }

    /// <summary>Opens device <paramref name="ordinal"/> of <paramref name="backend"/>.</summary>
    public static Device Open(Backend backend, int ordinal = 0, int threads = 0)
    {
        Native.EnsureCompatible();
        ThrowHelper.Check(Native.sw_device_create((SwBackend)backend, ordinal, threads, out var h));
        return new Device(h, backend);
    }

    /// <summary>
    /// Selects the GEMM implementation for work enqueued afterwards: on the CPU the micro-kernel ("auto", "avx512",
    /// "avx2", "generic"); on CUDA "auto" or "cublaslt" (cuBLASLt), "mma" (the hand-written mma.sync kernel, f16/bf16) or
    /// "wgmma" (the hand-written Hopper kernel, f16/bf16, compute capability 9.0 with a plugin built for sm_90a; not yet
    /// validated on a GPU). An unknown name, or one the device cannot run, throws naming why.
    /// </summary>
    public void SetKernel(string kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ThrowHelper.Check(Native.sw_device_set_kernel(Handle, kernel));
    }

    private long _allocatedBytes, _peakAllocatedBytes;

    /// <summary>Bytes of the buffers allocated through <see cref="Allocate{T}"/> on this device (by every rank, layer and
    /// trainer using it) and not yet disposed. Wrapped memory, the native core's own scratch (GEMM packing, collective
    /// staging) and buffers left to the finalizer are not counted.</summary>
    public long AllocatedBytes => Interlocked.Read(ref _allocatedBytes);

    /// <summary>The most <see cref="AllocatedBytes"/> has been since the device was opened or
    /// <see cref="ResetPeakAllocatedBytes"/>.</summary>
    public long PeakAllocatedBytes => Interlocked.Read(ref _peakAllocatedBytes);

    /// <summary>Starts a new peak of <see cref="PeakAllocatedBytes"/> at the current <see cref="AllocatedBytes"/>.</summary>
    public void ResetPeakAllocatedBytes() => Interlocked.Exchange(ref _peakAllocatedBytes, AllocatedBytes);

    internal void CountAllocation(long bytes)
    {
        long now = Interlocked.Add(ref _allocatedBytes, bytes);
        if (bytes <= 0) return;
        long peak;
        while (now > (peak = Interlocked.Read(ref _peakAllocatedBytes)) &&
               Interlocked.CompareExchange(ref _peakAllocatedBytes, now, peak) != peak) { }
    }

    /// <summary>Allocates <paramref name="length"/> elements on this device (contents unspecified).</summary>
    public DeviceBuffer<T> Allocate<T>(long length) where T : unmanaged => DeviceBuffer<T>.Allocate(this, length);

    /// <summary>Wraps memory owned by someone else (another framework's tensor) without copying or taking ownership.</summary>
    public DeviceBuffer<T> Wrap<T>(nint pointer, long length) where T : unmanaged => DeviceBuffer<T>.Wrap(this, pointer, length);

    /// <summary>Creates an in-order asynchronous stream on this device.</summary>
    public DeviceStream CreateStream() => new(this);

    /// <inheritdoc />
    public override string ToString() => Name;

    /// <summary>Releases the device once every buffer, stream and event on it has been released.</summary>
    public void Dispose() => _handle.Dispose();
}
