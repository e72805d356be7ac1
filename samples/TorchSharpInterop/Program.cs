// Shardwise on TorchSharp tensors, without copies: a tensor-parallel FFN (GeLU(X·W1 + b1)·W2 + b2, one all-reduce)
// and a column-parallel linear layer over 4 virtual ranks of the CPU device, reading and writing the memory of
// contiguous float32 CPU torch tensors in place, checked against TorchSharp's own modules.
// The CUDA pattern (device pointers and the framework's stream) is in docs/interop.md.
using System.Numerics.Tensors;
using Shardwise.Parallel;
using Shardwise.Parallel.Interop;
using TorchSharp;
using TorchSharp.Modules;

unsafe
{
    try
    {
        torch.InitializeDeviceType(DeviceType.CPU);
    }
    catch (Exception e)
    {
        // TorchSharp-cpu 0.107.0's native shim needs libstdc++ with GLIBCXX_3.4.32 (GCC 13+); Debian 12 has GCC 12's.
        Console.Error.WriteLine($"TorchSharp cannot load here (it needs libstdc++ with GLIBCXX_3.4.32, GCC 13 or later): {e.Message}");
        return 2;
    }

    const long batch = 4, tokens = 32, h = 256, f = 1024, worldSize = 4;
    using var noGrad = torch.no_grad();
    torch.manual_seed(1234);
    using var up = torch.nn.Linear(h, f);
    using var down = torch.nn.Linear(f, h);
    using var gelu = torch.nn.GELU(GELU.Approximate.tanh, false); // Shardwise's GeLU is the tanh approximation
    using var x = torch.randn(new[] { batch, tokens, h });
    using var want = down.forward(gelu.forward(up.forward(x)));

    using var device = Device.Cpu();
    using var group = ProcessGroup.CreateLocal(device, (int)worldSize);
    var outputs = new torch.Tensor[worldSize];
    for (int r = 0; r < worldSize; r++) outputs[r] = torch.empty(new[] { batch, tokens, h });

    // Weights: torch.nn.Linear stores W as out × in; Shardwise's W is in × out. Each rank reads only its shard,
    // block by block, straight from the torch tensor's memory (a WeightSource over a loader).
    var w1 = LinearWeight(up.weight!.detach());
    var b1 = Vector(up.bias!.detach());
    var w2 = LinearWeight(down.weight!.detach());
    var b2 = Vector(down.bias!.detach());

    Spmd.Run(group, ctx =>
    {
        using var ffn = new ParallelFeedForward(ctx, w1, b1, w2, b2);
        var y = outputs[ctx.Rank];
        // Route 1: System.Numerics.Tensors spans over the torch memory (pointer + lengths + strides). The tensor
        // overloads wrap them in place when the layout allows (it does: contiguous) and return when y holds the result.
        ffn.Forward(ReadOnlySpanOf(x), SpanOf(y));
    });
    for (int r = 0; r < worldSize; r++)
        Console.WriteLine($"FFN rank {r}: max |shardwise - torch| = {(outputs[r] - want).abs().max().item<float>():E2}");

    // Route 2: wrap the raw pointer as a Shardwise buffer and use the MatrixView API (asynchronous: the tensors must
    // stay alive until the rank's stream has been synchronized).
    using var xFlat = x.reshape(batch * tokens, h);
    using var wantUp = gelu.forward(up.forward(xFlat));
    using var yUp = torch.empty(new[] { batch * tokens, f });
    Spmd.Run(group, ctx =>
    {
        using var layer = new ColumnParallelLinear(ctx, w1, b1, gatherOutput: true, epilogue: Epilogue.Gelu);
        using var xb = ctx.Device.Wrap<float>(DataPointer(xFlat), xFlat.numel());
        using var yb = ctx.Rank == 0 ? ctx.Device.Wrap<float>(DataPointer(yUp), yUp.numel()) : ctx.Device.Allocate<float>(yUp.numel());
        layer.Forward(xb.AsMatrix(batch * tokens, h), yb.AsMatrix(batch * tokens, f)); // all-gather: Y on every rank
        ctx.Synchronize();                                                              // before the wrappers go
    });
    Console.WriteLine($"ColumnParallelLinear + GeLU (rank 0's output in the torch tensor): max |shardwise - torch| = {(yUp - wantUp).abs().max().item<float>():E2}");
    foreach (var o in outputs) o.Dispose();
    return 0;

    // The address of element 0 of a contiguous float32 CPU tensor: the storage's data pointer plus the storage offset.
    static nint DataPointer(torch.Tensor t)
    {
        if (t.device_type != DeviceType.CPU || t.dtype != torch.ScalarType.Float32 || !t.is_contiguous())
            throw new ArgumentException("expected a contiguous float32 CPU tensor", nameof(t));
        return t.storage<float>().data_ptr() + (nint)(t.storage_offset() * sizeof(float));
    }

    static nint[] Lengths(torch.Tensor t) => t.shape.Select(l => (nint)l).ToArray();
    static nint[] Strides(torch.Tensor t) => t.stride().Select(s => (nint)s).ToArray();
    static ReadOnlyTensorSpan<float> ReadOnlySpanOf(torch.Tensor t) =>
        new((float*)DataPointer(t), (nint)t.numel(), Lengths(t), Strides(t));
    static TensorSpan<float> SpanOf(torch.Tensor t) => new((float*)DataPointer(t), (nint)t.numel(), Lengths(t), Strides(t));

    static WeightSource LinearWeight(torch.Tensor weight) // out × in torch weight as Shardwise's in × out W
    {
        long outF = weight.shape[0], inF = weight.shape[1];
        float* p = (float*)DataPointer(weight);
        return WeightSource.FromLoader(inF, outF, (r0, c0, rows, cols, dst) =>
        {
            for (long i = 0; i < rows; i++)
                for (long j = 0; j < cols; j++)
                    dst[(int)(i * cols + j)] = p[(c0 + j) * inF + r0 + i];
        });
    }

    static WeightSource Vector(torch.Tensor bias)
    {
        float* p = (float*)DataPointer(bias);
        return WeightSource.FromLoader(1, bias.shape[0], (_, c0, _, cols, dst) => new ReadOnlySpan<float>(p + c0, (int)cols).CopyTo(dst));
    }
}
