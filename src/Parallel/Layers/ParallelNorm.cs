using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// LayerNorm or RMSNorm over the H features of each token row, for one rank of a tensor-parallel group: gamma (and
/// beta, LayerNorm) are replicated — every rank holds all H of them. Without sequence parallelism every rank normalizes
/// the same M rows and computes the same parameter gradients (no communication). Under sequence parallelism each rank
/// holds only its block of token rows, so its parameter gradients are partial sums: <see cref="Backward"/> with
/// <c>sequenceParallel</c> all-reduces them (one collective for dgamma and dbeta together), as Megatron does for its
/// sequence-parallel norms. fp32 (<see cref="RowOps.Norm"/>).
/// </summary>
public sealed class ParallelNorm : IDisposable
{
    private readonly RankContext _ctx;
    private readonly DeviceBuffer<float> _params; // [0, H) gamma, [H, 2H) beta (LayerNorm)
    private readonly DeviceBuffer<float> _partial;

    /// <summary>Loads gamma (1 × H; null: ones) and, for LayerNorm, beta (1 × H; null: zeros).</summary>
    public ParallelNorm(RankContext context, SwNormKind kind, long features, WeightSource? gamma = null, WeightSource? beta = null, float eps = 1e-5f)
    {
        ArgumentNullException.ThrowIfNull(context);
        ThrowHelper.Positive(features);
        if (kind != SwNormKind.Layer && kind != SwNormKind.Rms)
            throw new ArgumentOutOfRangeException(nameof(kind), kind, "expected SwNormKind.Layer or SwNormKind.Rms.");
        if (kind == SwNormKind.Rms && beta is not null) throw new ArgumentException("RMSNorm has no shift; expected beta = null.", nameof(beta));
        if (!float.IsFinite(eps) || eps <= 0) throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be finite and > 0.");
        gamma?.Require(1, features, nameof(gamma));
        beta?.Require(1, features, nameof(beta));
        _ctx = context;
        Kind = kind;
        Features = features;
        Eps = eps;
        int n = kind == SwNormKind.Layer ? 2 : 1;
        _params = context.Device.Allocate<float>(n * features);
        _partial = context.Device.Allocate<float>(n * features);
        var host = new float[n * features];
        if (gamma is null) Array.Fill(host, 1f, 0, (int)features);
        else gamma.Read(0, 0, 1, features, host.AsSpan(0, (int)features));
        if (beta is not null) beta.Read(0, 0, 1, features, host.AsSpan((int)features, (int)features));
        _params.CopyFrom(host, context.Stream);
        context.Synchronize();
    }

    /// <summary>LayerNorm or RMSNorm.</summary>
    public SwNormKind Kind { get; }
    /// <summary>H: features per row.</summary>
    public long Features { get; }
    /// <summary>The epsilon under the square root.</summary>
    public float Eps { get; }
    /// <summary>Number of parameters (H, or 2H for LayerNorm): the length of <see cref="NormGradients.Buffer"/>.</summary>
    public long ParameterCount => _params.Length;
    /// <summary>gamma, then beta (LayerNorm), on this rank's device.</summary>
    public DeviceBuffer<float> Values => _params;
    private DeviceBuffer<float>? Beta => Kind == SwNormKind.Layer ? _params : null;

    /// <summary>Queues y = norm(x) (M × H each, contiguous rows; y may be x).</summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y) => Run(x, y, null);

