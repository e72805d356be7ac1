using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>The row-wise kernels of the transformer block (sw_softmax, sw_norm and their backward) against float64
/// references on fresh random data; the references' backward formulas are themselves checked by finite differences of
/// the float64 forward.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class RowOpsTests(Backend backend) : BackendTest(backend)
{
    private const float Sentinel = 12345.5f;

    // Softmax of scale·x over the kept columns of each row (causal period T: row r keeps j <= r % T + cols − T).
    internal static double[] SoftmaxRef(float[] x, long rows, long cols, long ld, double scale, long period)
    {
        var y = new double[rows * cols];
        for (long r = 0; r < rows; r++)
        {
            long kept = period == 0 ? cols : Math.Min(cols, r % period + cols - period + 1);
            double mx = double.NegativeInfinity, sum = 0;
            for (long j = 0; j < kept; j++) mx = Math.Max(mx, scale * x[r * ld + j]);
            for (long j = 0; j < kept; j++) sum += Math.Exp(scale * x[r * ld + j] - mx);
            for (long j = 0; j < kept; j++) y[r * cols + j] = Math.Exp(scale * x[r * ld + j] - mx) / sum;
        }
        return y;
    }

    private static double[] SoftmaxBackwardRef(double[] y, float[] dy, long rows, long cols, long ld, double scale)
    {
        var dx = new double[rows * cols];
        for (long r = 0; r < rows; r++)
        {
            double dot = 0;
            for (long j = 0; j < cols; j++) dot += dy[r * ld + j] * y[r * cols + j];
            for (long j = 0; j < cols; j++) dx[r * cols + j] = scale * y[r * cols + j] * (dy[r * ld + j] - dot);
        }
        return dx;
    }

    private float[] WithLd(Random rng, long rows, long cols, long ld)
    {
        var a = new float[rows * ld];
        Array.Fill(a, Sentinel);
        for (long r = 0; r < rows; r++)
            for (long j = 0; j < cols; j++) a[r * ld + j] = (float)(rng.NextDouble() * 6 - 3);
        return a;
    }

    [TestCase(8, 6, 6, 0, false)]
    [TestCase(8, 6, 9, 4, false)]   // 2 heads of 4 queries over 6 keys (2 earlier keys visible), padded rows
    [TestCase(12, 5, 5, 5, true)]    // causal, square, in place
    [TestCase(3, 1, 1, 1, true)]     // one column
    [TestCase(40, 67, 70, 20, true)] // rows longer than a warp, not a multiple of it
    public void SoftmaxAndBackwardMatchFloat64(int rows, int cols, int ld, int period, bool inPlace)
    {
        var rng = NewRandom();
        const float scale = 0.7f;
        var x = WithLd(rng, rows, cols, ld);
        var dyHost = WithLd(rng, rows, cols, ld);
        long n = (long)rows * ld;
        using var xb = Upload(x);
        using var yb = inPlace ? null : Upload(Enumerable.Repeat(Sentinel, (int)n).ToArray());
        if (yb is not null) yb.CopyFrom(Enumerable.Range(0, (int)n).Select(i => i % ld < cols ? float.NaN : Sentinel).ToArray(), Str);
        var yv = (yb ?? xb).AsMatrix(rows, cols, ld);
        RowOps.Softmax(Str, xb.AsMatrix(rows, cols, ld), yv, scale, period);
        var y = (yb ?? xb).ToArray(Str);
        var want = SoftmaxRef(x, rows, cols, ld, scale, period);
        for (long r = 0; r < rows; r++)
        {
            for (long j = 0; j < cols; j++)
                Assert.That(y[r * ld + j], Is.EqualTo(want[r * cols + j]).Within(2e-6 + 1e-5 * want[r * cols + j]), $"y[{r},{j}]");
            for (long j = cols; j < ld; j++) Assert.That(y[r * ld + j], Is.EqualTo(Sentinel), $"padding y[{r},{j}] was written");
        }

        // Backward, against the float64 formula evaluated on the kernel's y (so only the backward's error counts).
        using var dyb = Upload(dyHost);
        using var dxb = inPlace ? null : Upload(Enumerable.Range(0, (int)n).Select(i => i % ld < cols ? float.NaN : Sentinel).ToArray());
        var dxv = (dxb ?? dyb).AsMatrix(rows, cols, ld);
        RowOps.SoftmaxBackward(Str, yv, dyb.AsMatrix(rows, cols, ld), dxv, scale);
        var dx = (dxb ?? dyb).ToArray(Str);
        var yd = new double[rows * cols];
        for (long r = 0; r < rows; r++) for (long j = 0; j < cols; j++) yd[r * cols + j] = y[r * ld + j];
        var dwant = SoftmaxBackwardRef(yd, dyHost, rows, cols, ld, scale);
        for (long r = 0; r < rows; r++)
        {
            double mag = 0;
            for (long j = 0; j < cols; j++) mag += Math.Abs(dyHost[r * ld + j] * yd[r * cols + j]);
            for (long j = 0; j < cols; j++)
                Assert.That(dx[r * ld + j], Is.EqualTo(dwant[r * cols + j]).Within(1e-6 * (mag + 1) * 4), $"dx[{r},{j}]");
            for (long j = cols; j < ld; j++) Assert.That(dx[r * ld + j], Is.EqualTo(Sentinel), $"padding dx[{r},{j}] was written");
        }
    }

    [Test]
    public void SoftmaxBackwardFormulaMatchesFiniteDifferences()
    {
        var rng = NewRandom();
        const long rows = 6, cols = 5;
        const double scale = 0.8;
        var x = RandomArray(rng, rows * cols, 2f);
        var g = RandomArray(rng, rows * cols);
        var e = RandomArray(rng, rows * cols);
        var y = SoftmaxRef(x, rows, cols, cols, scale, 3);
        var dx = SoftmaxBackwardRef(y, g, rows, cols, cols, scale);
        double L(double eps)
        {
            var xs = new double[rows * cols];
            double s = 0;
            for (long r = 0; r < rows; r++)
            {
                long kept = Math.Min(cols, r % 3 + cols - 3 + 1);
                double mx = double.NegativeInfinity, sum = 0;
                for (long j = 0; j < cols; j++) xs[r * cols + j] = scale * (x[r * cols + j] + eps * e[r * cols + j]);
                for (long j = 0; j < kept; j++) mx = Math.Max(mx, xs[r * cols + j]);
                for (long j = 0; j < kept; j++) sum += Math.Exp(xs[r * cols + j] - mx);
                for (long j = 0; j < kept; j++) s += g[r * cols + j] * Math.Exp(xs[r * cols + j] - mx) / sum;
            }
            return s;
        }
        double fd = (L(1e-5) - L(-1e-5)) / 2e-5;
        double analytic = dx.Select((v, i) => v * e[i]).Sum();
        Assert.That(analytic, Is.EqualTo(fd).Within(1e-7 * (1 + Math.Abs(fd))));
    }

    // LayerNorm / RMSNorm in float64: y, mean, rstd; and the backward formulas.
    internal static (double[] Y, double[] Mean, double[] Rstd) NormRef(SwNormKind kind, double[] x, float[]? gamma, float[]? beta, long rows, long cols, double eps)
    {
        var y = new double[rows * cols];
        var mean = new double[rows];
        var rstd = new double[rows];
        for (long r = 0; r < rows; r++)
        {
            double m = 0, v = 0;
            if (kind == SwNormKind.Layer) { for (long j = 0; j < cols; j++) m += x[r * cols + j]; m /= cols; }
            for (long j = 0; j < cols; j++) v += (x[r * cols + j] - m) * (x[r * cols + j] - m);
            double rs = 1 / Math.Sqrt(v / cols + eps);
            mean[r] = m;
            rstd[r] = rs;
            for (long j = 0; j < cols; j++)
                y[r * cols + j] = (x[r * cols + j] - m) * rs * (gamma?[j] ?? 1) + (beta?[j] ?? 0);
        }
        return (y, mean, rstd);
    }

    internal static (double[] Dx, double[] DGamma, double[] DBeta) NormBackwardRef(SwNormKind kind, double[] x, float[]? gamma, float[] dy,
        long rows, long cols, double eps)
    {
        var (_, mean, rstd) = NormRef(kind, x, gamma, null, rows, cols, eps);
        var dx = new double[rows * cols];
        var dg = new double[cols];
        var db = new double[cols];
        for (long r = 0; r < rows; r++)
        {
            double sg = 0, sgx = 0;
            for (long j = 0; j < cols; j++)
            {
                double gj = dy[r * cols + j] * (double)(gamma?[j] ?? 1), xh = (x[r * cols + j] - mean[r]) * rstd[r];
                sg += gj;
                sgx += gj * xh;
                dg[j] += dy[r * cols + j] * xh;
                db[j] += dy[r * cols + j];
            }
            double mg = kind == SwNormKind.Layer ? sg / cols : 0, mgx = sgx / cols;
            for (long j = 0; j < cols; j++)
            {
                double gj = dy[r * cols + j] * (double)(gamma?[j] ?? 1), xh = (x[r * cols + j] - mean[r]) * rstd[r];
                dx[r * cols + j] = rstd[r] * (gj - mg - xh * mgx);
            }
        }
        return (dx, dg, db);
    }

    [Test]
    public void NormBackwardFormulaMatchesFiniteDifferences([Values] SwNormKind kind)
    {
        var rng = NewRandom();
        const long rows = 4, cols = 7;
        const double eps = 1e-5;
        var x = RandomArray(rng, rows * cols, 2f).Select(v => (double)v).ToArray();
        var gamma = RandomArray(rng, cols);
        var beta = kind == SwNormKind.Layer ? RandomArray(rng, cols) : null;
        var g = RandomArray(rng, rows * cols);
        var ex = RandomArray(rng, rows * cols);
        var eg = RandomArray(rng, cols);
        var eb = RandomArray(rng, cols);
        var (dx, dgamma, dbeta) = NormBackwardRef(kind, x, gamma, g, rows, cols, eps);
        double L(double t)
        {
            var xs = x.Select((v, i) => v + t * ex[i]).ToArray();
            var (y, _, _) = NormRef(kind, xs, null, null, rows, cols, eps);
            double s = 0;
            for (long r = 0; r < rows; r++)
                for (long j = 0; j < cols; j++)
                    s += g[r * cols + j] * (y[r * cols + j] * (gamma[j] + t * eg[j]) + (beta is null ? 0 : beta[j] + t * eb[j]));
            return s;
        }
        double fd = (L(1e-6) - L(-1e-6)) / 2e-6;
        double analytic = dx.Select((v, i) => v * ex[i]).Sum() + dgamma.Select((v, i) => v * eg[i]).Sum()
            + (beta is null ? 0 : dbeta.Select((v, i) => v * eb[i]).Sum());
        Assert.That(analytic, Is.EqualTo(fd).Within(1e-6 * (1 + Math.Abs(fd))));
    }

    [TestCase(SwNormKind.Layer, 5, 37, true, true, false)]
    [TestCase(SwNormKind.Layer, 3, 1, false, false, true)]
    [TestCase(SwNormKind.Layer, 9, 300, true, false, true)]
    [TestCase(SwNormKind.Rms, 5, 37, true, false, false)]
    [TestCase(SwNormKind.Rms, 7, 260, false, false, true)]
    public void NormAndBackwardMatchFloat64(SwNormKind kind, int rows, int cols, bool withGamma, bool withBeta, bool inPlace)
    {
        var rng = NewRandom();
        const float eps = 1e-5f;
        var x = RandomArray(rng, rows * cols, 3f).Select(v => v + 0.5f).ToArray();
        var gamma = withGamma ? RandomArray(rng, cols) : null;
        var beta = withBeta ? RandomArray(rng, cols) : null;
        var g = RandomArray(rng, rows * cols);
        long n = (long)rows * cols;
        using var xb = Upload(x);
        using var yb = inPlace ? null : Poisoned(n);
        using var gb = gamma is null ? null : Upload(gamma);
        using var bb = beta is null ? null : Upload(beta);
        using var stats = Poisoned(2 * rows + 3);
        var yv = (yb ?? xb).AsMatrix(rows, cols);
        RowOps.Norm(Str, kind, xb.AsMatrix(rows, cols), yv, gb, bb, stats, eps, statsOffset: 3);
        var y = (yb ?? xb).ToArray(Str);
        var st = stats.ToArray(Str);
        var xd = x.Select(v => (double)v).ToArray();
        var (want, mean, rstd) = NormRef(kind, xd, gamma, beta, rows, cols, eps);
        for (long r = 0; r < rows; r++)
        {
            Assert.That(st[3 + 2 * r], Is.EqualTo(mean[r]).Within(1e-6 * (1 + Math.Abs(mean[r]))), $"mean[{r}]");
            Assert.That(st[3 + 2 * r + 1], Is.EqualTo(rstd[r]).Within(2e-6 * rstd[r]), $"rstd[{r}]");
            for (long j = 0; j < cols; j++)
                Assert.That(y[r * cols + j], Is.EqualTo(want[r * cols + j]).Within(3e-6 * (1 + Math.Abs(want[r * cols + j]))), $"y[{r},{j}]");
        }

        // Backward: dx (in place over dy or not), dgamma / dbeta overwritten, then accumulated.
        using var xin = Upload(x); // the forward's input (x was overwritten in place above)
        using var dyb = Upload(g);
        using var dxb = inPlace ? null : Poisoned(n);
        var prior = RandomArray(rng, 2 * cols);
        using var dparams = Poisoned(2 * cols);
        var dbv = kind == SwNormKind.Layer ? dparams : null;
        RowOps.NormBackward(Str, kind, xin.AsMatrix(rows, cols), gb, stats, dyb.AsMatrix(rows, cols), (dxb ?? dyb).AsMatrix(rows, cols),
            dparams, dbv, accumulate: false, statsOffset: 3, dBetaOffset: cols);
        var dx = (dxb ?? dyb).ToArray(Str);
        var dp = dparams.ToArray(Str);
        var (dxWant, dgWant, dbWant) = NormBackwardRef(kind, xd, gamma, g, rows, cols, eps);
        for (long j = 0; j < cols; j++)
        {
            double mg = 0, mb = 0;
            for (long r = 0; r < rows; r++) { mg += Math.Abs(g[r * cols + j] * (xd[r * cols + j] - mean[r]) * rstd[r]); mb += Math.Abs(g[r * cols + j]); }
            Assert.That(dp[j], Is.EqualTo(dgWant[j]).Within(1e-5 * (mg + 1e-3)), $"dgamma[{j}]");
            if (kind == SwNormKind.Layer) Assert.That(dp[cols + j], Is.EqualTo(dbWant[j]).Within(1e-5 * (mb + 1e-3)), $"dbeta[{j}]");
            else Assert.That(float.IsNaN(dp[cols + j]), $"dbeta room [{j}] was written for RMSNorm");
        }
        for (long r = 0; r < rows; r++)
        {
            double mag = 0;
            for (long j = 0; j < cols; j++) mag += Math.Abs(g[r * cols + j] * (gamma?[j] ?? 1));
            for (long j = 0; j < cols; j++)
                Assert.That(dx[r * cols + j], Is.EqualTo(dxWant[r * cols + j]).Within(4e-6 * rstd[r] * (mag / cols + 1) * 4), $"dx[{r},{j}]");
        }

        // accumulate: the parameter gradients are added to what was there.
        dparams.CopyFrom(prior, Str);
        dyb.CopyFrom(g, Str);
        using var dx2 = Poisoned(n);
        RowOps.NormBackward(Str, kind, xin.AsMatrix(rows, cols), gb, stats, dyb.AsMatrix(rows, cols), dx2.AsMatrix(rows, cols),
            dparams, dbv, accumulate: true, statsOffset: 3, dBetaOffset: cols);
        var acc = dparams.ToArray(Str);
        for (long j = 0; j < cols; j++)
        {
            Assert.That(acc[j], Is.EqualTo(prior[j] + dgWant[j]).Within(1e-4 * (1 + Math.Abs(dgWant[j]))), $"accumulated dgamma[{j}]");
            if (kind == SwNormKind.Layer)
                Assert.That(acc[cols + j], Is.EqualTo(prior[cols + j] + dbWant[j]).Within(1e-4 * (1 + Math.Abs(dbWant[j]))), $"accumulated dbeta[{j}]");
            else Assert.That(acc[cols + j], Is.EqualTo(prior[cols + j]), $"dbeta room [{j}] touched for RMSNorm");
        }
    }

    [Test]
    public void BadArgumentsAreRefusedNamingThem()
    {
        using var a = Poisoned(64);
        using var b = Poisoned(64);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => RowOps.Softmax(Str, a.AsMatrix(4, 4), b.AsMatrix(4, 4), 1f, 5))!;
        Assert.That(ex.ParamName, Is.EqualTo("causalPeriod"));
        Assert.That(Assert.Throws<ArgumentException>(() => RowOps.Softmax(Str, a.AsMatrix(4, 4), b.AsMatrix(4, 4, 5), 1f))!.ParamName, Is.EqualTo("y"));
        Assert.That(Assert.Throws<ArgumentException>(() => RowOps.Norm(Str, SwNormKind.Rms, a.AsMatrix(4, 4), b.AsMatrix(4, 4), null, b, null, 1e-5f))!.ParamName,
            Is.EqualTo("beta"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => RowOps.Norm(Str, SwNormKind.Layer, a.AsMatrix(4, 4), b.AsMatrix(4, 4), null, null, null, 0f))!.ParamName,
            Is.EqualTo("eps"));
        Assert.That(Assert.Throws<ArgumentException>(() => RowOps.Norm(Str, SwNormKind.Layer, a.AsMatrix(4, 4, 5), b.AsMatrix(4, 4), null, null, null, 1e-5f))!.ParamName,
            Is.EqualTo("x"));
        // Checked natively: overlapping x and y (not the same range), stats too short, an out-of-range kind.
        var native = Assert.Catch<ShardwiseException>(() => RowOps.Softmax(Str, a.AsMatrix(4, 4, 4, 0), a.AsMatrix(4, 4, 4, 2), 1f))!;
        Assert.That(native.Message, Does.Contain("overlap"));
        native = Assert.Catch<ShardwiseException>(() => RowOps.Norm(Str, SwNormKind.Layer, a.AsMatrix(4, 4), b.AsMatrix(4, 4), null, null, b, 1e-5f, statsOffset: 60))!;
        Assert.That(native.Message, Does.Contain("stats"));
        native = Assert.Catch<ShardwiseException>(() => RowOps.Norm(Str, (SwNormKind)7, a.AsMatrix(4, 4), b.AsMatrix(4, 4), null, null, null, 1e-5f))!;
        Assert.That(native.Message, Does.Contain("kind"));
        native = Assert.Catch<ShardwiseException>(() => RowOps.NormBackward(Str, SwNormKind.Layer, a.AsMatrix(4, 4), null, b, a.AsMatrix(4, 4),
            b.AsMatrix(4, 4, 4, 4), null, null))!;
        Assert.That(native.Message, Does.Contain("overlap"));
    }
}

