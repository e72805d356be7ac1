using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// bf16 GEMM: <c>C[f32] = A[bf16] · B[bf16]</c> with fp32 accumulation, Shardwise's typed
/// <see cref="Gemm.Multiply{TIn, TOut}"/> (the device's default kernel) against oneDNN's bf16 matmul primitive on the
/// same values and thread count (the baseline: Ratio = time / oneDNN's, below 1 is faster than oneDNN), and Shardwise's
/// fp32 GEMM of the same shape (fp32 data) for the bf16-over-fp32 speed-up. Shapes: square 1024 and 2048 and a
/// LLaMA-7B MLP projection M × 4096 × 11008 at M = 32 (decode-like) and 512 (prefill-like). Every call is synchronous
/// (Shardwise's includes the stream synchronize, oneDNN's the stream wait). The main job measures the same pairs
/// interleaved round by round (its ratios are the ones the README quotes).
/// </summary>
[Config(typeof(GemmBenchConfig))]
public unsafe class Bf16GemmBenchmarks
{
    private Device? _device;
    private DeviceStream? _stream;
    private DeviceBuffer<BFloat16>? _a16, _b16;
    private DeviceBuffer<float>? _a32, _b32, _c;
    private MatrixView<BFloat16> _av16, _bv16;
    private MatrixView<float> _av32, _bv32, _cv;
    private ushort* _ha, _hb;
    private float* _hc;
    private OneDnn.Matmul? _dnnl;

    /// <summary>Square 1024 and 2048; M × 4096 × 11008 for M = 32 and 512.</summary>
    public static IEnumerable<GemmShape> Shapes =>
    [
        new(1024, 1024, 1024),
        new(2048, 2048, 2048),
        new(32, 4096, 11008),
        new(512, 4096, 11008),
    ];

    /// <summary>M×K×N.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    private (BFloat16[] A, BFloat16[] B) Data()
    {
        var a = TestData.Uniform((long)Shape.M * Shape.K, seed: 1).Select(x => (BFloat16)x).ToArray();
        var b = TestData.Uniform((long)Shape.K * Shape.N, seed: 2).Select(x => (BFloat16)x).ToArray();
        return (a, b);
    }

    [GlobalSetup(Target = nameof(OneDnnBf16))]
    public void SetupOneDnn()
    {
        if (!OneDnn.IsAvailable) throw new InvalidOperationException("oneDNN (libdnnl.so.2) is not installed: ./build.sh deps installs libdnnl-dev.");
        OneDnn.SetThreads(BenchSettings.Threads);
        Console.WriteLine($"// {OneDnn.Describe()}, {BenchSettings.Threads} threads");
        var (a, b) = Data();
        _ha = (ushort*)NativeMemory.AlignedAlloc((nuint)(a.LongLength * 2), 64);
        _hb = (ushort*)NativeMemory.AlignedAlloc((nuint)(b.LongLength * 2), 64);
        _hc = (float*)NativeMemory.AlignedAlloc((nuint)((long)Shape.M * Shape.N * 4), 64);
        MemoryMarshal.Cast<BFloat16, ushort>(a).CopyTo(new Span<ushort>(_ha, a.Length));
        MemoryMarshal.Cast<BFloat16, ushort>(b).CopyTo(new Span<ushort>(_hb, b.Length));
        _dnnl = new OneDnn.Matmul(Shape.M, Shape.K, Shape.N, OneDnn.BF16, OneDnn.BF16, OneDnn.F32, _ha, _hb, _hc);
        _dnnl.Execute(); // first call: JIT of the kernel and page faults, outside the measurement
    }

    [GlobalSetup(Target = nameof(ShardwiseBf16))]
    public void SetupBf16()
    {
        OpenDevice();
        var (a, b) = Data();
        _a16 = _device!.Allocate<BFloat16>(a.Length);
        _b16 = _device.Allocate<BFloat16>(b.Length);
        _a16.CopyFrom(a, _stream!);
        _b16.CopyFrom(b, _stream!);
        _av16 = _a16.AsMatrix(Shape.M, Shape.K);
        _bv16 = _b16.AsMatrix(Shape.K, Shape.N);
        ShardwiseBf16();
    }

    [GlobalSetup(Target = nameof(ShardwiseFp32))]
    public void SetupFp32()
    {
        OpenDevice();
        var a = TestData.Uniform((long)Shape.M * Shape.K, seed: 1);
        var b = TestData.Uniform((long)Shape.K * Shape.N, seed: 2);
        _a32 = _device!.Allocate<float>(a.Length);
        _b32 = _device.Allocate<float>(b.Length);
        _a32.CopyFrom(a, _stream!);
        _b32.CopyFrom(b, _stream!);
        _av32 = _a32.AsMatrix(Shape.M, Shape.K);
        _bv32 = _b32.AsMatrix(Shape.K, Shape.N);
        ShardwiseFp32();
    }

    private void OpenDevice()
    {
        _device = Device.Cpu(BenchSettings.Threads);
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads");
        _stream = _device.CreateStream();
        _c = _device.Allocate<float>((long)Shape.M * Shape.N);
        _cv = _c.AsMatrix(Shape.M, Shape.N);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _dnnl?.Dispose();
        _dnnl = null;
        _c?.Dispose();
        _a16?.Dispose();
        _b16?.Dispose();
        _a32?.Dispose();
        _b32?.Dispose();
        _stream?.Dispose();
        _device?.Dispose();
        NativeMemory.AlignedFree(_ha);
        NativeMemory.AlignedFree(_hb);
        NativeMemory.AlignedFree(_hc);
        _ha = _hb = null;
        _hc = null;
    }

    [Benchmark(Baseline = true, Description = "oneDNN bf16 matmul")]
    public void OneDnnBf16() => _dnnl!.Execute();

    [Benchmark(Description = "Shardwise bf16")]
    public void ShardwiseBf16()
    {
        Gemm.Multiply(_stream!, _av16, _bv16, _cv);
        _stream!.Synchronize();
    }

    [Benchmark(Description = "Shardwise fp32")]
    public void ShardwiseFp32()
    {
        Gemm.Multiply(_stream!, _av32, _bv32, _cv);
        _stream!.Synchronize();
    }
}
