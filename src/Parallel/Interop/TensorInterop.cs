using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Shardwise.Parallel.Interop;

/// <summary>
/// Host tensors of System.Numerics.Tensors (<see cref="Tensor{T}"/>, <see cref="TensorSpan{T}"/>,
/// <see cref="ReadOnlyTensorSpan{T}"/>) in and out of Shardwise, without copies where the layout allows. Element types: float
/// everywhere; <see cref="Half"/> and <see cref="BFloat16"/> for the matrix-level entry points (Wrap, WrapOrCopy, CopyFrom,
/// CopyTo, <see cref="TensorGemm.Multiply{TIn, TOut}"/>); the layers' Forward overloads and ToWeightSource take float.
/// <para>
/// A tensor is read as a row-major matrix: the last dimension is the columns, all leading dimensions flatten into the
/// rows (a 1-D tensor is one row; a [batch, tokens, features] activation is a (batch·tokens) × features matrix).
/// On the CPU device a tensor with dense rows — unit last stride, one row stride ≥ the row length (padding allowed),
/// leading dimensions that flatten, no broadcast — is wrapped in place (<c>sw_buffer_wrap</c>): no copy, pinned only
/// while native code uses it. Any other layout (non-unit last stride, zero strides, leading dimensions that do not
/// flatten), and every tensor on a CUDA device, goes through a compact device copy; outputs are copied back. Outputs
/// must give every element its own memory (no broadcast or overlapping strides).
/// </para>
/// <para>
/// The <c>Forward</c> and <see cref="TensorGemm.Multiply"/> overloads taking tensor spans are synchronous: they
/// return when the result is in the output tensor (the spans cannot outlive the call). For asynchronous use keep a
/// <see cref="HostMatrix"/> from <see cref="Wrap"/> / <see cref="WrapOrCopy"/> alive while the work runs.
/// </para>
/// See docs/interop.md.
/// </summary>
public static unsafe class TensorInterop
{
    /// <summary>True when <paramref name="tensor"/> can be wrapped as a matrix without copying (on the CPU device):
    /// non-empty, unit last stride, leading dimensions that flatten into rows with a row stride ≥ the row length, and
    /// no broadcast (zero) stride.</summary>
    /// <param name="tensor">The tensor to inspect.</param>
    /// <returns>Whether <see cref="Wrap"/> would accept the layout.</returns>
    public static bool CanWrap(ReadOnlyTensorSpan<float> tensor) => CanWrap<float>(tensor);

    /// <summary><see cref="CanWrap(ReadOnlyTensorSpan{float})"/> for any element type (Half, BFloat16: pass the type or a
    /// tensor span, e.g. <c>CanWrap(tensor.AsReadOnlyTensorSpan())</c>).</summary>
    /// <param name="tensor">The tensor to inspect.</param>
    /// <returns>Whether Wrap would accept the layout.</returns>
    public static bool CanWrap<T>(ReadOnlyTensorSpan<T> tensor) => HostLayout.Of(tensor.Lengths, tensor.Strides, nameof(tensor)).CanWrap;

    /// <summary>The matrix shape under which Shardwise reads <paramref name="tensor"/>: rows = the product of all dimensions
    /// but the last, columns = the last dimension.</summary>
    /// <param name="tensor">The tensor (at least one dimension).</param>
    /// <returns>(rows, columns).</returns>
    /// <exception cref="ArgumentException">The tensor has no dimension.</exception>
    public static (long Rows, long Cols) MatrixShape(ReadOnlyTensorSpan<float> tensor) => MatrixShape<float>(tensor);

    /// <summary><see cref="MatrixShape(ReadOnlyTensorSpan{float})"/> for any element type.</summary>
    /// <param name="tensor">The tensor (at least one dimension).</param>
    /// <returns>(rows, columns).</returns>
    /// <exception cref="ArgumentException">The tensor has no dimension.</exception>
    public static (long Rows, long Cols) MatrixShape<T>(ReadOnlyTensorSpan<T> tensor)
    {
        var layout = HostLayout.Of(tensor.Lengths, tensor.Strides, nameof(tensor));
        return (layout.Rows, layout.Cols);
    }

    /// <summary>
    /// Wraps <paramref name="tensor"/>'s memory as a matrix on <paramref name="stream"/>'s device without copying: the
    /// memory is pinned until the returned object is disposed (which waits for <paramref name="stream"/> first).
    /// Writes through <see cref="HostMatrix{T}.View"/> land in the tensor.
    /// </summary>
    /// <param name="tensor">A non-empty tensor with dense rows (see <see cref="CanWrap"/>).</param>
    /// <param name="stream">The stream the work using the matrix is queued on; it must be on the CPU device.</param>
    /// <returns>The pinned, wrapped matrix.</returns>
    /// <exception cref="ArgumentException">The layout cannot be wrapped (the message names the reason and the layout
    /// expected), or <paramref name="stream"/> is not on the CPU device.</exception>
    public static HostMatrix Wrap(this Tensor<float> tensor, DeviceStream stream) =>
        new(tensor, stream, requireZeroCopy: true, copyBack: false, nameof(tensor));

