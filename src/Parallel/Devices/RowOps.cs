using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The row-wise kernels of a transformer block, queued on a stream (<c>sw_softmax</c>, <c>sw_softmax_backward</c>,
/// <c>sw_norm</c>, <c>sw_norm_backward</c>): softmax of scaled attention scores with an optional causal mask, and
/// LayerNorm / RMSNorm, each with its backward. fp32 on every backend (the scores and statistics of every precision
/// policy); semantics in shardwise.h.
/// </summary>
public static class RowOps
{
    /// <summary>y = softmax(scale · x) row by row; <paramref name="causalPeriod"/> = T &gt; 0 masks the scores of the
    /// stacked T × cols blocks causally (query q = row mod T sees keys j ≤ q + cols − T), 0 keeps every column. x and y
    /// share one leading dimension; y may be x.</summary>
    public static void Softmax(DeviceStream stream, MatrixView<float> x, MatrixView<float> y, float scale, long causalPeriod = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        SameRows(x, y, nameof(y));
        ThrowHelper.SameDevice(stream.Device, x);
        ThrowHelper.SameDevice(stream.Device, y);
        if (!float.IsFinite(scale)) throw new ArgumentOutOfRangeException(nameof(scale), scale, "scale must be finite.");
        if (causalPeriod < 0 || causalPeriod > x.Cols)
            throw new ArgumentOutOfRangeException(nameof(causalPeriod), causalPeriod, $"expected 0 (no mask) or 1..{x.Cols} (the queries per block).");
        ThrowHelper.Check(Native.sw_softmax(stream.Handle, SwDtype.F32, x.Buffer.Handle, (ulong)x.Offset, y.Buffer.Handle, (ulong)y.Offset,
            x.Rows, x.Cols, x.Ld, scale, causalPeriod));
    }

    /// <summary>dx = scale · y ∘ (dy − rowsum(dy ∘ y)): the backward of <see cref="Softmax"/> with y its output (dx may be dy).</summary>
    public static void SoftmaxBackward(DeviceStream stream, MatrixView<float> y, MatrixView<float> dy, MatrixView<float> dx, float scale)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(y);
        ThrowHelper.NotEmpty(dy);
        ThrowHelper.NotEmpty(dx);
        SameRows(y, dy, nameof(dy));
        SameRows(y, dx, nameof(dx));
        if (!float.IsFinite(scale)) throw new ArgumentOutOfRangeException(nameof(scale), scale, "scale must be finite.");
        ThrowHelper.Check(Native.sw_softmax_backward(stream.Handle, SwDtype.F32, y.Buffer.Handle, (ulong)y.Offset, dy.Buffer.Handle, (ulong)dy.Offset,
            dx.Buffer.Handle, (ulong)dx.Offset, y.Rows, y.Cols, y.Ld, scale));
    }

    /// <summary>Normalizes each row of <paramref name="x"/> (contiguous rows) into <paramref name="y"/> (may be x):
    /// LayerNorm ((x − mean)·rstd·gamma + beta) or RMSNorm (x·rstd·gamma). gamma and beta (cols elements) are optional
    /// (1 and 0; RMSNorm takes no beta); <paramref name="stats"/> (2 per row: mean, rstd) receives what the backward needs.</summary>
    public static void Norm(DeviceStream stream, SwNormKind kind, MatrixView<float> x, MatrixView<float> y, DeviceBuffer<float>? gamma,
        DeviceBuffer<float>? beta, DeviceBuffer<float>? stats, float eps, long gammaOffset = 0, long betaOffset = 0, long statsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        Contiguous(x, nameof(x));
        Contiguous(y, nameof(y));
        ThrowHelper.Shape(y, x.Rows, x.Cols, "shaped like x");
        if (!float.IsFinite(eps) || eps <= 0) throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be finite and > 0.");
        if (kind == SwNormKind.Rms && beta is not null) throw new ArgumentException("RMSNorm has no shift; expected beta = null.", nameof(beta));
        using var g = new Lease(gamma);
        using var b = new Lease(beta);
        using var s = new Lease(stats);
        ThrowHelper.Check(Native.sw_norm(stream.Handle, kind, SwDtype.F32, x.Buffer.Handle, (ulong)x.Offset, g.Handle, (ulong)gammaOffset,
            b.Handle, (ulong)betaOffset, y.Buffer.Handle, (ulong)y.Offset, s.Handle, (ulong)statsOffset, x.Rows, x.Cols, eps));
    }

    /// <summary>The backward of <see cref="Norm"/>: dx from dy (dx may be dy), and optionally dgamma (Σ_rows dy·x̂) and dbeta
    /// (Σ_rows dy; LayerNorm), overwritten or, with <paramref name="accumulate"/>, added to.</summary>
    public static void NormBackward(DeviceStream stream, SwNormKind kind, MatrixView<float> x, DeviceBuffer<float>? gamma, DeviceBuffer<float> stats,
        MatrixView<float> dy, MatrixView<float> dx, DeviceBuffer<float>? dGamma, DeviceBuffer<float>? dBeta, bool accumulate = false,
        long gammaOffset = 0, long statsOffset = 0, long dGammaOffset = 0, long dBetaOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(stats);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(dy);
        ThrowHelper.NotEmpty(dx);
        Contiguous(x, nameof(x));
        Contiguous(dy, nameof(dy));
        Contiguous(dx, nameof(dx));
        ThrowHelper.Shape(dy, x.Rows, x.Cols, "shaped like x");
        ThrowHelper.Shape(dx, x.Rows, x.Cols, "shaped like x");
        if (kind == SwNormKind.Rms && dBeta is not null) throw new ArgumentException("RMSNorm has no shift; expected dBeta = null.", nameof(dBeta));
        using var g = new Lease(gamma);
        using var dg = new Lease(dGamma);
        using var db = new Lease(dBeta);
        ThrowHelper.Check(Native.sw_norm_backward(stream.Handle, kind, SwDtype.F32, x.Buffer.Handle, (ulong)x.Offset, g.Handle, (ulong)gammaOffset,
            stats.Handle, (ulong)statsOffset, dy.Buffer.Handle, (ulong)dy.Offset, dx.Buffer.Handle, (ulong)dx.Offset,
            dg.Handle, (ulong)dGammaOffset, db.Handle, (ulong)dBetaOffset, x.Rows, x.Cols, accumulate ? 1 : 0));
    }

    private static void SameRows(MatrixView<float> a, MatrixView<float> b, string name)
    {
        if (b.Rows != a.Rows || b.Cols != a.Cols || b.Ld != a.Ld)
            throw new ArgumentException($"{name} is {b.Rows} x {b.Cols} (ld {b.Ld}); expected {a.Rows} x {a.Cols} with ld {a.Ld}, like the first operand.", name);
    }

    private static void Contiguous(MatrixView<float> v, string name)
    {
        if (v.Rows > 1 && v.Ld != v.Cols)
            throw new ArgumentException($"{name} has ld {v.Ld}; the norm kernels take contiguous rows (ld = {v.Cols}).", name);
    }

    // An optional buffer's raw handle, kept alive (DangerousAddRef) for the call.
    private readonly struct Lease : IDisposable
    {
        private readonly BufferHandle? _h;
        private readonly bool _added;
        public Lease(DeviceBuffer<float>? buffer)
        {
            _h = buffer?.Handle;
            bool added = false;
            _h?.DangerousAddRef(ref added);
            _added = added;
        }
        public nint Handle => _h?.DangerousGetHandle() ?? 0;
        public void Dispose()
        {
            if (_added) _h!.DangerousRelease();
        }
    }
}
