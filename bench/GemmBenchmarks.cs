using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// CPU GEMM sweep: one unsharded <c>C = A·B</c> per operation, Shardwise's micro-kernels (avx512, avx2 where the
/// processor has them) against OpenBLAS sgemm on the same data and thread count (the baseline: Ratio = Shardwise
/// time / OpenBLAS time, so below 1 is faster than OpenBLAS), and oneDNN's <c>dnnl_sgemm</c> beside it (skipped with a
/// message when libdnnl.so.2 is absent).
/// Shardwise's call includes the stream synchronize, so both sides are synchronous.
/// </summary>
[Config(typeof(GemmBenchConfig))]
public unsafe class GemmBenchmarks
{
    private Device? _device;
    private DeviceStream? _stream;
    private DeviceBuffer<float>? _a, _b, _c;
    private MatrixView<float> _av, _bv, _cv;
    private float* _ha, _hb, _hc;

    /// <summary>Square 256..2048, a rank's shard of a 2048-wide layer over 4 ranks, and a GEMV-like decode step.</summary>
    public static IEnumerable<GemmShape> Shapes =>
    [
        new(256, 256, 256),
        new(512, 512, 512),
        new(1024, 1024, 1024),
        new(2048, 2048, 2048),
        new(2048, 2048, 512),
        new(1, 4096, 4096),
    ];

    /// <summary>M×K×N.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    [GlobalSetup(Target = nameof(OpenBlasSgemm))]
    public void SetupOpenBlas()
    {
        Setup(kernel: null);
        OpenBlas.openblas_set_num_threads(BenchSettings.Threads);
        Console.WriteLine($"// OpenBLAS: {OpenBlas.Describe()}");
        OpenBlasSgemm(); // first call: OpenBLAS's thread start-up and the page faults of C, outside the measurement
    }

    [GlobalSetup(Target = nameof(OneDnnSgemm))]
    public void SetupOneDnn()
    {
        if (!OneDnn.IsAvailable) throw new InvalidOperationException("oneDNN (libdnnl.so.2) is not installed: ./build.sh deps installs libdnnl-dev.");
        Setup(kernel: null);
        OneDnn.SetThreads(BenchSettings.Threads);
        Console.WriteLine($"// {OneDnn.Describe()}, {BenchSettings.Threads} threads");
        OneDnnSgemm();
    }

    [GlobalSetup(Target = nameof(ShardwiseAvx512))]
    public void SetupAvx512() => Setup("avx512");

    [GlobalSetup(Target = nameof(ShardwiseAvx2))]
    public void SetupAvx2() => Setup("avx2");

    private void Setup(string? kernel)
    {
        var (m, k, n) = (Shape.M, Shape.K, Shape.N);
        var a = TestData.Uniform((long)m * k, seed: 1);
        var b = TestData.Uniform((long)k * n, seed: 2);

        if (kernel is null)
        {
            // OpenBLAS works on 64-byte aligned host memory holding the same values.
            _ha = Copy(a);
            _hb = Copy(b);
            _hc = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * n * sizeof(float)), 64);
            return;
        }

        _device = Device.Cpu(BenchSettings.Threads);
        _device.SetKernel(kernel);
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads");
        _stream = _device.CreateStream();
        _a = _device.Allocate<float>(a.Length);
        _b = _device.Allocate<float>(b.Length);
        _c = _device.Allocate<float>((long)m * n);
        _a.CopyFrom(a, _stream);
        _b.CopyFrom(b, _stream);
        _av = _a.AsMatrix(m, k);
        _bv = _b.AsMatrix(k, n);
        _cv = _c.AsMatrix(m, n);
        Gemm.Multiply(_stream, _av, _bv, _cv); // first call: packing buffers and page faults, outside the measurement
        _stream.Synchronize();
    }

    private static float* Copy(float[] source)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(source.LongLength * sizeof(float)), 64);
        source.AsSpan().CopyTo(new Span<float>(p, source.Length));
        return p;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _c?.Dispose();
        _b?.Dispose();
        _a?.Dispose();
        _stream?.Dispose();
        _device?.Dispose();
        NativeMemory.AlignedFree(_ha);
        NativeMemory.AlignedFree(_hb);
        NativeMemory.AlignedFree(_hc);
        _ha = _hb = _hc = null;
    }

    [Benchmark(Baseline = true, Description = "OpenBLAS sgemm")]
    public void OpenBlasSgemm() => OpenBlas.Sgemm(Shape.M, Shape.N, Shape.K, _ha, _hb, _hc);

    [Benchmark(Description = "oneDNN sgemm")]
    public void OneDnnSgemm() => OneDnn.Sgemm(Shape.M, Shape.N, Shape.K, _ha, _hb, _hc);

    [Benchmark(Description = "Shardwise avx512"), CpuKernel("avx512")]
    public void ShardwiseAvx512()
    {
        Gemm.Multiply(_stream!, _av, _bv, _cv);
        _stream!.Synchronize();
    }

    [Benchmark(Description = "Shardwise avx2"), CpuKernel("avx2")]
    public void ShardwiseAvx2()
    {
        Gemm.Multiply(_stream!, _av, _bv, _cv);
        _stream!.Synchronize();
    }
}