    /// <summary><see cref="Wrap(Tensor{float}, DeviceStream)"/> for a tensor of <see cref="Half"/> or
    /// <see cref="BFloat16"/> (or float): the same rules, a typed matrix.</summary>
    /// <param name="tensor">A non-empty tensor with dense rows (see <see cref="CanWrap"/>).</param>
    /// <param name="stream">The stream the work using the matrix is queued on; it must be on the CPU device.</param>
    /// <returns>The pinned, wrapped matrix.</returns>
    /// <exception cref="ArgumentException">The layout cannot be wrapped, or <paramref name="stream"/> is not on the CPU device.</exception>
    /// <exception cref="NotSupportedException">T is not float, Half or BFloat16.</exception>
    public static HostMatrix<T> Wrap<T>(this Tensor<T> tensor, DeviceStream stream) where T : unmanaged =>
        new(tensor, stream, requireZeroCopy: true, copyBack: false, nameof(tensor));

    /// <summary>
    /// Like <see cref="Wrap"/> where the device and the layout allow it; otherwise copies the tensor into a compact
    /// device matrix, and (with <paramref name="copyBack"/>) copies that matrix back into the tensor on dispose.
    /// </summary>
    /// <param name="tensor">A non-empty tensor of any layout (with <paramref name="copyBack"/>: one in which every
    /// element has its own memory).</param>
    /// <param name="stream">The stream the work using the matrix is queued on (any device).</param>
    /// <param name="copyBack">True for outputs: a staged copy is written back into the tensor on dispose.</param>
    /// <returns>The matrix; <see cref="HostMatrix{T}.IsZeroCopy"/> says which way it was made.</returns>
    /// <exception cref="ArgumentException">The tensor is empty, or (with <paramref name="copyBack"/>) elements share memory.</exception>
    public static HostMatrix WrapOrCopy(this Tensor<float> tensor, DeviceStream stream, bool copyBack = true) =>
        new(tensor, stream, requireZeroCopy: false, copyBack, nameof(tensor));

    /// <summary><see cref="WrapOrCopy(Tensor{float}, DeviceStream, bool)"/> for a tensor of <see cref="Half"/> or
    /// <see cref="BFloat16"/> (or float).</summary>
    /// <param name="tensor">A non-empty tensor of any layout.</param>
    /// <param name="stream">The stream the work using the matrix is queued on (any device).</param>
    /// <param name="copyBack">True for outputs: a staged copy is written back into the tensor on dispose.</param>
    /// <returns>The matrix.</returns>
    /// <exception cref="ArgumentException">The tensor is empty, or (with <paramref name="copyBack"/>) elements share memory.</exception>
    /// <exception cref="NotSupportedException">T is not float, Half or BFloat16.</exception>
    public static HostMatrix<T> WrapOrCopy<T>(this Tensor<T> tensor, DeviceStream stream, bool copyBack = true) where T : unmanaged =>
        new(tensor, stream, requireZeroCopy: false, copyBack, nameof(tensor));

