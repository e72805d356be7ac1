using System.Numerics.Tensors;

namespace Shardwise.Parallel.Interop;

/// <summary>
/// A host tensor bound to a device for one operation: on the CPU device, a wrappable layout becomes a wrapped buffer
/// over the tensor's own memory (zero copy; the caller keeps that memory pinned until the work using it has
/// completed); otherwise (CUDA, or a layout that cannot be wrapped) an owned device buffer holds a compact copy.
/// T: float, Half or BFloat16 (the matrix element types).
/// </summary>
internal sealed unsafe class Binding<T>(DeviceBuffer<T> buffer, MatrixView<T> view, bool zeroCopy, HostLayout layout) : IDisposable
    where T : unmanaged
{
    public MatrixView<T> View { get; } = view;
    public bool IsZeroCopy { get; } = zeroCopy;
    public HostLayout Layout { get; } = layout;
    public DeviceBuffer<T> Buffer { get; } = buffer;

    /// <summary>
    /// Binds the tensor whose first element is at <paramref name="first"/> (pinned by the caller) on
    /// <paramref name="stream"/>'s device. <paramref name="copyIn"/>: a staged copy is filled with the tensor's values
    /// (inputs, and outputs that are read as well as written).
    /// </summary>
    public static Binding<T> Create(DeviceStream stream, T* first, in HostLayout layout, ReadOnlyTensorSpan<T> tensor, bool copyIn,
        bool allowZeroCopy = true)
    {
        var device = stream.Device;
        if (allowZeroCopy && device.Backend == Backend.Cpu && layout.CanWrap)
        {
            var wrapped = device.Wrap<T>((nint)first, layout.Extent);
            try { return new Binding<T>(wrapped, wrapped.AsMatrix(layout.Rows, layout.Cols, layout.Ld), true, layout); }
            catch { wrapped.Dispose(); throw; }
        }
        var buffer = device.Allocate<T>(checked(layout.Rows * layout.Cols));
        try
        {
            var view = buffer.AsMatrix(layout.Rows, layout.Cols);
            if (copyIn) CopyIn(tensor, first, layout, view, stream);
            return new Binding<T>(buffer, view, false, layout);
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    /// <summary>Copies the tensor into the device matrix <paramref name="view"/> (same rows × cols) and waits.</summary>
    internal static void CopyIn(ReadOnlyTensorSpan<T> tensor, T* first, in HostLayout layout, MatrixView<T> view, DeviceStream stream)
    {
        long rows = layout.Rows, cols = layout.Cols;
        if (layout.CanWrap && (layout.Ld == cols || rows == 1) && view.Ld == cols)
        {
            // Dense and contiguous on both sides: one copy straight from the tensor's memory.
            view.Buffer.CopyFrom(new ReadOnlySpan<T>(first, checked((int)(rows * cols))), stream, view.Offset);
            return;
        }
        var host = new T[checked((int)(rows * cols))];
        tensor.FlattenTo(host); // the BCL walks any strides (broadcast included) in row-major order
        if (view.Ld == cols)
        {
            view.Buffer.CopyFrom(host, stream, view.Offset);
            return;
        }
        for (long i = 0; i < rows; i++)
            view.Buffer.CopyFrom(host.AsSpan((int)(i * cols), (int)cols), stream, view.Offset + i * view.Ld);
    }

    /// <summary>Copies the device matrix <paramref name="view"/> into the tensor (same rows × cols; waits for the work
    /// queued on <paramref name="stream"/> first).</summary>
    internal static void CopyOut(MatrixView<T> view, TensorSpan<T> tensor, DeviceStream stream)
    {
        long rows = view.Rows, cols = view.Cols;
        var host = new T[checked((int)(rows * cols))];
        if (view.Ld == cols || rows == 1)
            view.Buffer.CopyTo(host, stream, view.Offset);
        else
            for (long i = 0; i < rows; i++)
                view.Buffer.CopyTo(host.AsSpan((int)(i * cols), (int)cols), stream, view.Offset + i * view.Ld);
        new ReadOnlyTensorSpan<T>(host, tensor.Lengths).CopyTo(tensor);
    }

    /// <summary>For a staged output: copies the result back into <paramref name="tensor"/>. Zero copy: nothing to do.</summary>
    public void CopyBack(TensorSpan<T> tensor, DeviceStream stream)
    {
        if (!IsZeroCopy) CopyOut(View, tensor, stream);
    }

    /// <summary>Releases the wrapper (never the tensor's memory) or the staging buffer.</summary>
    public void Dispose() => Buffer.Dispose();
}
