// A column-parallel sharded GEMM, Y = X · W (+ b), on 2, 3 and 4 virtual ranks of the CPU device, checked element by
// element against a float64 reference computed here on fresh random data. The outputs are poisoned with NaN before
// every run, so an element that no rank wrote fails the check.
//
// PackageSample runs this file against the Shardwise NuGet packages; AotSample compiles the same file into a
// NativeAOT executable. Usage: [seed]. Exit code: 0 when every result matches, 1 on a mismatch, 2 on an error.
using Shardwise.Bindings;
using Shardwise.Parallel;

const long M = 37, K = 129, N = 203; // 203 columns split unevenly over 2, 3 and 4 ranks (102+101, 68+68+67, 51+51+51+50)

try
{
    int seed = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : Random.Shared.Next();
    var rng = new Random(seed);
    float[] x = RandomMatrix(rng, M * K), w = RandomMatrix(rng, K * N), b = RandomMatrix(rng, N);

    using var device = Device.Cpu(2);
    Console.WriteLine($"{AppDomain.CurrentDomain.FriendlyName}: Shardwise.Parallel {typeof(ShardedGemm).Assembly.GetName().Version}, " +
                      $"libshardwise {Native.VersionString} from {NativeLibraryLoader.LoadedFrom}");
    Console.WriteLine($"device: {device.Name}, kernel {device.Kernel}; M x K x N = {M} x {K} x {N}; seed {seed}");
    int failures = CheckNativeLibraryLocation();

    // 1. ShardedGemm: one host thread drives every rank; rank r writes Y[:, cols_r] = X · W[:, cols_r] in place.
    var (reference, magnitude) = Reference(x, w, bias: null);
    foreach (int ranks in new[] { 2, 3, 4 })
    {
        using var group = ProcessGroup.CreateLocal(device, ranks);
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, K, N));
        using var stream = device.CreateStream();
        using var xd = device.Allocate<float>(M * K);
        using var yd = device.Allocate<float>(M * N);
        xd.CopyFrom(x, stream);
        yd.Fill(float.NaN, stream); // poison
        gemm.Forward(xd.AsMatrix(M, K), yd.AsMatrix(M, N));
        failures += Compare($"ShardedGemm, {ranks} ranks ({gemm.Plan})", yd.ToArray(stream), reference, magnitude);
    }

    // 2. ColumnParallelLinear with a bias, SPMD (one host thread per rank): every rank computes its M x n_r block and
    //    an all-gather of the column blocks gives every rank the whole Y.
    var (referenceB, magnitudeB) = Reference(x, w, b);
    const int spmdRanks = 3;
    var results = new float[spmdRanks][];
    using (var group = ProcessGroup.CreateLocal(device, spmdRanks, TimeSpan.FromMinutes(2)))
    {
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, K, N), WeightSource.FromArray(b, 1, N),
                                                       gatherOutput: true);
            using var xr = ctx.Device.Allocate<float>(M * K);
            using var yr = ctx.Device.Allocate<float>(M * N);
            xr.CopyFrom(x, ctx.Stream);
            yr.Fill(float.NaN, ctx.Stream); // poison
            layer.Forward(xr.AsMatrix(M, K), yr.AsMatrix(M, N));
            ctx.Synchronize();
            results[ctx.Rank] = yr.ToArray(ctx.Stream);
        });
    }
    for (int r = 0; r < spmdRanks; r++)
        failures += Compare($"ColumnParallelLinear + bias, all-gathered, rank {r} of {spmdRanks}", results[r], referenceB, magnitudeB);

    Console.WriteLine(failures == 0 ? "OK: every result matches the float64 reference" : $"FAILED: {failures} check(s) failed");
    return failures == 0 ? 0 : 1;
}
catch (Exception e)
{
    Console.Error.WriteLine($"error: {e}");
    return 2;
}

// Uniform in [-1, 1): never all zeros, so a GEMM that did nothing cannot pass.
static float[] RandomMatrix(Random rng, long length)
{
    var a = new float[length];
    for (long i = 0; i < length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
    return a;
}

// Y[i, j] = b[j] + Σ_k X[i, k] · W[k, j] in float64, and Σ |terms| (the scale of the rounding error).
static (double[] Value, double[] Magnitude) Reference(float[] x, float[] w, float[]? bias)
{
    var value = new double[M * N];
    var magnitude = new double[M * N];
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++)
        {
            double s = bias is null ? 0 : bias[j], mag = Math.Abs(s);
            for (long k = 0; k < K; k++)
            {
                double t = (double)x[i * K + k] * w[k * N + j];
                s += t;
                mag += Math.Abs(t);
            }
            value[i * N + j] = s;
            magnitude[i * N + j] = mag;
        }
    return (value, magnitude);
}

// A float32 sum of K + 1 products deviates from the exact sum by at most about (K + 1) · 2^-24 · Σ |terms|
// (the worst case of recursive summation; fused multiply-adds only make it smaller), plus the final rounding.
static int Compare(string what, float[] actual, double[] expected, double[] magnitude)
{
    int bad = 0;
    string first = "";
    double worst = 0;
    for (long i = 0; i < expected.Length; i++)
    {
        double tol = (K + 3) * Math.ScaleB(1.0, -24) * magnitude[i];
        double err = Math.Abs(actual[i] - expected[i]);
        if (!(err <= tol)) // NaN (an unwritten element) fails here
        {
            if (bad++ == 0) first = $"; first at ({i / N}, {i % N}): got {actual[i]:R}, expected {expected[i]:R} ± {tol:E2}";
        }
        else worst = Math.Max(worst, err / Math.Max(tol, double.Epsilon));
    }
    Console.WriteLine(bad == 0
        ? $"  ok   {what}: {expected.Length} elements, largest error {worst:P1} of the bound"
        : $"  FAIL {what}: {bad} of {expected.Length} elements wrong{first}");
    return bad == 0 ? 0 : 1;
}

// The native library must be the one that came with the application (the package's runtimes/<rid>/native folder,
// or the publish folder of a NativeAOT build), not one found elsewhere on the machine.
static int CheckNativeLibraryLocation()
{
    string? from = NativeLibraryLoader.LoadedFrom;
    if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(NativeLibraryLoader.PathVariable)))
    {
        Console.WriteLine($"  note {NativeLibraryLoader.PathVariable} is set: the library's location is not checked");
        return 0;
    }
    string app = Path.GetFullPath(AppContext.BaseDirectory);
    if (from is not null && Path.IsPathRooted(from) && Path.GetFullPath(from).StartsWith(app, StringComparison.Ordinal))
    {
        Console.WriteLine($"  ok   native library loaded from the application: {Path.GetRelativePath(app, from)}");
        return 0;
    }
    Console.WriteLine($"  FAIL native library loaded from '{from}', not from the application folder {app}");
    return 1;
}
