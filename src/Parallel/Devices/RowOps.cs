using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The row-wise kernels of a transformer block, queued on a stream (<c>sw_softmax</c>, <c>sw_softmax_backward</c>,
/// <c>sw_norm</c>, <c>sw_norm_backward</c>, <c>sw_activation_*</c>, <c>sw_glu*</c>, <c>sw_dropout</c>,
/// <c>sw_embedding*</c>, <c>sw_cross_entropy_*</c>): softmax of scaled attention scores with an optional causal mask,
/// LayerNorm / RMSNorm, activations (GeLU, ReLU, SiLU) and gated units (SwiGLU, GeGLU), counter-based dropout, the
/// rows of a vocabulary shard and the vocabulary-parallel cross-entropy, each with its backward. fp32 on every backend
/// (the scores and statistics of every precision policy), token ids int32; semantics in shardwise.h.
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

    /// <summary>y[i] = act(x[i]) for <paramref name="count"/> elements (y may be x).</summary>
    public static void Activation(DeviceStream stream, SwActivation act, DeviceBuffer<float> x, DeviceBuffer<float> y, long count,
        long xOffset = 0, long yOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        ThrowHelper.NonNegative(count);
        ThrowHelper.Check(Native.sw_activation_forward(stream.Handle, act, SwDtype.F32, x.Handle, (ulong)xOffset, y.Handle, (ulong)yOffset, (ulong)count));
    }

    /// <summary>dx[i] = dy[i] · act'(x[i]), x being the activation's input (dx may be dy).</summary>
    public static void ActivationBackward(DeviceStream stream, SwActivation act, DeviceBuffer<float> x, DeviceBuffer<float> dy, DeviceBuffer<float> dx,
        long count, long xOffset = 0, long dyOffset = 0, long dxOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        ArgumentNullException.ThrowIfNull(dx);
        ThrowHelper.NonNegative(count);
        ThrowHelper.Check(Native.sw_activation_backward(stream.Handle, act, SwDtype.F32, x.Handle, (ulong)xOffset, dy.Handle, (ulong)dyOffset,
            dx.Handle, (ulong)dxOffset, (ulong)count));
    }

    /// <summary>Gated unit: h = act(gate) ∘ up, where each row of <paramref name="gu"/> (rows × 2·cols, contiguous) is
    /// [gate | up] and <paramref name="h"/> is rows × cols (contiguous).</summary>
    public static void Glu(DeviceStream stream, SwActivation act, MatrixView<float> gu, MatrixView<float> h)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(gu);
        ThrowHelper.NotEmpty(h);
        Contiguous(gu, nameof(gu));
        Contiguous(h, nameof(h));
        ThrowHelper.Shape(gu, h.Rows, 2 * h.Cols, "rows x 2·cols: [gate | up]");
        ThrowHelper.Check(Native.sw_glu(stream.Handle, act, SwDtype.F32, gu.Buffer.Handle, (ulong)gu.Offset, h.Buffer.Handle, (ulong)h.Offset, h.Rows, h.Cols));
    }

    /// <summary>The backward of <see cref="Glu"/>: dgate = dh ∘ up ∘ act'(gate), dup = dh ∘ act(gate) into
    /// <paramref name="dgu"/> (shaped like gu; may be gu).</summary>
    public static void GluBackward(DeviceStream stream, SwActivation act, MatrixView<float> gu, MatrixView<float> dh, MatrixView<float> dgu)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(gu);
        ThrowHelper.NotEmpty(dh);
        ThrowHelper.NotEmpty(dgu);
        Contiguous(gu, nameof(gu));
        Contiguous(dh, nameof(dh));
        Contiguous(dgu, nameof(dgu));
        ThrowHelper.Shape(gu, dh.Rows, 2 * dh.Cols, "rows x 2·cols: [gate | up]");
        ThrowHelper.Shape(dgu, dh.Rows, 2 * dh.Cols, "shaped like gu");
        ThrowHelper.Check(Native.sw_glu_backward(stream.Handle, act, SwDtype.F32, gu.Buffer.Handle, (ulong)gu.Offset, dh.Buffer.Handle, (ulong)dh.Offset,
            dgu.Buffer.Handle, (ulong)dgu.Offset, dh.Rows, dh.Cols));
    }

    /// <summary>Inverted dropout of <paramref name="count"/> elements (y may be x): element i kept with probability 1 − p
    /// by the counter-based generator at (<paramref name="seed"/>, <paramref name="counter"/> + i), scaled by 1/(1 − p).
    /// The backward is the same call on the gradient with the same seed and counter.</summary>
    public static void Dropout(DeviceStream stream, DeviceBuffer<float> x, DeviceBuffer<float> y, long count, float p, ulong seed, ulong counter,
        long xOffset = 0, long yOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        ThrowHelper.NonNegative(count);
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(nameof(p), p, "expected a drop probability in [0, 1).");
        ThrowHelper.Check(Native.sw_dropout(stream.Handle, SwDtype.F32, x.Handle, (ulong)xOffset, y.Handle, (ulong)yOffset, (ulong)count, p, seed, counter));
    }

    /// <summary>Rows of a vocabulary shard: out[r] = table[ids[r] − vocabOffset] for ids in the shard, zeros for every other
    /// id (table: shardRows × cols; out: rows × cols; ids: rows int32 from <paramref name="idsOffset"/>).</summary>
    public static void Embedding(DeviceStream stream, DeviceBuffer<float> table, long shardRows, DeviceBuffer<int> ids, long vocabOffset,
        MatrixView<float> output, long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(ids);
        ThrowHelper.NotEmpty(output);
        Contiguous(output, nameof(output));
        ThrowHelper.Check(Native.sw_embedding(stream.Handle, SwDtype.F32, table.Handle, 0, shardRows, ids.Handle, (ulong)idsOffset, vocabOffset,
            output.Buffer.Handle, (ulong)output.Offset, output.Rows, output.Cols));
    }

    /// <summary>dtable[ids[r] − vocabOffset] += dout[r] for the ids in the shard, tokens in order; without
    /// <paramref name="accumulate"/> dtable is zeroed first.</summary>
    public static void EmbeddingBackward(DeviceStream stream, MatrixView<float> dout, DeviceBuffer<int> ids, long vocabOffset, DeviceBuffer<float> dtable,
        long shardRows, bool accumulate, long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(dtable);
        ThrowHelper.NotEmpty(dout);
        Contiguous(dout, nameof(dout));
        ThrowHelper.Check(Native.sw_embedding_backward(stream.Handle, SwDtype.F32, dout.Buffer.Handle, (ulong)dout.Offset, ids.Handle, (ulong)idsOffset,
            vocabOffset, dtable.Handle, 0, shardRows, dout.Rows, dout.Cols, accumulate ? 1 : 0));
    }

    /// <summary>Per row of a vocabulary shard's logits: (max, Σ exp(z − max), the target's logit or 0) into
    /// <paramref name="stats"/> (3 per row, from <paramref name="statsOffset"/>).</summary>
    public static void CrossEntropyPartial(DeviceStream stream, MatrixView<float> logits, DeviceBuffer<int> ids, long vocabOffset,
        DeviceBuffer<float> stats, long statsOffset = 0, long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(stats);
        ThrowHelper.NotEmpty(logits);
        ThrowHelper.Check(Native.sw_cross_entropy_partial(stream.Handle, SwDtype.F32, logits.Buffer.Handle, (ulong)logits.Offset, logits.Rows,
            logits.Cols, logits.Ld, ids.Handle, (ulong)idsOffset, vocabOffset, stats.Handle, (ulong)statsOffset));
    }

    /// <summary>TP-invariant statistics of this shard (<c>sw_cross_entropy_partial_tree</c>): with M the maximum over the
    /// <paramref name="parts"/> gathered partial statistics' maxima, writes per row [M or 0 (<paramref name="includeMax"/>),
    /// Σ exp(z − M) over the shard's columns as the fixed tree over leaves of <paramref name="leaf"/> columns, the target's
    /// logit when it is in the shard, else 0].</summary>
    public static void CrossEntropyPartialTree(DeviceStream stream, MatrixView<float> logits, DeviceBuffer<int> ids, long vocabOffset,
        DeviceBuffer<float> gathered, long gatheredOffset, int parts, long leaf, bool includeMax, DeviceBuffer<float> output, long outOffset,
        long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(gathered);
        ArgumentNullException.ThrowIfNull(output);
        ThrowHelper.NotEmpty(logits);
        ThrowHelper.Check(Native.sw_cross_entropy_partial_tree(stream.Handle, SwDtype.F32, logits.Buffer.Handle, (ulong)logits.Offset, logits.Rows,
            logits.Cols, logits.Ld, ids.Handle, (ulong)idsOffset, vocabOffset, gathered.Handle, (ulong)gatheredOffset, parts, leaf,
            includeMax ? 1 : 0, output.Handle, (ulong)outOffset));
    }

    /// <summary>Combines <paramref name="parts"/> shards' statistics (blocks of 3·rows, in shard order) into the
    /// log-sum-exp and the loss of each row (0 for ids outside [0, vocabSize): ignored rows).</summary>
    public static void CrossEntropyCombine(DeviceStream stream, DeviceBuffer<float> stats, int parts, long rows, DeviceBuffer<int> ids, long vocabSize,
        DeviceBuffer<float> lse, DeviceBuffer<float> loss, long statsOffset = 0, long lseOffset = 0, long lossOffset = 0, long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(stats);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(loss);
        ThrowHelper.Check(Native.sw_cross_entropy_combine(stream.Handle, SwDtype.F32, stats.Handle, (ulong)statsOffset, parts, rows, ids.Handle,
            (ulong)idsOffset, vocabSize, lse.Handle, (ulong)lseOffset, loss.Handle, (ulong)lossOffset));
    }

    /// <summary>dlogits = dloss[r] · (softmax(z) − onehot(id)) for this shard's logits (0 for ignored rows); dlogits may be
    /// the logits.</summary>
    public static void CrossEntropyBackward(DeviceStream stream, MatrixView<float> logits, DeviceBuffer<int> ids, long vocabOffset, long vocabSize,
        DeviceBuffer<float> lse, DeviceBuffer<float> dloss, MatrixView<float> dlogits, long lseOffset = 0, long dlossOffset = 0, long idsOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(dloss);
        ThrowHelper.NotEmpty(logits);
        ThrowHelper.NotEmpty(dlogits);
        SameRows(logits, dlogits, nameof(dlogits));
        ThrowHelper.Check(Native.sw_cross_entropy_backward(stream.Handle, SwDtype.F32, logits.Buffer.Handle, (ulong)logits.Offset, logits.Rows,
            logits.Cols, logits.Ld, ids.Handle, (ulong)idsOffset, vocabOffset, vocabSize, lse.Handle, (ulong)lseOffset, dloss.Handle,
            (ulong)dlossOffset, dlogits.Buffer.Handle, (ulong)dlogits.Offset));
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
