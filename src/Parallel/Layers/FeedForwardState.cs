using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// What a training forward of <see cref="ParallelFeedForward"/> keeps for the backward pass on one rank: the
/// pre-activation Z and the activation H = GeLU(Z) (M × f_r each), plus room for dH — or nothing but the shape,
/// when activations are recomputed. Z is kept in fp32 whatever the precision (GeLU and its derivative are computed in
/// fp32); H and dH are kept in the compute type.
/// </summary>
public sealed class FeedForwardActivations : IDisposable
{
    private readonly Device _device;
    private readonly SwDtype _compute;

    internal FeedForwardActivations(Device device, long rows, long hiddenFeatures, SwDtype compute = SwDtype.F32)
    {
        _device = device;
        _compute = compute;
        Rows = rows;
        HiddenFeatures = hiddenFeatures;
        Recreate();
    }

    /// <summary>M: the number of token rows of the forward.</summary>
    public long Rows { get; }
    /// <summary>f_r: this rank's hidden features.</summary>
    public long HiddenFeatures { get; }
    /// <summary>True while Z and H are held (false after a forward without keeping them).</summary>
    public bool IsKept { get; private set; }

    // Layout of Buffer (fp32): [0, M·f) Z, [M·f, 2·M·f) H, [2·M·f, 3·M·f) dH (then dZ, in place). With a 16-bit compute
    // type, Buffer holds Z and one fp32 work area [M·f, 2·M·f) (H before it is rounded, later dH and dZ for GeLU'), and
    // Low holds H and dH (then dZ) in the compute type: [0, M·f) H, [M·f, 2·M·f) dH. 12 bytes per element either way,
    // as LayerPlan counts them.
    internal DeviceBuffer<float>? Buffer { get; private set; }
    internal object? Low { get; private set; }
    private long Span => Rows * HiddenFeatures;
    private long Ld => Math.Max(1, HiddenFeatures);
    internal MatrixView<float> PreActivationView => Buffer!.AsMatrix(Rows, HiddenFeatures, Ld, 0);
    internal MatrixView<float> HiddenView => Buffer!.AsMatrix(Rows, HiddenFeatures, Ld, Span);
    internal MatrixView<float> GradientView => Buffer!.AsMatrix(Rows, HiddenFeatures, Ld, 2 * Span); // fp32 compute only
    // H and dH in the compute type TC (the fp32 views above when TC is float).
    internal MatrixView<TC> HiddenAs<TC>() where TC : unmanaged =>
        typeof(TC) == typeof(float) ? (MatrixView<TC>)(object)HiddenView : ((DeviceBuffer<TC>)Low!).AsMatrix(Rows, HiddenFeatures, Ld, 0);
    internal MatrixView<TC> GradientAs<TC>() where TC : unmanaged =>
        typeof(TC) == typeof(float) ? (MatrixView<TC>)(object)GradientView : ((DeviceBuffer<TC>)Low!).AsMatrix(Rows, HiddenFeatures, Ld, Span);

    internal FeedForwardActivations Recreate()
    {
        Buffer ??= _device.Allocate<float>(Math.Max(1, (_compute == SwDtype.F32 ? 3 : 2) * Span));
        if (_compute != SwDtype.F32) Low ??= AnyBuffer.Allocate(_device, _compute, Math.Max(1, 2 * Span));
        IsKept = true;
        return this;
    }

    internal void Release()
    {
        Buffer?.Dispose();
        Buffer = null;
        (Low as IDisposable)?.Dispose();
        Low = null;
        IsKept = false;
    }

    /// <summary>Frees the kept activations.</summary>
    public void Dispose() => Release();
}

/// <summary>One rank's gradients of a <see cref="ParallelFeedForward"/>: dW1 (H × f_r), db1 (f_r), dW2 (f_r × H), db2 (H;
/// filled on rank 0, which owns b2). fp32 whatever the layer's precision (fp32 gradient accumulation).</summary>
public sealed class FeedForwardGradients : IDisposable
{
    /// <summary>Allocates gradient buffers shaped like <paramref name="ffn"/>'s shards on <paramref name="device"/>.</summary>
    public FeedForwardGradients(Device device, ParallelFeedForward ffn)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(ffn);
        long h = ffn.ModelFeatures, fr = ffn.Up.LocalOutFeatures;
        if (fr > 0)
        {
            DW1 = device.Allocate<float>(h * fr);
            DB1 = device.Allocate<float>(fr);
            DW2 = device.Allocate<float>(fr * h);
        }
        DB2 = device.Allocate<float>(h);
    }

    /// <summary>dW1, H × f_r (null when f_r = 0).</summary>
    public DeviceBuffer<float>? DW1 { get; }
    /// <summary>db1, f_r (null when f_r = 0).</summary>
    public DeviceBuffer<float>? DB1 { get; }
    /// <summary>dW2, f_r × H (null when f_r = 0).</summary>
    public DeviceBuffer<float>? DW2 { get; }
    /// <summary>db2, H (written on rank 0).</summary>
    public DeviceBuffer<float> DB2 { get; }

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        DW1?.Dispose();
        DB1?.Dispose();
        DW2?.Dispose();
        DB2.Dispose();
    }
}
