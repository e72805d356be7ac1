using BenchmarkDotNet.Attributes;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// Collectives on the in-process group (p virtual ranks on the CPU device), with nccl-tests' algbw and busbw.
/// One host thread queues the collective on every rank's stream (they return at once), then waits for all ranks,
/// so the time is that of the whole collective. SizeMiB is nccl-tests' "size": the gathered output of an
/// all-gather, the input of a reduce-scatter, the buffer of an all-reduce (float32 elements).
/// </summary>
[Config(typeof(CollectiveBenchConfig))]
public class CollectiveBenchmarks
{
    private Device? _device;
    private ProcessGroup? _group;
    private DeviceBuffer<float>[] _send = [], _recv = [];

    /// <summary>Number of ranks.</summary>
    [Params(2, 4, 8)]
    public int Ranks { get; set; }

    /// <summary>nccl-tests size, MiB.</summary>
    [Params(1, 4, 16, 64)]
    public int SizeMiB { get; set; }

    private long SizeElements => (long)SizeMiB * (1 << 20) / sizeof(float);

    // Each setup ends with one call of the collective, outside the measurement.
    [GlobalSetup(Target = nameof(AllGather))]
    public void SetupAllGather()
    {
        Setup(SizeElements / Ranks, SizeElements);
        AllGather();
    }

    [GlobalSetup(Target = nameof(ReduceScatter))]
    public void SetupReduceScatter()
    {
        Setup(SizeElements, SizeElements / Ranks);
        ReduceScatter();
    }

    [GlobalSetup(Target = nameof(AllReduce))]
    public void SetupAllReduce()
    {
        Setup(SizeElements, SizeElements);
        AllReduce();
    }

    private void Setup(long sendElements, long recvElements)
    {
        _device = Device.Cpu(BenchSettings.Threads);
        _group = ProcessGroup.CreateLocal(_device, Ranks);
        _send = new DeviceBuffer<float>[Ranks];
        _recv = new DeviceBuffer<float>[Ranks];
        for (int r = 0; r < Ranks; r++)
        {
            _send[r] = _device.Allocate<float>(sendElements);
            _recv[r] = _device.Allocate<float>(recvElements);
            _send[r].Fill(r + 1, _group[r].Stream); // touches the pages, so the first timed run does not fault them in
            _recv[r].Fill(0, _group[r].Stream);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _group?.Dispose();
        foreach (var b in _send) b.Dispose();
        foreach (var b in _recv) b.Dispose();
        _device?.Dispose();
        (_group, _device, _send, _recv) = (null, null, [], []);
    }

    [Benchmark, Collective(CollectiveOp.AllGather)]
    public void AllGather()
    {
        var group = _group!;
        for (int r = 0; r < _send.Length; r++) group[r].AllGather(_send[r], _recv[r]);
        group.Synchronize();
    }

    [Benchmark, Collective(CollectiveOp.ReduceScatter)]
    public void ReduceScatter()
    {
        var group = _group!;
        for (int r = 0; r < _send.Length; r++) group[r].ReduceScatter(_send[r], _recv[r]);
        group.Synchronize();
    }

    [Benchmark, Collective(CollectiveOp.AllReduce)]
    public void AllReduce()
    {
        var group = _group!;
        for (int r = 0; r < _send.Length; r++) group[r].AllReduce(_send[r], _recv[r]);
        group.Synchronize();
    }
}
