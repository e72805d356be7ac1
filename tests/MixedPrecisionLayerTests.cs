using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The layers under a 16-bit <see cref="Precision"/> (bf16 and fp16; output in the compute type or f32; fp32
/// gradients), forward and backward, uneven shards, p = 1..8, against float64 references computed from the ROUNDED
/// 16-bit inputs (the values the layer really multiplies). Outputs are poisoned (NaN) before each run.
/// Error bound of an element, stated once (c = 2 covers the constant of the dot-product bound):
///   |err| ≤ 2 · (K · u_acc · Σ|a·b| + u_out · |ref| + [partials rounded before a sum] u_out · Σ|a·b|)
/// with u_acc = 2^-24 (fp32 accumulation), u_out = 2^-8 for bf16, 2^-11 for fp16, 2^-24 for f32 outputs; Σ|a·b| includes
/// |bias|. The last term is there when each rank rounds its partial product to the output type before the fp32
/// all-reduce (row-parallel forward, the column-parallel dX).
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class MixedPrecisionLayerTests(Backend backend) : BackendTest(backend)
{
    private const double UAcc = 1.0 / (1 << 24);

    internal static double Unit(SwDtype t) => t switch
    {
        SwDtype.BF16 => 1.0 / 256,
        SwDtype.F16 => 1.0 / 2048,
        _ => UAcc,
    };

    internal static T ToT<T>(float v) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (T)(object)v;
        if (typeof(T) == typeof(Half)) return (T)(object)(Half)v;
        return (T)(object)(BFloat16)v;
    }

    internal static float FromT<T>(T v) where T : unmanaged => v switch
    {
        float f => f,
        Half h => (float)h,
        BFloat16 b => (float)b,
        _ => throw new NotSupportedException(),
    };

    /// <summary>v rounded to T (nearest even), back as float: the value the device holds.</summary>
    internal static float[] Rounded<T>(float[] v) where T : unmanaged => v.Select(x => FromT(ToT<T>(x))).ToArray();

    internal static DeviceBuffer<T> UploadAs<T>(float[] data, Device device, DeviceStream stream) where T : unmanaged
    {
        var b = device.Allocate<T>(Math.Max(1, data.Length));
        if (data.Length > 0) b.CopyFrom(data.Select(ToT<T>).ToArray(), stream);
        return b;
    }

    internal static DeviceBuffer<T> PoisonedAs<T>(long n, Device device, DeviceStream stream) where T : unmanaged
    {
        var b = device.Allocate<T>(Math.Max(1, n));
        b.Fill(ToT<T>(float.NaN), stream);
        return b;
    }

    internal static float[] Read<T>(DeviceBuffer<T> b, DeviceStream s) where T : unmanaged => b.ToArray(s).Select(FromT).ToArray();

    /// <summary>Asserts |got - want| ≤ 2·(k·u_acc·mag + u_out·|want| + partial·u_out·mag) for an m × n block of a
    /// row-major reference with n columns, read from got (ld, first column col0 of the reference).</summary>
    internal static void AssertWithin(float[] got, long ld, long gotOffset, double[] want, double[] mag, long m, long n, long col0, long cols,
        long k, double uOut, bool partials, string what)
    {
        int bad = 0;
        string first = "";
        for (long i = 0; i < m; i++)
            for (long j = 0; j < cols; j++)
            {
                double w = want[i * n + col0 + j], g = got[gotOffset + i * ld + j], mg = mag[i * n + col0 + j];
                double tol = 2 * (k * UAcc * mg + uOut * Math.Abs(w) + (partials ? uOut * mg : 0)) + 1e-30;
                if (!(Math.Abs(g - w) <= tol) && bad++ == 0) first = $"({i},{j}): got {g:R}, expected {w:R} ± {tol:E2}";
            }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {m * cols} elements wrong; first {first}");
    }

    private static Precision Policy(SwDtype t, bool f32Out) => new(t, t, f32Out ? SwDtype.F32 : t, SwDtype.F32);

    // ------------------------------------------------------------------ column-parallel

    [Test, Combinatorial]
    public void ColumnParallelForwardAndBackward([Values(1, 2, 3, 5, 8)] int p, [Values(SwDtype.BF16, SwDtype.F16)] SwDtype t,
        [Values(false, true)] bool f32Out, [Values(false, true)] bool gather)
    {
        if (t == SwDtype.BF16 && f32Out) Column<BFloat16, float>(p, gather, Policy(t, f32Out));
        else if (t == SwDtype.BF16) Column<BFloat16, BFloat16>(p, gather, Policy(t, f32Out));
        else if (f32Out) Column<Half, float>(p, gather, Policy(t, f32Out));
        else Column<Half, Half>(p, gather, Policy(t, f32Out));
    }

    /// <summary>Gradients accumulated in the compute type (bf16, fp16) instead of fp32.</summary>
    [TestCase(1, SwDtype.BF16)]
    [TestCase(4, SwDtype.BF16)]
    [TestCase(3, SwDtype.F16)]
    public void GradientsInTheComputeType(int p, SwDtype t)
    {
        var precision = new Precision(t, t, t, t);
        if (t == SwDtype.BF16) Column<BFloat16, BFloat16, BFloat16>(p, gather: false, precision);
        else Column<Half, Half, Half>(p, gather: true, precision);
    }

    /// <summary>fp32 weights multiplied as bf16 (the shard converted on each call, round to nearest even): the same
    /// references as bf16 weights.</summary>
    [TestCase(1)]
    [TestCase(3)]
    [TestCase(8)]
    public void Fp32WeightsMultipliedAsBf16(int p)
    {
        var precision = new Precision(SwDtype.F32, SwDtype.BF16, SwDtype.F32, SwDtype.F32);
        Column<BFloat16, float>(p, gather: true, precision);
        Row<BFloat16, float>(p, inputIsParallel: false, precision);
    }

    private void Column<T, TOut>(int p, bool gather, Precision precision) where T : unmanaged where TOut : unmanaged =>
        Column<T, TOut, float>(p, gather, precision);

    private void Column<T, TOut, TG>(int p, bool gather, Precision precision) where T : unmanaged where TOut : unmanaged where TG : unmanaged
    {
        var rng = NewRandom();
        const long m = 6, k = 37, n = 23; // n % p != 0 for most p; p = 8 leaves short shards
        var x = Rounded<T>(RandomArray(rng, m * k));
        var w = RandomArray(rng, k * n, 0.5f);
        var b = RandomArray(rng, n);
        var dy = Rounded<TOut>(RandomArray(rng, m * n));
        var dy2 = Rounded<TOut>(RandomArray(rng, m * n));
        var wr = Rounded<T>(w);
        var br = precision.Parameter == SwDtype.F32 ? b : Rounded<T>(b); // the bias as held (added in fp32)
        double uOut = Unit(precision.Output), uC = Unit(precision.Compute);
        var plan = ShardingPlan.Even(n, p);
        var ys = new float[p][];
        var dxs = new float[p][];
        var dws = new float[p][];
        var dbs = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(b, 1, n),
                gatherOutput: gather, precision: precision);
            long nr = layer.LocalOutFeatures, yCols = gather ? n : nr;
            using var dx = UploadAs<T>(x, ctx.Device, ctx.Stream);
            using var y = PoisonedAs<TOut>(m * yCols, ctx.Device, ctx.Stream);
            layer.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, Math.Max(yCols, 0), Math.Max(1, yCols)));
            ctx.Synchronize();
            ys[ctx.Rank] = Read(y, ctx.Stream);
            // Backward twice: micro-batch 1 overwrites, micro-batch 2 accumulates (beta = 1) into the fp32 gradients.
            var mine = gather ? dy : Slice(dy, m, n, plan.Offset(ctx.Rank), nr);
            var mine2 = gather ? dy2 : Slice(dy2, m, n, plan.Offset(ctx.Rank), nr);
            using var g1 = UploadAs<TOut>(mine, ctx.Device, ctx.Stream);
            using var g2 = UploadAs<TOut>(mine2, ctx.Device, ctx.Stream);
            using var dxOut = PoisonedAs<T>(m * k, ctx.Device, ctx.Stream);
            using var dW = PoisonedAs<TG>(k * nr, ctx.Device, ctx.Stream);
            using var dB = PoisonedAs<TG>(nr, ctx.Device, ctx.Stream);
            layer.Backward(dx.AsMatrix(m, k), g1.AsMatrix(m, yCols, Math.Max(1, yCols)), dxOut.AsMatrix(m, k), dW, dB);
            layer.Backward(dx.AsMatrix(m, k), g2.AsMatrix(m, yCols, Math.Max(1, yCols)), dxOut.AsMatrix(m, k), dW, dB, accumulate: true);
            ctx.Synchronize();
            dxs[ctx.Rank] = Read(dxOut, ctx.Stream);
            dws[ctx.Rank] = Read(dW, ctx.Stream);
            dbs[ctx.Rank] = Read(dB, ctx.Stream);
        });

        var (want, mag) = Reference.Gemm(x, k, false, wr, n, false, m, n, k, bias: br);
        // dX of micro-batch 2 (the last backward): Σ_r dY_r·W_rᵀ, each rank's partial rounded to the compute type.
        var dyc2 = Rounded<T>(dy2);
        var dyc1 = Rounded<T>(dy);
        var (dxWant, dxMag) = Reference.Gemm(dyc2, n, false, wr, n, true, m, k, n);
        // dW = Xᵀ·(dY1 + dY2) accumulated in fp32 over the two micro-batches; db = Σ rows (dY1 + dY2).
        var both = dyc1.Zip(dyc2, (a, c) => a + c).ToArray();
        var (dwWant, _) = Reference.Gemm(x, k, true, both, n, false, k, n, m);
        var (dw1, dw1Mag) = Reference.Gemm(x, k, true, dyc1, n, false, k, n, m);
        var (dw2, dw2Mag) = Reference.Gemm(x, k, true, dyc2, n, false, k, n, m);
        var dwMag = dw1Mag.Zip(dw2Mag, (a, c) => a + c).ToArray();
        var ones = Enumerable.Repeat(1f, (int)m).ToArray();
        var (dbWant, _) = Reference.Gemm(ones, m, false, both, n, false, 1, n, m);
        var (_, db1Mag) = Reference.Gemm(ones, m, false, dyc1, n, false, 1, n, m);
        var (_, db2Mag) = Reference.Gemm(ones, m, false, dyc2, n, false, 1, n, m);
        var dbMag = db1Mag.Zip(db2Mag, (a, c) => a + c).ToArray();
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), nr = plan.Size(r);
            if (gather) AssertWithin(ys[r], n, 0, want, mag, m, n, 0, n, k, uOut, false, $"rank {r} Y (gathered)");
            else if (nr > 0) AssertWithin(ys[r], nr, 0, want, mag, m, n, off, nr, k, uOut, false, $"rank {r} Y_r");
            AssertWithin(dxs[r], k, 0, dxWant, dxMag, m, k, 0, k, n, uC, true, $"rank {r} dX");
            if (nr == 0) continue;
            // Two GEMMs, the second adding (beta = 1, in fp32) to the first's result rounded to the gradient type: the
            // bound of each plus the first rounding (≤ u_grad·Σ|terms| of the first, within the u_grad·mag term).
            double uG = Unit(precision.GradientAccumulation);
            bool rounded = precision.GradientAccumulation != SwDtype.F32;
            AssertWithin(dws[r], nr, 0, dwWant, dwMag, k, n, off, nr, m + 1, uG, rounded, $"rank {r} dW_r (accumulated)");
            AssertWithin(dbs[r], nr, 0, dbWant, dbMag, 1, n, off, nr, m + 1, uG, rounded, $"rank {r} db_r (accumulated)");
        }
    }

    private static float[] Slice(float[] a, long rows, long cols, long col0, long count)
    {
        var s = new float[rows * count];
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < count; j++) s[i * count + j] = a[i * cols + col0 + j];
        return s;
    }

    // ------------------------------------------------------------------ row-parallel

    [Test, Combinatorial]
    public void RowParallelForwardAndBackward([Values(1, 2, 4, 7, 8)] int p, [Values(SwDtype.BF16, SwDtype.F16)] SwDtype t,
        [Values(false, true)] bool f32Out, [Values(false, true)] bool inputIsParallel)
    {
        if (t == SwDtype.BF16 && f32Out) Row<BFloat16, float>(p, inputIsParallel, Policy(t, f32Out));
        else if (t == SwDtype.BF16) Row<BFloat16, BFloat16>(p, inputIsParallel, Policy(t, f32Out));
        else if (f32Out) Row<Half, float>(p, inputIsParallel, Policy(t, f32Out));
        else Row<Half, Half>(p, inputIsParallel, Policy(t, f32Out));
    }

    private void Row<T, TOut>(int p, bool inputIsParallel, Precision precision) where T : unmanaged where TOut : unmanaged
    {
        var rng = NewRandom();
        const long m = 5, k = 29, n = 13; // k % p != 0: uneven rows; p = 8 > k / 4
        var x = Rounded<T>(RandomArray(rng, m * k));
        var w = RandomArray(rng, k * n, 0.5f);
        var b = RandomArray(rng, n);
        var dy = Rounded<TOut>(RandomArray(rng, m * n));
        var wr = Rounded<T>(w);
        var br = precision.Parameter == SwDtype.F32 ? b : Rounded<T>(b); // the bias as held (added in fp32)
        double uOut = Unit(precision.Output), uC = Unit(precision.Compute);
        var plan = ShardingPlan.Even(k, p);
        var ys = new float[p][];
        var dxs = new float[p][];
        var dws = new float[p][];
        float[] db = [];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(b, 1, n),
                inputIsParallel: inputIsParallel, precision: precision);
            long kr = layer.LocalInFeatures, cols = inputIsParallel ? kr : k;
            var xin = inputIsParallel ? Slice(x, m, k, layer.LocalInOffset, kr) : x;
            using var dx = UploadAs<T>(xin, ctx.Device, ctx.Stream);
            using var y = PoisonedAs<TOut>(m * n, ctx.Device, ctx.Stream);
            var xv = dx.AsMatrix(m, cols, Math.Max(1, cols));
            layer.Forward(xv, y.AsMatrix(m, n));
            ctx.Synchronize();
            ys[ctx.Rank] = Read(y, ctx.Stream);
            using var g = UploadAs<TOut>(dy, ctx.Device, ctx.Stream);
            using var dxOut = PoisonedAs<T>(m * cols, ctx.Device, ctx.Stream);
            using var dW = ctx.Device.Allocate<float>(Math.Max(1, kr * n));
            using var dB = ctx.Device.Allocate<float>(n);
            dW.Fill(float.NaN, ctx.Stream);
            dB.Fill(float.NaN, ctx.Stream);
            layer.Backward(xv, g.AsMatrix(m, n), dxOut.AsMatrix(m, cols, Math.Max(1, cols)), dW, ctx.Rank == 0 ? dB : null);
            ctx.Synchronize();
            dxs[ctx.Rank] = Read(dxOut, ctx.Stream);
            dws[ctx.Rank] = dW.ToArray(ctx.Stream);
            if (ctx.Rank == 0) db = dB.ToArray(ctx.Stream);
        });

        var (want, mag) = Reference.Gemm(x, k, false, wr, n, false, m, n, k, bias: br);
        var dyc = Rounded<T>(dy);
        var (dxWant, dxMag) = Reference.Gemm(dyc, n, false, wr, n, true, m, k, n);
        var (dwWant, dwMag) = Reference.Gemm(x, k, true, dyc, n, false, k, n, m);
        var (dbWant, dbMag) = Reference.Gemm(Enumerable.Repeat(1f, (int)m).ToArray(), m, false, dyc, n, false, 1, n, m);
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), kr = plan.Size(r);
            AssertWithin(ys[r], n, 0, want, mag, m, n, 0, n, k, uOut, true, $"rank {r} Y");
            if (inputIsParallel)
            {
                if (kr > 0) AssertWithin(dxs[r], kr, 0, dxWant, dxMag, m, k, off, kr, n, uC, false, $"rank {r} dX_r");
            }
            else AssertWithin(dxs[r], k, 0, dxWant, dxMag, m, k, 0, k, n, uC, false, $"rank {r} dX (gathered)");
            if (kr > 0)
            {
                // dW_r is rows [off, off + kr) of the k × n reference.
                var sub = new float[kr * n];
                Array.Copy(dws[r], sub, kr * n);
                AssertWithin(sub, n, 0, dwWant[(int)(off * n)..], dwMag[(int)(off * n)..], kr, n, 0, n, m, UAcc, false, $"rank {r} dW_r");
            }
        }
        AssertWithin(db, n, 0, dbWant, dbMag, 1, n, 0, n, m, UAcc, false, "db (rank 0)");
        for (int r = 1; r < p; r++)
            Reference.AssertBitwise(ys[r], ys[0], $"rank {r} Y equals rank 0's bit for bit (fp32 sums in rank order, one rounding)");
    }

    // ------------------------------------------------------------------ FFN forward

    [TestCase(1, SwDtype.BF16)]
    [TestCase(3, SwDtype.BF16)]
    [TestCase(8, SwDtype.BF16)]
    [TestCase(2, SwDtype.F16)]
    [TestCase(5, SwDtype.F16)]
    public void FeedForwardForwardInferenceAndTraining(int p, SwDtype t)
    {
        if (t == SwDtype.BF16) Ffn<BFloat16>(p, Policy(t, false));
        else Ffn<Half>(p, Policy(t, false));
    }

    private void Ffn<T>(int p, Precision precision) where T : unmanaged
    {
        var rng = NewRandom();
        const long m = 4, h = 16, f = 27;
        var x = Rounded<T>(RandomArray(rng, m * h));
        var w1 = RandomArray(rng, h * f, 0.5f);
        var b1 = RandomArray(rng, f);
        var w2 = RandomArray(rng, f * h, 0.5f);
        var b2 = RandomArray(rng, h);
        var inference = new float[p][];
        var training = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h), precision: precision);
            using var dx = UploadAs<T>(x, ctx.Device, ctx.Stream);
            using var y = PoisonedAs<T>(m * h, ctx.Device, ctx.Stream);
            using var y2 = PoisonedAs<T>(m * h, ctx.Device, ctx.Stream);
            ffn.Forward(dx.AsMatrix(m, h), y.AsMatrix(m, h));
            using var saved = ffn.ForwardTraining(dx.AsMatrix(m, h), y2.AsMatrix(m, h));
            ctx.Synchronize();
            inference[ctx.Rank] = Read(y, ctx.Stream);
            training[ctx.Rank] = Read(y2, ctx.Stream);
        });
        // Reference from the rounded inputs: Z = X·W1 + b1 (fp32 accumulation), H = GeLU(Z) rounded to T; Y = H·W2 + b2
        // with the partials rounded to T before the fp32 sum. H's error (fp32 accumulation of Z carried through
        // |GeLU'| < 1.13, plus its rounding u·|H|) is carried through |W2| into the bound of Y.
        double u = Unit(precision.Compute);
        var w1r = Rounded<T>(w1);
        var w2r = Rounded<T>(w2);
        var b1r = Rounded<T>(b1);
        var b2r = Rounded<T>(b2);
        var (z, zMag) = Reference.Gemm(x, h, false, w1r, f, false, m, f, h, bias: b1r);
        var want = new double[m * h];
        var tol = new double[m * h];
        for (long i = 0; i < m; i++)
            for (long j = 0; j < h; j++)
            {
                double s = b2r[j], mag = Math.Abs(b2r[j]), carried = 0;
                for (long q = 0; q < f; q++)
                {
                    double hv = Reference.Gelu(z[i * f + q]);
                    double dh = 2 * (1.13 * h * UAcc * zMag[i * f + q] + u * Math.Abs(hv)) + 1e-7 * Math.Abs(hv); // + GeLU's fp32 tanh
                    s += hv * w2r[q * h + j];
                    mag += Math.Abs((Math.Abs(hv) + dh) * w2r[q * h + j]);
                    carried += dh * Math.Abs(w2r[q * h + j]);
                }
                want[i * h + j] = s;
                tol[i * h + j] = carried + 2 * (f * UAcc * mag + u * Math.Abs(s) + u * mag);
            }
        for (int r = 0; r < p; r++)
            foreach (var (got, what) in new[] { (inference[r], "inference"), (training[r], "training") })
            {
                int bad = 0;
                string first = "";
                for (int e = 0; e < want.Length; e++)
                    if (!(Math.Abs(got[e] - want[e]) <= tol[e]) && bad++ == 0) first = $"[{e}]: got {got[e]:R}, expected {want[e]:R} ± {tol[e]:E2}";
                Assert.That(bad, Is.Zero, $"rank {r} {what} Y: {bad} wrong; first {first}");
            }
    }

    // ------------------------------------------------------------------ allocation

    [Test]
    public void A16BitLayerStepAllocatesNothingManagedOnceWarm()
    {
        const long m = 4, h = 8, f = 12;
        var w1 = new float[h * f];
        var w2 = new float[f * h];
        long allocated = -1;
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), null, WeightSource.FromArray(w2, f, h), null,
                precision: new Precision(SwDtype.F32, SwDtype.BF16, SwDtype.F32, SwDtype.F32)); // converts on each call too
            using var x = ctx.Device.Allocate<BFloat16>(m * h);
            using var y = ctx.Device.Allocate<float>(m * h);
            x.Clear(ctx.Stream);
            for (int i = 0; i < 3; i++) ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h)); // warm: scratch buffers grown
            ctx.Synchronize();
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 20; i++) ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h));
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });
        Assert.That(allocated, Is.Zero, "bytes allocated by 20 forwards of a bf16 FFN (weights converted, one all-reduce each)");
    }

    // ------------------------------------------------------------------ bad input

    [Test]
    public void AViewOfTheWrongElementTypeIsRefusedNamingTheExpectedType()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var w = new float[4 * 3];
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, 4, 3), precision: Precision.Bf16);
            using var xf = ctx.Device.Allocate<float>(8);
            using var xh = ctx.Device.Allocate<Half>(8);
            using var yb = ctx.Device.Allocate<BFloat16>(6);
            using var yf = ctx.Device.Allocate<float>(6);
            var e = Assert.Throws<ArgumentException>(() => layer.Forward(xf.AsMatrix(2, 4), yf.AsMatrix(2, 3)))!;
            Assert.That(e.ParamName, Is.EqualTo("x"));
            Assert.That(e.Message, Does.Contain("bf16").And.Contain("Shardwise.BFloat16").And.Contain("Single"));
            e = Assert.Throws<ArgumentException>(() => layer.Forward(xh.AsMatrix(2, 4), yb.AsMatrix(2, 3)))!;
            Assert.That(e.Message, Does.Contain("f16").And.Contain("bf16"));
            e = Assert.Throws<ArgumentException>(() => layer.Forward(yb.AsMatrix(2, 3).Buffer.AsMatrix(1, 4), yf.AsMatrix(1, 3)))!;
            Assert.That(e.ParamName, Is.EqualTo("y"));
            var ns = Assert.Throws<NotSupportedException>(() => _ = layer.Weight)!;
            Assert.That(ns.Message, Does.Contain("WeightAs<Shardwise.BFloat16>"));
            Assert.That(layer.WeightAs<BFloat16>(), Is.Not.Null);
        });
        Assert.Throws<NotSupportedException>(() => _ = new Precision(SwDtype.BF16, SwDtype.BF16, SwDtype.F16, SwDtype.F32));
        Assert.Throws<NotSupportedException>(() => _ = new Precision(SwDtype.BF16, SwDtype.BF16, SwDtype.BF16, SwDtype.F16));
        var ex = Assert.Throws<NotSupportedException>(() => _ = new Precision(SwDtype.I32, SwDtype.BF16, SwDtype.BF16, SwDtype.F32))!;
        Assert.That(ex.Message, Does.Contain("i32"));
    }
}
