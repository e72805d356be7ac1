using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The precision policy of a layer (<see cref="ColumnParallelLinear"/>, <see cref="RowParallelLinear"/>,
/// <see cref="ParallelFeedForward"/>): the element type of the weights it holds (<see cref="Parameter"/>), of the GEMM
/// inputs — activations, and the weights as multiplied (<see cref="Compute"/>) —, of its output
/// (<see cref="Output"/>: f32 or the compute type) and of the weight and bias gradients its backward writes
/// (<see cref="GradientAccumulation"/>: f32 or the compute type). Every GEMM accumulates in fp32 and rounds once to its
/// output type (<c>sw_gemm_ex</c>); collectives of 16-bit data sum in fp32 in rank order and round once.
/// Types: <see cref="SwDtype.F32"/>, <see cref="SwDtype.F16"/>, <see cref="SwDtype.BF16"/>.
/// </summary>
public sealed record Precision
{
    /// <summary>A policy; throws <see cref="NotSupportedException"/> naming the combination when it is not one of the above.</summary>
    public Precision(SwDtype parameter, SwDtype compute, SwDtype output, SwDtype gradientAccumulation)
    {
        Parameter = parameter;
        Compute = compute;
        Output = output;
        GradientAccumulation = gradientAccumulation;
        foreach (var (t, name) in new[] { (parameter, "parameter"), (compute, "compute"), (output, "output"), (gradientAccumulation, "gradient accumulation") })
            if (t != SwDtype.F32 && t != SwDtype.F16 && t != SwDtype.BF16)
                throw new NotSupportedException($"Precision: the {name} type {Gemm.DtypeName(t)} is not supported; expected f32, f16 or bf16.");
        if (output != SwDtype.F32 && output != compute)
            throw new NotSupportedException($"Precision {this}: the output type must be f32 or the compute type {Gemm.DtypeName(compute)} (a GEMM's C is f32 or its input type).");
        if (gradientAccumulation != SwDtype.F32 && gradientAccumulation != compute)
            throw new NotSupportedException($"Precision {this}: the gradient accumulation type must be f32 or the compute type {Gemm.DtypeName(compute)}.");
    }

    /// <summary>Everything in float32: today's behaviour, the default of every layer.</summary>
    public static Precision Fp32 { get; } = new(SwDtype.F32, SwDtype.F32, SwDtype.F32, SwDtype.F32);
    /// <summary>bf16 weights, activations and output; weight and bias gradients accumulated in fp32.</summary>
    public static Precision Bf16 { get; } = new(SwDtype.BF16, SwDtype.BF16, SwDtype.BF16, SwDtype.F32);
    /// <summary>fp16 weights, activations and output; weight and bias gradients accumulated in fp32.</summary>
    public static Precision Fp16 { get; } = new(SwDtype.F16, SwDtype.F16, SwDtype.F16, SwDtype.F32);

    /// <summary>The element type of the weights (and biases) the layer holds.</summary>
    public SwDtype Parameter { get; }
    /// <summary>The element type of the GEMM inputs: activations, input gradients, and the weights as multiplied (converted
    /// from <see cref="Parameter"/> on each call when it differs).</summary>
    public SwDtype Compute { get; }
    /// <summary>The element type of the layer's output (f32 or <see cref="Compute"/>).</summary>
    public SwDtype Output { get; }
    /// <summary>The element type of the weight and bias gradients (f32 or <see cref="Compute"/>).</summary>
    public SwDtype GradientAccumulation { get; }

    /// <summary>"param bf16, compute bf16, output bf16, grad f32".</summary>
    public override string ToString() =>
        $"param {Gemm.DtypeName(Parameter)}, compute {Gemm.DtypeName(Compute)}, output {Gemm.DtypeName(Output)}, grad {Gemm.DtypeName(GradientAccumulation)}";

    /// <summary>The C ABI type of a managed element type (float, Half, BFloat16).</summary>
    internal static SwDtype Of<T>() where T : unmanaged => DeviceBuffer<T>.Dtype;

    /// <summary>Throws <see cref="ArgumentException"/> naming <paramref name="name"/>, its element type and the expected one
    /// unless <typeparamref name="T"/> is <paramref name="expected"/>.</summary>
    internal static void Require<T>(SwDtype expected, string role, string name) where T : unmanaged
    {
        if (Of<T>() != expected)
            throw new ArgumentException(
                $"{name} holds {typeof(T).Name} ({Gemm.DtypeName(Of<T>())}); this layer's {role} type is {Gemm.DtypeName(expected)} ({TypeName(expected)}).", name);
    }

    /// <summary>The managed type of a dtype ("float", "Half", "BFloat16").</summary>
    internal static string TypeName(SwDtype t) => t switch
    {
        SwDtype.F32 => "float",
        SwDtype.F16 => "System.Half",
        SwDtype.BF16 => "Shardwise.BFloat16",
        _ => t.ToString(),
    };
}
