using System.Text;
using Shardwise.Parallel;
using TorchSharp;

namespace Shardwise.TorchSharp.Tests;

/// <summary>
/// Whether TorchSharp's native libraries load on this machine. TorchSharp-cpu 0.107.0 ships libtorch 2.10, built against
/// libstdc++ with GLIBCXX_3.4.32 (GCC 13 or later); Debian 12's libstdc++ (GCC 12) stops at GLIBCXX_3.4.30, so there the
/// load fails and the tests report Ignored with that reason. A load failure on a machine whose libstdc++ does have
/// GLIBCXX_3.4.32 is not excused: the tests fail with the exception.
/// </summary>
internal static class TorchAvailability
{
    public const string Symbol = "GLIBCXX_3.4.32";
    public const string SystemLibStdCxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

    private static readonly Lazy<(bool Loaded, string? IgnoreReason, Exception? Error)> State = new(Probe);

    /// <summary>True when <see cref="SystemLibStdCxx"/> exists and does not contain <see cref="Symbol"/>.</summary>
    public static bool SystemLibStdCxxLacksSymbol()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists(SystemLibStdCxx)) return false;
        var bytes = File.ReadAllBytes(SystemLibStdCxx);
        return bytes.AsSpan().IndexOf(Encoding.ASCII.GetBytes(Symbol)) < 0;
    }

    private static (bool, string?, Exception?) Probe()
    {
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU);
            using var ones = torch.ones(3);
            using var sum = ones.sum();
            if (sum.item<float>() != 3f) throw new InvalidOperationException("torch.ones(3).sum() is not 3");
            return (true, null, null);
        }
        catch (Exception e)
        {
            var root = e;
            while (root.InnerException is not null) root = root.InnerException;
            string first = (root.Message.Split('\n').FirstOrDefault() ?? "").Trim();
            if (SystemLibStdCxxLacksSymbol())
                return (false,
                    $"TorchSharp-cpu 0.107.0 (libtorch 2.10) cannot load here: its native libraries need libstdc++ with {Symbol} " +
                    $"(GCC 13 or later) and {SystemLibStdCxx} lacks it ({root.GetType().Name}: {first})", e);
            return (false, null, e);
        }
    }

    /// <summary>Ignores the calling test (or fixture) when TorchSharp cannot load for lack of GLIBCXX_3.4.32; fails it when
    /// TorchSharp cannot load for another reason.</summary>
    public static void Require()
    {
        var (loaded, reason, error) = State.Value;
        if (loaded) return;
        if (reason is not null) Assert.Ignore(reason);
        Assert.Fail($"TorchSharp failed to load although libstdc++ provides {Symbol}: {error}");
    }
}

/// <summary>
/// Zero-copy access to the memory of TorchSharp CPU tensors: the address of element 0 (the storage's data pointer plus
/// the tensor's storage offset) and the row-major matrix layout Shardwise needs (unit last stride; leading dimensions
/// that flatten into rows; row stride ≥ the row length).
/// </summary>
internal static class TorchMemory
{
    /// <summary>The address of element [0, ..., 0] of a float32 CPU tensor.</summary>
    public static nint DataPointer(torch.Tensor t)
    {
        if (t.device_type != DeviceType.CPU)
            throw new ArgumentException($"t is on {t.device_type}; this helper wraps CPU tensors (see docs/interop.md for CUDA).", nameof(t));
        if (t.dtype != torch.ScalarType.Float32)
            throw new ArgumentException($"t is {t.dtype}; expected Float32.", nameof(t));
        return t.storage<float>().data_ptr() + (nint)(t.storage_offset() * sizeof(float));
    }

    /// <summary>The (rows, cols, ld) of <paramref name="t"/> read as a matrix, or an ArgumentException when its layout
    /// cannot be wrapped in place.</summary>
    public static (long Rows, long Cols, long Ld) MatrixLayout(torch.Tensor t)
    {
        long[] shape = t.shape, stride = t.stride();
        int rank = shape.Length;
        if (rank == 0) throw new ArgumentException("t is a scalar; expected a tensor with at least one dimension.", nameof(t));
        long cols = shape[rank - 1], rows = 1;
        for (int d = 0; d < rank - 1; d++) rows *= shape[d];
        if (cols > 1 && stride[rank - 1] != 1)
            throw new ArgumentException($"t has strides [{string.Join(", ", stride)}]; expected the last stride to be 1 (call contiguous()).", nameof(t));
        long ld = cols, expected = -1;
        for (int d = rank - 2; d >= 0; d--)
        {
            if (shape[d] == 1) continue;
            if (expected < 0) ld = stride[d];
            else if (stride[d] != expected)
                throw new ArgumentException($"t has shape [{string.Join(", ", shape)}] and strides [{string.Join(", ", stride)}]: its leading dimensions do not flatten into rows (call contiguous()).", nameof(t));
            expected = stride[d] * shape[d];
        }
        if (rows > 1 && ld < cols)
            throw new ArgumentException($"t has row stride {ld} < {cols} columns; rows overlap.", nameof(t));
        return (rows, cols, rows > 1 ? ld : cols);
    }

    /// <summary>Wraps a float32 CPU tensor's memory as a matrix on the CPU <paramref name="device"/> without copying.
    /// The tensor must stay alive (and not be resized) until the work using the buffer has completed.</summary>
    public static MatrixView<float> Wrap(Device device, torch.Tensor t, out DeviceBuffer<float> buffer)
    {
        var (rows, cols, ld) = MatrixLayout(t);
        buffer = device.Wrap<float>(DataPointer(t), (rows - 1) * ld + cols);
        return buffer.AsMatrix(rows, cols, ld);
    }

    /// <summary>A weight source over a torch.nn.Linear weight (out × in, float32 CPU): Shardwise's W is in × out, so block
    /// (r, c) of W is read transposed straight from the torch tensor's memory, block by block.</summary>
    public static unsafe WeightSource LinearWeight(torch.Tensor weight)
    {
        var (outF, inF, ld) = MatrixLayout(weight);
        float* p = (float*)DataPointer(weight);
        return WeightSource.FromLoader(inF, outF, (r0, c0, rows, cols, dst) =>
        {
            for (long i = 0; i < rows; i++)
                for (long j = 0; j < cols; j++)
                    dst[(int)(i * cols + j)] = p[(c0 + j) * ld + r0 + i];
        });
    }

    /// <summary>A weight source over a 1-D torch bias (1 × N).</summary>
    public static unsafe WeightSource Bias(torch.Tensor bias)
    {
        var (_, n, _) = MatrixLayout(bias);
        float* p = (float*)DataPointer(bias);
        return WeightSource.FromLoader(1, n, (_, c0, _, cols, dst) => new ReadOnlySpan<float>(p + c0, (int)cols).CopyTo(dst));
    }

    /// <summary>A float32 tensor's values in row-major order, as a new array.</summary>
    public static float[] ToArray(torch.Tensor t)
    {
        using var c = t.contiguous();
        return c.data<float>().ToArray();
    }
}
