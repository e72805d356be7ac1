using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// The layers every rank runs, on data made from a seed shared by all ranks: a column-parallel linear layer (bias,
/// gathered output), a row-parallel one (input split on entry, all-reduce) and the tensor-parallel FFN. Shapes are
/// uneven over 2, 3 and 4 ranks. The multi-process tests run it in separate processes and in one process (virtual
/// ranks) and compare the bits.
/// </summary>
public static class Scenario
{
    public const int M = 7, K = 24, N = 30, H = 20, F = 26;

    /// <summary>The inputs and weights, the same for every rank (never zero: uniform in [-1, 1) plus 1e-3).</summary>
    public sealed class Data
    {
        public Data(int seed)
        {
            var rng = new Random(seed);
            float[] R(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) + 1e-3f; return a; }
            X = R(M * K); Wc = R(K * N); Bc = R(N); Wr = R(K * N); Br = R(N);
            Xf = R(M * H); W1 = R(H * F); B1 = R(F); W2 = R(F * H); B2 = R(H);
        }
        public float[] X, Wc, Bc, Wr, Br, Xf, W1, B1, W2, B2;
    }

    /// <summary>Runs the three layers on rank <paramref name="ctx"/>; returns their outputs (each M × N or M × H, full on
    /// every rank). Outputs are poisoned (NaN) before each layer runs.</summary>
    public static (float[] Column, float[] Row, float[] Ffn) Run(RankContext ctx, Data d)
    {
        var dev = ctx.Device;
        var s = ctx.Stream;
        using var x = dev.Allocate<float>(M * K);
        using var xf = dev.Allocate<float>(M * H);
        using var y = dev.Allocate<float>(M * N);
        using var yf = dev.Allocate<float>(M * H);
        x.CopyFrom(d.X, s);
        xf.CopyFrom(d.Xf, s);

        using var col = new ColumnParallelLinear(ctx, WeightSource.FromArray(d.Wc, K, N), WeightSource.FromArray(d.Bc, 1, N), gatherOutput: true);
        y.Fill(float.NaN, s);
        col.Forward(x.AsMatrix(M, K), y.AsMatrix(M, N));
        var column = y.ToArray(s);

        using var row = new RowParallelLinear(ctx, WeightSource.FromArray(d.Wr, K, N), WeightSource.FromArray(d.Br, 1, N), inputIsParallel: false);
        y.Fill(float.NaN, s);
        row.Forward(x.AsMatrix(M, K), y.AsMatrix(M, N));
        var rowOut = y.ToArray(s);

        using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(d.W1, H, F), WeightSource.FromArray(d.B1, 1, F),
            WeightSource.FromArray(d.W2, F, H), WeightSource.FromArray(d.B2, 1, H));
        yf.Fill(float.NaN, s);
        ffn.Forward(xf.AsMatrix(M, H), yf.AsMatrix(M, H));
        var ffnOut = yf.ToArray(s);
        ctx.Synchronize();
        return (column, rowOut, ffnOut);
    }

    /// <summary>float64 references of the three outputs.</summary>
    public static (double[] Column, double[] Row, double[] Ffn) Reference(Data d)
    {
        double[] Linear(float[] x, float[] w, float[] b, int m, int k, int n)
        {
            var y = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double acc = b[j];
                    for (int p = 0; p < k; p++) acc += (double)x[i * k + p] * w[p * n + j];
                    y[i * n + j] = acc;
                }
            return y;
        }
        static double Gelu(double v) => 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
        var hidden = Linear(d.Xf, d.W1, d.B1, M, H, F).Select(v => (float)Gelu(v)).ToArray();
        // The second GEMM in float64 from the float64 hidden layer.
        var h64 = Linear(d.Xf, d.W1, d.B1, M, H, F).Select(Gelu).ToArray();
        var ffn = new double[M * H];
        for (int i = 0; i < M; i++)
            for (int j = 0; j < H; j++)
            {
                double acc = d.B2[j];
                for (int p = 0; p < F; p++) acc += h64[i * F + p] * d.W2[p * H + j];
                ffn[i * H + j] = acc;
            }
        _ = hidden;
        return (Linear(d.X, d.Wc, d.Bc, M, K, N), Linear(d.X, d.Wr, d.Br, M, K, N), ffn);
    }
}
