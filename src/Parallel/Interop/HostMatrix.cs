using System.Buffers;
using System.Numerics.Tensors;

namespace Shardwise.Parallel.Interop;

/// <summary>
/// A host <see cref="Tensor{T}"/> of float, <see cref="Half"/> or <see cref="BFloat16"/> seen as a
/// <see cref="MatrixView{T}"/> on a device, for as long as this object lives.
/// Created by <see cref="TensorInterop.Wrap"/> (zero copy, or an exception) or <see cref="TensorInterop.WrapOrCopy"/>
/// (zero copy where the device and layout allow it, else a device copy).
/// <para>
/// Zero copy: the tensor's managed memory is pinned and wrapped (<c>sw_buffer_wrap</c>) on the CPU device; native work
/// reads and writes the tensor itself. The memory stays pinned until <see cref="Dispose"/>, which first waits for
/// <see cref="Stream"/>. Work that uses <see cref="View"/> on any <em>other</em> stream must have completed before
/// <see cref="Dispose"/> (the entry points that wait — <c>ShardedGemm.Forward</c>, <c>RankContext.Synchronize</c> —
/// do that). Copy: <see cref="View"/> is a compact device copy, filled from the tensor at creation; with copy-back,
/// <see cref="Dispose"/> writes it back into the tensor after waiting for <see cref="Stream"/>.
/// </para>
/// Not thread-safe; dispose exactly once from the thread that owns it. Forgetting to dispose leaks the pin (the
/// tensor's memory then never moves nor is freed), never a dangling pointer.
/// </summary>
public unsafe class HostMatrix<T> : IDisposable where T : unmanaged
{
    private readonly Binding<T> _binding;
    private readonly bool _copyBack;
    private MemoryHandle _pin;
    private bool _disposed;

    internal HostMatrix(Tensor<T> tensor, DeviceStream stream, bool requireZeroCopy, bool copyBack, string argument)
    {
        ArgumentNullException.ThrowIfNull(tensor, argument);
        if (!MatrixView<T>.IsSupported)
            throw new NotSupportedException(
                $"{argument} is a Tensor<{typeof(T).Name}>: matrices hold float (System.Single), System.Half or Shardwise.BFloat16.");
        ArgumentNullException.ThrowIfNull(stream);
        var layout = HostLayout.Of(tensor.Lengths, tensor.Strides, argument);
        layout.RequireNonEmpty(argument);
        if (copyBack) layout.RequireWritable(argument);
        if (requireZeroCopy)
        {
            if (stream.Device.Backend != Backend.Cpu)
                throw new ArgumentException(
                    $"stream is on a {stream.Device.Backend} device ('{stream.Device}'): host memory can be wrapped without copying only on the CPU device; use WrapOrCopy.",
                    nameof(stream));
            layout.RequireWrappable(argument);
        }
        Tensor = tensor;
        Stream = stream;
        _copyBack = copyBack;
        bool zeroCopy = stream.Device.Backend == Backend.Cpu && layout.CanWrap;
        // Pin for the lifetime of this object only when native code will use the tensor's memory after this call.
        if (zeroCopy) _pin = tensor.GetPinnedHandle();
        try
        {
            // Tensor<T>.GetPinnableReference / GetPinnedHandle().Pointer point at the backing array's start, not at a
            // view's first element (System.Numerics.Tensors 10.0); the tensor span's reference is the first element.
            var span = tensor.AsReadOnlyTensorSpan();
            fixed (T* first = span) // already pinned when zero copy; pinned here for the staged copy-in
                _binding = Binding<T>.Create(stream, first, layout, span, copyIn: true, allowZeroCopy: zeroCopy);
        }
        catch
        {
            _pin.Dispose();
            throw;
        }
    }

    /// <summary>The tensor this matrix shows.</summary>
    public Tensor<T> Tensor { get; }

    /// <summary>The stream that <see cref="Dispose"/> waits for before unpinning (or copying back).</summary>
    public DeviceStream Stream { get; }

    /// <summary>The matrix on <see cref="Stream"/>'s device: rows = the product of all dimensions but the last,
    /// columns = the last dimension; over the tensor's memory when <see cref="IsZeroCopy"/>, else over a device copy.</summary>
    public MatrixView<T> View
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _binding.View;
        }
    }

    /// <summary>True when <see cref="View"/> is the tensor's own memory (no copy); false for a device copy.</summary>
    public bool IsZeroCopy => _binding.IsZeroCopy;

    /// <summary>
    /// Waits for <see cref="Stream"/> (rethrowing the first error of its queued work), copies a staged result back into
    /// the tensor when copy-back was asked for, then releases the wrapper or the copy and unpins the tensor.
    /// The tensor is unpinned and the wrapper released even when waiting throws.
    /// </summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            Stream.Synchronize();
            if (_copyBack) _binding.CopyBack(Tensor.AsTensorSpan(), Stream);
        }
        finally
        {
            _binding.Dispose();
            _pin.Dispose();
        }
    }
}

/// <summary>A float32 <see cref="HostMatrix{T}"/> (what <see cref="TensorInterop.Wrap(Tensor{float}, DeviceStream)"/> and
/// <see cref="TensorInterop.WrapOrCopy(Tensor{float}, DeviceStream, bool)"/> return).</summary>
public sealed class HostMatrix : HostMatrix<float>
{
    internal HostMatrix(Tensor<float> tensor, DeviceStream stream, bool requireZeroCopy, bool copyBack, string argument)
        : base(tensor, stream, requireZeroCopy, copyBack, argument)
    {
    }
}