    /// <summary>Copies a host tensor of any layout into the device matrix <paramref name="destination"/> (same rows ×
    /// columns) through <paramref name="stream"/> and waits.</summary>
    /// <param name="destination">The device matrix.</param>
    /// <param name="source">The host tensor; its matrix shape (see <see cref="MatrixShape"/>) must match.</param>
    /// <param name="stream">A stream of the destination's device.</param>
    /// <exception cref="ArgumentException">The shapes differ, or <paramref name="destination"/> is an empty view.</exception>
    public static void CopyFrom<T>(this MatrixView<T> destination, ReadOnlyTensorSpan<T> source, DeviceStream stream) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(destination);
        var layout = HostLayout.Of(source.Lengths, source.Strides, nameof(source));
        layout.RequireShape(destination.Rows, destination.Cols, nameof(source), "the destination matrix");
        if (layout.IsEmpty) return;
        fixed (T* p = source)
            Binding<T>.CopyIn(source, p, layout, destination, stream);
    }

    /// <summary>Copies the device matrix <paramref name="source"/> into a host tensor of any layout in which every
    /// element has its own memory (same rows × columns), after the work already queued on <paramref name="stream"/>, and waits.</summary>
    /// <param name="source">The device matrix.</param>
    /// <param name="destination">The host tensor; its matrix shape (see <see cref="MatrixShape"/>) must match.</param>
    /// <param name="stream">A stream of the source's device.</param>
    /// <exception cref="ArgumentException">The shapes differ, elements of <paramref name="destination"/> share memory, or
    /// <paramref name="source"/> is an empty view.</exception>
    public static void CopyTo<T>(this MatrixView<T> source, TensorSpan<T> destination, DeviceStream stream) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(source);
        var layout = HostLayout.Of(destination.Lengths, destination.Strides, nameof(destination));
        layout.RequireShape(source.Rows, source.Cols, nameof(destination), "the source matrix");
        layout.RequireWritable(nameof(destination));
        if (layout.IsEmpty) return;
        Binding<T>.CopyOut(source, destination, stream);
    }

    /// <summary>
    /// A <see cref="WeightSource"/> reading the weight matrix from <paramref name="tensor"/> (any strides; read block by
    /// block while a layer loads its shard, so only the shard reaches the device). Rows × columns as in
    /// <see cref="MatrixShape"/>; with <paramref name="transpose"/> a 2-D tensor is read as its transpose (e.g. an
    /// out × in weight of <c>torch.nn.Linear</c> layout used as the in × out W of Shardwise), without copying it.
    /// The tensor must not change while layers are being built from the source.
    /// </summary>
    /// <param name="tensor">The weight (or a 1-D / 1 × N bias).</param>
    /// <param name="transpose">Read a 2-D tensor transposed.</param>
    /// <returns>The source.</returns>
    /// <exception cref="ArgumentException">The tensor has no dimension, or <paramref name="transpose"/> with a tensor that is not 2-D.</exception>
    public static WeightSource ToWeightSource(this Tensor<float> tensor, bool transpose = false) =>
        new TensorWeightSource(tensor, transpose, nameof(tensor));

    /// <summary>
    /// <see cref="ShardedGemm.Forward"/> on host tensors: Y = X·W (+ bias) on every rank, then waits and (for a staged
    /// output) copies Y back. Zero copy on the CPU device for tensors with dense rows (see <see cref="CanWrap"/>).
    /// </summary>
    /// <param name="gemm">The sharded GEMM.</param>
    /// <param name="x">M × K input (leading dimensions flatten into M).</param>
    /// <param name="y">M × N output (leading dimensions flatten into M).</param>
    /// <param name="bias">Optional bias: N elements (1-D or 1 × N); default: none.</param>
    /// <param name="epilogue">Fused epilogue.</param>
    /// <exception cref="ArgumentException">A shape does not match (the message names the argument, its shape and the
    /// expected shape), a tensor is empty, or elements of <paramref name="y"/> share memory.</exception>
    public static void Forward(this ShardedGemm gemm, ReadOnlyTensorSpan<float> x, TensorSpan<float> y,
        ReadOnlyTensorSpan<float> bias = default, Epilogue epilogue = Epilogue.None)
    {
        ArgumentNullException.ThrowIfNull(gemm);
        var lx = Input(x);
        lx.RequireShape(lx.Rows, gemm.K, nameof(x), "M x K");
        var ly = Output(y);
        ly.RequireShape(lx.Rows, gemm.N, nameof(y), "M x N");
        bool hasBias = !bias.IsEmpty;
        var lb = hasBias ? Input(bias) : default;
        if (hasBias) lb.RequireShape(1, gemm.N, nameof(bias), "N values, 1-D or 1 x N");
        var group = gemm.Group;
        var stream = group[0].Stream;
        fixed (float* px = x)
        fixed (float* py = y)
        fixed (float* pb = bias)
        {
            using var bx = Binding<float>.Create(stream, px, lx, x, copyIn: true);
            using var by = Binding<float>.Create(stream, py, ly, y, copyIn: false);
            using var bb = hasBias ? Binding<float>.Create(stream, pb, lb, bias, copyIn: true) : null;
            try { gemm.Forward(bx.View, by.View, bb?.Buffer, epilogue); } // waits for every rank
            catch { SynchronizeQuietly(group); throw; }
            by.CopyBack(y, stream);
        }
    }

    /// <summary>
    /// <see cref="ColumnParallelLinear.Forward"/> on host tensors, for the calling rank: queues the layer on the rank's
    /// stream, waits for it (<see cref="RankContext.Synchronize"/>: every rank must call this, as for any collective) and
    /// copies a staged output back.
    /// </summary>
    /// <param name="layer">This rank's layer.</param>
    /// <param name="x">M × in-features.</param>
    /// <param name="y">M × out-features when the layer gathers its output, else M × this rank's out-features.</param>
    /// <exception cref="ArgumentException">A shape does not match, a tensor is empty, or elements of <paramref name="y"/> share memory.</exception>
    public static void Forward(this ColumnParallelLinear layer, ReadOnlyTensorSpan<float> x, TensorSpan<float> y)
    {
        ArgumentNullException.ThrowIfNull(layer);
        var lx = Input(x);
        lx.RequireShape(lx.Rows, layer.InFeatures, nameof(x), "M x in-features");
        var ly = Output(y);
        ly.RequireShape(lx.Rows, layer.GatherOutput ? layer.OutFeatures : layer.LocalOutFeatures, nameof(y),
            layer.GatherOutput ? "M x out-features, gathered" : "M x this rank's out-features");
        RunOnRank(layer.Context, x, lx, y, ly, layer.Forward);
    }

    /// <summary>
    /// <see cref="RowParallelLinear.Forward"/> on host tensors, for the calling rank: queues the GEMM and the all-reduce,
    /// waits for them (every rank must call this) and copies a staged output back.
    /// </summary>
    /// <param name="layer">This rank's layer.</param>
    /// <param name="x">M × this rank's in-features when the input is parallel, else M × in-features.</param>
    /// <param name="y">M × out-features.</param>
    /// <exception cref="ArgumentException">A shape does not match, a tensor is empty, or elements of <paramref name="y"/> share memory.</exception>
    public static void Forward(this RowParallelLinear layer, ReadOnlyTensorSpan<float> x, TensorSpan<float> y)
    {
        ArgumentNullException.ThrowIfNull(layer);
        var lx = Input(x);
        lx.RequireShape(lx.Rows, layer.InputIsParallel ? layer.LocalInFeatures : layer.InFeatures, nameof(x),
            layer.InputIsParallel ? "M x this rank's in-features" : "M x in-features");
        var ly = Output(y);
        ly.RequireShape(lx.Rows, layer.OutFeatures, nameof(y), "M x out-features");
        RunOnRank(layer.Context, x, lx, y, ly, layer.Forward);
    }

    /// <summary>
    /// <see cref="ParallelFeedForward.Forward"/> on host tensors, for the calling rank: Y = GeLU(X·W1 + b1)·W2 + b2 with
    /// one all-reduce; waits for it (every rank must call this) and copies a staged output back.
    /// </summary>
    /// <param name="layer">This rank's FFN.</param>
    /// <param name="x">M × model features (H).</param>
    /// <param name="y">M × model features (H).</param>
    /// <exception cref="ArgumentException">A shape does not match, a tensor is empty, or elements of <paramref name="y"/> share memory.</exception>
    public static void Forward(this ParallelFeedForward layer, ReadOnlyTensorSpan<float> x, TensorSpan<float> y)
    {
        ArgumentNullException.ThrowIfNull(layer);
        var lx = Input(x);
        lx.RequireShape(lx.Rows, layer.ModelFeatures, nameof(x), "M x model features");
        var ly = Output(y);
        ly.RequireShape(lx.Rows, layer.ModelFeatures, nameof(y), "M x model features");
        RunOnRank(layer.Context, x, lx, y, ly, layer.Forward);
    }

    internal static HostLayout Input<T>(ReadOnlyTensorSpan<T> tensor, [CallerArgumentExpression(nameof(tensor))] string argument = "")
    {
        var layout = HostLayout.Of(tensor.Lengths, tensor.Strides, argument);
        layout.RequireNonEmpty(argument);
        return layout;
    }

    internal static HostLayout Output<T>(TensorSpan<T> tensor, [CallerArgumentExpression(nameof(tensor))] string argument = "")
    {
        var layout = Input((ReadOnlyTensorSpan<T>)tensor, argument);
        layout.RequireWritable(argument);
        return layout;
    }

    private static void RunOnRank(RankContext ctx, ReadOnlyTensorSpan<float> x, in HostLayout lx, TensorSpan<float> y,
        in HostLayout ly, Action<MatrixView<float>, MatrixView<float>> forward)
    {
        var stream = ctx.Stream;
        fixed (float* px = x)
        fixed (float* py = y)
        {
            using var bx = Binding<float>.Create(stream, px, lx, x, copyIn: true);
            using var by = Binding<float>.Create(stream, py, ly, y, copyIn: false);
            try
            {
                forward(bx.View, by.View);
                ctx.Synchronize();
            }
            catch
            {
                // Whatever was queued may still use the pinned memory: wait for it before the pins are released.
                SynchronizeQuietly(stream);
                throw;
            }
            by.CopyBack(y, stream);
        }
    }

    internal static void SynchronizeQuietly(DeviceStream stream)
    {
        try { stream.Synchronize(); }
        catch (Exception) { /* the original exception is the one to report */ }
    }

    private static void SynchronizeQuietly(ProcessGroup group)
    {
        try { group.Synchronize(); }
        catch (Exception) { /* the original exception is the one to report */ }
    }
}
