using BenchmarkDotNet.Attributes;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// Sharded GEMM sweep: <see cref="ShardedGemm.Forward"/> over p = 1, 2, 4, 8 virtual ranks of the CPU device against
/// the unsharded <see cref="Gemm.Multiply"/> (+ stream synchronize) of the same total shape (the baseline: Ratio =
/// sharded time / unsharded time). The memory diagnoser shows the managed allocations per Forward call; the target
/// is 0 B in steady state.
/// </summary>
[Config(typeof(GemmBenchConfig))]
public class ShardedGemmBenchmarks
{
    private Device? _device;
    private DeviceStream? _stream;
    private ProcessGroup? _group;
    private ShardedGemm? _sharded;
    private DeviceBuffer<float>? _x, _w, _y;
    private MatrixView<float> _xv, _wv, _yv;

    /// <summary>A mid-size layer, a large square, an uneven N (1000), and the GEMV-like decode step.</summary>
    public static IEnumerable<GemmShape> Shapes =>
    [
        new(512, 1024, 1024),
        new(2048, 2048, 2048),
        new(2048, 4096, 1000),
        new(1, 4096, 4096),
    ];

    /// <summary>M×K×N of the whole (unsharded) product.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    [GlobalSetup(Target = nameof(Unsharded))] public void SetupUnsharded() => Setup(0);
    [GlobalSetup(Target = nameof(Sharded1))] public void SetupSharded1() => Setup(1);
    [GlobalSetup(Target = nameof(Sharded2))] public void SetupSharded2() => Setup(2);
    [GlobalSetup(Target = nameof(Sharded4))] public void SetupSharded4() => Setup(4);
    [GlobalSetup(Target = nameof(Sharded8))] public void SetupSharded8() => Setup(8);

    /// <summary>ranks = 0: the unsharded baseline (W loaded whole); otherwise a ShardedGemm over that many ranks.</summary>
    private void Setup(int ranks)
    {
        var (m, k, n) = (Shape.M, Shape.K, Shape.N);
        var w = TestData.Uniform((long)k * n, seed: 2);
        var source = WeightSource.FromArray(w, k, n);

        _device = Device.Cpu(BenchSettings.Threads);
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads, ranks {ranks}");
        _stream = _device.CreateStream();
        _x = _device.Allocate<float>((long)m * k);
        _y = _device.Allocate<float>((long)m * n);
        _x.CopyFrom(TestData.Uniform((long)m * k, seed: 1), _stream);
        _xv = _x.AsMatrix(m, k);
        _yv = _y.AsMatrix(m, n);
        if (ranks == 0)
        {
            _w = source.LoadBlock(_stream, 0, 0, k, n);
            _wv = _w!.AsMatrix(k, n);
        }
        else
        {
            _group = ProcessGroup.CreateLocal(_device, ranks);
            _sharded = new ShardedGemm(_group, source);
        }

        // First call outside the measurement (page faults of Y, the kernels' packing buffers, JIT of the path).
        if (ranks == 0) Unsharded();
        else _sharded!.Forward(_xv, _yv);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _sharded?.Dispose();
        _group?.Dispose();
        _w?.Dispose();
        _y?.Dispose();
        _x?.Dispose();
        _stream?.Dispose();
        _device?.Dispose();
        (_sharded, _group, _w, _y, _x, _stream, _device) = (null, null, null, null, null, null, null);
    }

    [Benchmark(Baseline = true, Description = "Gemm.Multiply (unsharded)")]
    public void Unsharded()
    {
        Gemm.Multiply(_stream!, _xv, _wv, _yv);
        _stream!.Synchronize();
    }

    [Benchmark(Description = "ShardedGemm p=1")]
    public void Sharded1() => _sharded!.Forward(_xv, _yv);

    [Benchmark(Description = "ShardedGemm p=2")]
    public void Sharded2() => _sharded!.Forward(_xv, _yv);

    [Benchmark(Description = "ShardedGemm p=4")]
    public void Sharded4() => _sharded!.Forward(_xv, _yv);

    [Benchmark(Description = "ShardedGemm p=8")]
    public void Sharded8() => _sharded!.Forward(_xv, _yv);
}