    /// <summary>Training forward: as <see cref="Forward"/>, keeping the per-row statistics (2 floats per row) the
    /// backward needs (the input itself is the caller's to keep).</summary>
    public NormActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y)
    {
        ThrowHelper.NotEmpty(x);
        var saved = new NormActivations(_ctx.Device, x.Rows);
        try
        {
            Run(x, y, saved.Stats);
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    private void Run(MatrixView<float> x, MatrixView<float> y, DeviceBuffer<float>? stats)
    {
        ThrowHelper.NotEmpty(x);
        if (x.Cols != Features) throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected M x {Features}.", nameof(x));
        RowOps.Norm(_ctx.Stream, Kind, x, y, _params, Beta, stats, Eps, 0, Features);
    }

    /// <summary>Backward: dx from dy (dx may be dy) and the parameter gradients into <paramref name="gradients"/>
    /// (overwritten, or added to with <paramref name="accumulate"/>). With <paramref name="sequenceParallel"/> this
    /// rank's rows are a block of the sequence and the parameter gradients are all-reduced over the group (one
    /// collective); without, no communication.</summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, NormGradients gradients, NormActivations saved,
        bool sequenceParallel = false, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        ArgumentNullException.ThrowIfNull(saved);
        ThrowHelper.NotEmpty(x);
        if (saved.Rows != x.Rows) throw new ArgumentException($"saved statistics are for {saved.Rows} rows; x has {x.Rows}.", nameof(saved));
        if (gradients.Buffer.Length != ParameterCount)
            throw new ArgumentException($"gradients hold {gradients.Buffer.Length} values; expected {ParameterCount}.", nameof(gradients));
        if (x.Cols != Features) throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected M x {Features}.", nameof(x));
        bool direct = !sequenceParallel || _ctx.WorldSize == 1;
        var target = direct ? gradients.Buffer : _partial;
        bool acc = direct && accumulate;
        RowOps.NormBackward(_ctx.Stream, Kind, x, _params, saved.Stats, dy, dx, target, Kind == SwNormKind.Layer ? target : null, acc,
            0, 0, 0, Features);
        if (direct) return;
        if (accumulate)
        {
            _ctx.AllReduce(_partial);
            ElementwiseOps.Axpy(_ctx.Stream, 1f, _partial, gradients.Buffer, ParameterCount);
        }
        else
        {
            _ctx.AllReduce(_partial, gradients.Buffer);
        }
    }

    /// <summary>gamma ("gamma", 1 × H) and, for LayerNorm, beta ("beta") — replicated: every rank holds them whole — with
    /// their gradients in <paramref name="gradients"/>. Both live in one buffer: beta's entry has offsets H.</summary>
    public IReadOnlyList<ParameterShard> Parameters(NormGradients gradients, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(gradients);
        if (gradients.Buffer.Length != ParameterCount)
            throw new ArgumentException($"gradients hold {gradients.Buffer.Length} values; expected {ParameterCount}.", nameof(gradients));
        var list = new List<ParameterShard>
        {
            new(prefix + "gamma", 1, Features, 0, 1, 0, Features, true, _params, gradients.Buffer),
        };
        if (Kind == SwNormKind.Layer)
            list.Add(new ParameterShard(prefix + "beta", 1, Features, 0, 1, 0, Features, true, _params, gradients.Buffer)
                { ValueOffset = Features, GradientOffset = Features });
        return list;
    }

    /// <summary>Frees the parameters.</summary>
    public void Dispose()
    {
        _params.Dispose();
        _partial.Dispose();
    }
}

/// <summary>The per-row statistics (mean, rstd) a <see cref="ParallelNorm"/> training forward keeps.</summary>
public sealed class NormActivations : IDisposable
{
    internal NormActivations(Device device, long rows)
    {
        Rows = rows;
        Stats = device.Allocate<float>(2 * rows);
    }

    /// <summary>Rows of the forward.</summary>
    public long Rows { get; }
    internal DeviceBuffer<float> Stats { get; }

    /// <summary>Frees the statistics.</summary>
    public void Dispose() => Stats.Dispose();
}

/// <summary>The parameter gradients of a <see cref="ParallelNorm"/>: dgamma (H), then dbeta (H, LayerNorm) in one buffer.</summary>
public sealed class NormGradients : IDisposable
{
    /// <summary>Allocates the gradients of <paramref name="norm"/>.</summary>
    public NormGradients(Device device, ParallelNorm norm)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(norm);
        Buffer = device.Allocate<float>(norm.ParameterCount);
    }

    /// <summary>dgamma at [0, H), dbeta at [H, 2H).</summary>
    public DeviceBuffer<float> Buffer { get; }

    /// <summary>Frees the buffer.</summary>
    public void Dispose() => Buffer.Dispose();
}