/// <summary><see cref="ParallelNorm"/>: replicated LayerNorm / RMSNorm over p ranks, standard (every rank the same rows, no
/// communication) and sequence-parallel (each rank a block of rows, the parameter gradients all-reduced once).</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class ParallelNormTests(Backend backend) : BackendTest(backend)
{
    [TestCase(SwNormKind.Layer, 1, false)]
    [TestCase(SwNormKind.Layer, 3, false)]
    [TestCase(SwNormKind.Layer, 3, true)]
    [TestCase(SwNormKind.Rms, 4, true)]
    [TestCase(SwNormKind.Layer, 8, true)]
    public void ForwardAndGradientsMatchFloat64(SwNormKind kind, int p, bool sequenceParallel)
    {
        var rng = NewRandom();
        const long m = 11, h = 13;
        const float eps = 1e-5f;
        var x = RandomArray(rng, m * h, 2f);
        var gamma = RandomArray(rng, h);
        var beta = kind == SwNormKind.Layer ? RandomArray(rng, h) : null;
        var g = RandomArray(rng, m * h);
        var prior = RandomArray(rng, 2 * h);
        var xd = x.Select(v => (double)v).ToArray();
        var (yWant, _, _) = RowOpsTests.NormRef(kind, xd, gamma, beta, m, h, eps);
        var (dxWant, dgWant, dbWant) = RowOpsTests.NormBackwardRef(kind, xd, gamma, g, m, h, eps);
        var tokens = ShardingPlan.Even(m, p); // uneven token blocks for p = 3, 4, 8
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var ys = new float[p][];
        var dxs = new float[p][];
        var grads = new float[p][];
        var accumulated = new float[p][];
        var counts = new ulong[p];
        Spmd.Run(group, ctx =>
        {
            long r0 = sequenceParallel ? tokens.Offset(ctx.Rank) : 0, rows = sequenceParallel ? tokens.Size(ctx.Rank) : m;
            using var norm = new ParallelNorm(ctx, kind, h, WeightSource.FromArray(gamma, 1, h), beta is null ? null : WeightSource.FromArray(beta, 1, h), eps);
            using var ng = new NormGradients(ctx.Device, norm);
            using var xb = Upload(x[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var y = Poisoned(rows * h, ctx.Device, ctx.Stream);
            using var dy = Upload(g[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var dx = Poisoned(rows * h, ctx.Device, ctx.Stream);
            ng.Buffer.Fill(float.NaN, ctx.Stream);
            using var saved = norm.ForwardTraining(xb.AsMatrix(rows, h), y.AsMatrix(rows, h));
            ctx.Synchronize();
            ulong c0 = group.CollectiveCount(ctx.Rank);
            norm.Backward(xb.AsMatrix(rows, h), dy.AsMatrix(rows, h), dx.AsMatrix(rows, h), ng, saved, sequenceParallel);
            ctx.Synchronize();
            counts[ctx.Rank] = group.CollectiveCount(ctx.Rank) - c0;
            ys[ctx.Rank] = y.ToArray(ctx.Stream);
            dxs[ctx.Rank] = dx.ToArray(ctx.Stream);
            grads[ctx.Rank] = ng.Buffer.ToArray(ctx.Stream);
            ng.Buffer.CopyFrom(prior.AsSpan(0, (int)norm.ParameterCount), ctx.Stream);
            norm.Backward(xb.AsMatrix(rows, h), dy.AsMatrix(rows, h), dx.AsMatrix(rows, h), ng, saved, sequenceParallel, accumulate: true);
            accumulated[ctx.Rank] = ng.Buffer.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            long r0 = sequenceParallel ? tokens.Offset(r) : 0, rows = sequenceParallel ? tokens.Size(r) : m;
            Assert.That(counts[r], Is.EqualTo(sequenceParallel && p > 1 ? 1UL : 0UL), $"rank {r}: collectives in the backward");
            for (long i = 0; i < rows * h; i++)
            {
                Assert.That(ys[r][i], Is.EqualTo(yWant[r0 * h + i]).Within(1e-5 * (1 + Math.Abs(yWant[r0 * h + i]))), $"rank {r} y[{i}]");
                Assert.That(dxs[r][i], Is.EqualTo(dxWant[r0 * h + i]).Within(1e-4 * (1 + Math.Abs(dxWant[r0 * h + i]))), $"rank {r} dx[{i}]");
            }
            for (long j = 0; j < h; j++)
            {
                Assert.That(grads[r][j], Is.EqualTo(dgWant[j]).Within(1e-4 * (1 + Math.Abs(dgWant[j]))), $"rank {r} dgamma[{j}]");
                Assert.That(accumulated[r][j], Is.EqualTo(prior[j] + dgWant[j]).Within(1e-4 * (1 + Math.Abs(dgWant[j]))), $"rank {r} accumulated dgamma[{j}]");
                if (kind == SwNormKind.Layer)
                {
                    Assert.That(grads[r][h + j], Is.EqualTo(dbWant[j]).Within(1e-4 * (1 + Math.Abs(dbWant[j]))), $"rank {r} dbeta[{j}]");
                    Assert.That(accumulated[r][h + j], Is.EqualTo(prior[h + j] + dbWant[j]).Within(1e-4 * (1 + Math.Abs(dbWant[j]))), $"rank {r} accumulated dbeta[{j}]");
                }
            }
        }
    }

    [Test]
    public void BadArgumentsAreRefused()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelNorm(ctx, SwNormKind.Rms, 4, beta: WeightSource.FromArray(new float[4], 1, 4)))!.ParamName, Is.EqualTo("beta"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelNorm(ctx, SwNormKind.Layer, 4, WeightSource.FromArray(new float[5], 1, 5)))!.ParamName, Is.EqualTo("gamma"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ParallelNorm(ctx, SwNormKind.Layer, 4, eps: -1))!.ParamName, Is.EqualTo("eps"));
        using var norm = new ParallelNorm(ctx, SwNormKind.Layer, 4);
        using var x = Poisoned(12);
        Assert.That(Assert.Throws<ArgumentException>(() => norm.Forward(x.AsMatrix(4, 3), x.AsMatrix(4, 3)))!.ParamName, Is.EqualTo("x"));
    }
}
