using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Backward passes of the column- and row-parallel layers: against float64 references, against finite
/// differences of the forward pass, with gradient accumulation, for even and uneven splits.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class BackwardTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (int p in new[] { 1, 2, 3, 5, 8 })
            foreach (bool flag in new[] { true, false })
                yield return new TestCaseData(p, flag).SetArgDisplayNames($"p={p}", flag ? "variant A" : "variant B");
    }

    private static double[] Dot(float[] a, long rows, long inner, float[] b, long cols, bool transA, bool transB, out double[] mag)
    {
        // C[rows x cols] = op(A) op(B) in float64; A is rows x inner (or inner x rows if transA), B is inner x cols (or cols x inner).
        var (v, m) = Reference.Gemm(a, transA ? rows : inner, transA, b, transB ? inner : cols, transB, rows, cols, inner);
        mag = m;
        return v;
    }

    /// <summary>Column-parallel: dX (all-reduced) = dY·Wᵀ, dW_r = Xᵀ·dY_r, db_r = Σ dY_r; accumulation adds; the
    /// directional derivative of L = Σ Y∘G along a random E matches Σ_r ⟨dW_r, E_r⟩.</summary>
    [TestCaseSource(nameof(Cases))]
    public void ColumnParallelBackward(int p, bool gather)
    {
        var rng = NewRandom();
        const long m = 7, k = 13, n = 11;
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        var g = RandomArray(rng, m * n); // dL/dY
        var e = RandomArray(rng, k * n); // direction for the finite difference
        var plan = ShardingPlan.Even(n, p);
        var dx = new float[p][];
        var dw = new float[p][];
        var db = new float[p][];
        using (var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30)))
            Spmd.Run(group, ctx =>
            {
                using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), gather);
                long nr = layer.LocalOutFeatures, off = layer.LocalOutOffset;
                using var dx_ = Upload(x, ctx.Device, ctx.Stream);
                var gr = gather ? g : Slice(g, m, n, off, nr);
                using var dy = ctx.Device.Allocate<float>(Math.Max(1, gr.Length));
                if (gr.Length > 0) dy.CopyFrom(gr, ctx.Stream);
                using var dxb = Poisoned(m * k, ctx.Device, ctx.Stream);
                using var dwb = ctx.Device.Allocate<float>(Math.Max(1, k * nr));
                using var dbb = ctx.Device.Allocate<float>(Math.Max(1, nr));
                long cols = gather ? n : nr;
                var dyv = dy.AsMatrix(m, cols, Math.Max(1, cols));
                layer.Backward(dx_.AsMatrix(m, k), dyv, dxb.AsMatrix(m, k), nr > 0 ? dwb : null, nr > 0 ? dbb : null);
                layer.Backward(dx_.AsMatrix(m, k), dyv, dxb.AsMatrix(m, k), nr > 0 ? dwb : null, nr > 0 ? dbb : null, accumulate: true);
                ctx.Synchronize();
                dx[ctx.Rank] = dxb.ToArray(ctx.Stream);
                dw[ctx.Rank] = nr > 0 ? dwb.ToArray(ctx.Stream)[..(int)(k * nr)] : [];
                db[ctx.Rank] = nr > 0 ? dbb.ToArray(ctx.Stream)[..(int)nr] : [];
            });

        var wantDx = Dot(g, m, n, w, k, false, true, out var magDx);           // dY · Wᵀ
        var wantDw = Dot(x, k, m, g, n, true, false, out var magDw);           // Xᵀ · dY (K × N)
        for (int r = 0; r < p; r++)
        {
            Reference.AssertClose(dx[r], k, wantDx, magDx, m, k, n, $"dX rank {r}");
            long off = plan.Offset(r), nr = plan.Size(r);
            var wantBlock = SliceD(wantDw, k, n, off, nr, 2.0);
            var magBlock = SliceD(magDw, k, n, off, nr, 2.0);
            Reference.AssertClose(dw[r], nr, wantBlock, magBlock, k, nr, m, $"dW rank {r} (accumulated twice)");
            for (long j = 0; j < nr; j++)
            {
                double s = 0, a = 0;
                for (long i = 0; i < m; i++) { s += g[i * n + off + j]; a += Math.Abs(g[i * n + off + j]); }
                Assert.That(db[r][j], Is.EqualTo(2 * s).Within(2 * Reference.Bound(a, m) + 1e-6), $"db rank {r} [{j}]");
            }
        }

        // Finite differences of the forward pass (the loss is linear in W, so a large step is exact up to rounding).
        const float eps = 0.5f;
        double lp = Loss(p, gather, x, Add(w, e, eps), bias, g, m, k, n, out double sp);
        double lm = Loss(p, gather, x, Add(w, e, -eps), bias, g, m, k, n, out double sm);
        double fd = (lp - lm) / (2 * eps);
        double analytic = 0;
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), nr = plan.Size(r);
            for (long i = 0; i < k; i++)
                for (long j = 0; j < nr; j++)
                    analytic += dw[r][i * nr + j] / 2.0 * e[i * n + off + j];
        }
        Assert.That(fd, Is.EqualTo(analytic).Within(1e-5 * (sp + sm) / (2 * eps) + 1e-6), "finite difference vs Σ⟨dW_r, E_r⟩");
    }

    /// <summary>Row-parallel: dX_r = dY·W_rᵀ (gathered into dX when the input was split on entry), dW_r = X_rᵀ·dY,
    /// db = Σ dY; finite differences agree.</summary>
    [TestCaseSource(nameof(Cases))]
    public void RowParallelBackward(int p, bool parallelInput)
    {
        var rng = NewRandom();
        const long m = 6, k = 17, n = 9;
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var g = RandomArray(rng, m * n);
        var plan = ShardingPlan.Even(k, p);
        var dx = new float[p][];
        var dw = new float[p][];
        var db = new float[p][];
        using (var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30)))
            Spmd.Run(group, ctx =>
            {
                using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(new float[n], 1, n), parallelInput);
                long kr = layer.LocalInFeatures, off = layer.LocalInOffset, cols = parallelInput ? kr : k;
                var xr = parallelInput ? Slice(x, m, k, off, kr) : x;
                using var xb = ctx.Device.Allocate<float>(Math.Max(1, xr.Length));
                if (xr.Length > 0) xb.CopyFrom(xr, ctx.Stream);
                using var dy = Upload(g, ctx.Device, ctx.Stream);
                using var dxb = Poisoned(Math.Max(1, m * cols), ctx.Device, ctx.Stream);
                using var dwb = ctx.Device.Allocate<float>(Math.Max(1, kr * n));
                using var dbb = ctx.Device.Allocate<float>(n);
                var xv = xb.AsMatrix(m, cols, Math.Max(1, cols));
                layer.Backward(xv, dy.AsMatrix(m, n), dxb.AsMatrix(m, cols, Math.Max(1, cols)), kr > 0 ? dwb : null, dbb);
                ctx.Synchronize();
                dx[ctx.Rank] = cols > 0 ? dxb.ToArray(ctx.Stream)[..(int)(m * cols)] : [];
                dw[ctx.Rank] = kr > 0 ? dwb.ToArray(ctx.Stream)[..(int)(kr * n)] : [];
                db[ctx.Rank] = dbb.ToArray(ctx.Stream);
            });
        var wantDx = Dot(g, m, n, w, k, false, true, out var magDx);
        var wantDw = Dot(x, k, m, g, n, true, false, out var magDw);
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), kr = plan.Size(r);
            if (parallelInput)
                Reference.AssertClose(dx[r], Math.Max(1, kr), SliceD(wantDx, m, k, off, kr, 1), SliceD(magDx, m, k, off, kr, 1), m, kr, n, $"dX_r rank {r}");
            else
                Reference.AssertClose(dx[r], k, wantDx, magDx, m, k, n, $"gathered dX rank {r}");
            Reference.AssertClose(dw[r], n, SliceRows(wantDw, n, off, kr), SliceRows(magDw, n, off, kr), kr, n, m, $"dW rank {r}");
            for (long j = 0; j < n; j++)
            {
                double s = 0, a = 0;
                for (long i = 0; i < m; i++) { s += g[i * n + j]; a += Math.Abs(g[i * n + j]); }
                Assert.That(db[r][j], Is.EqualTo(s).Within(Reference.Bound(a, m) + 1e-6), $"db rank {r} [{j}]");
            }
        }

        // Finite differences of the row-parallel forward along a random direction E of W (L = Σ Y∘G is linear in W).
        var e = RandomArray(rng, k * n);
        const float eps = 0.5f;
        double RowLoss(float[] wv, out double scale)
        {
            var y0 = new float[m * n];
            using (var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30)))
                Spmd.Run(group, ctx =>
                {
                    using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(wv, k, n), inputIsParallel: false);
                    using var xb = Upload(x, ctx.Device, ctx.Stream);
                    using var y = Poisoned(m * n, ctx.Device, ctx.Stream);
                    layer.Forward(xb.AsMatrix(m, k), y.AsMatrix(m, n));
                    ctx.Synchronize();
                    if (ctx.Rank == 0) y.ToArray(ctx.Stream).CopyTo(y0, 0);
                });
            scale = y0.Select((v, i) => Math.Abs((double)v * g[i])).Sum();
            return y0.Select((v, i) => (double)v * g[i]).Sum();
        }
        double fd = (RowLoss(w.Select((v, i) => v + eps * e[i]).ToArray(), out double sp) -
                     RowLoss(w.Select((v, i) => v - eps * e[i]).ToArray(), out double sm)) / (2 * eps);
        double analytic = 0;
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), kr = plan.Size(r);
            for (long i = 0; i < kr; i++)
                for (long j = 0; j < n; j++) analytic += dw[r][i * n + j] * e[(off + i) * n + j];
        }
        Assert.That(fd, Is.EqualTo(analytic).Within(1e-5 * (sp + sm) / (2 * eps) + 1e-6), "finite difference vs Σ⟨dW_r, E_r⟩");
    }

    [Test]
    public void BackwardRejectsWrongShapesAndFusedGelu()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        using var col = new ColumnParallelLinear(ctx, WeightSource.FromArray(new float[12], 3, 4));
        using var gelu = new ColumnParallelLinear(ctx, WeightSource.FromArray(new float[12], 3, 4), epilogue: Epilogue.Gelu);
        using var buf = Dev.Allocate<float>(64);
        Assert.That(() => col.Backward(buf.AsMatrix(2, 3), buf.AsMatrix(2, 5), buf.AsMatrix(2, 3)), Throws.ArgumentException.With.Property("ParamName").EqualTo("dy"));
        Assert.That(() => col.Backward(buf.AsMatrix(2, 3), buf.AsMatrix(2, 4), buf.AsMatrix(2, 2)), Throws.ArgumentException.With.Property("ParamName").EqualTo("dx"));
        using var small = Dev.Allocate<float>(5);
        Assert.That(() => col.Backward(buf.AsMatrix(2, 3), buf.AsMatrix(2, 4), buf.AsMatrix(2, 3), dWeight: small), Throws.ArgumentException.With.Property("ParamName").EqualTo("dWeight"));
        Assert.That(() => gelu.Backward(buf.AsMatrix(2, 3), buf.AsMatrix(2, 4), buf.AsMatrix(2, 3)), Throws.InstanceOf<NotSupportedException>());
    }

    private double Loss(int p, bool gather, float[] x, float[] w, float[] bias, float[] g, long m, long k, long n, out double scale)
    {
        var ys = new float[p][];
        var offs = new long[p];
        using (var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30)))
            Spmd.Run(group, ctx =>
            {
                using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), gather);
                long cols = gather ? n : layer.LocalOutFeatures;
                using var xb = Upload(x, ctx.Device, ctx.Stream);
                using var y = Poisoned(Math.Max(1, m * cols), ctx.Device, ctx.Stream);
                layer.Forward(xb.AsMatrix(m, k), y.AsMatrix(m, cols, Math.Max(1, cols)));
                ctx.Synchronize();
                ys[ctx.Rank] = cols > 0 ? y.ToArray(ctx.Stream)[..(int)(m * cols)] : [];
                offs[ctx.Rank] = layer.LocalOutOffset;
            });
        var full = new double[m * n];
        if (gather) for (long i = 0; i < m * n; i++) full[i] = ys[0][i];
        else
            for (int r = 0; r < p; r++)
            {
                long nr = ys[r].Length / m;
                for (long i = 0; i < m; i++)
                    for (long j = 0; j < nr; j++) full[i * n + offs[r] + j] = ys[r][i * nr + j];
            }
        double l = 0;
        scale = 0;
        for (long i = 0; i < m * n; i++) { l += full[i] * g[i]; scale += Math.Abs(full[i] * g[i]); }
        return l;
    }

    private static float[] Add(float[] a, float[] b, float s) => a.Select((v, i) => v + s * b[i]).ToArray();

    private static float[] Slice(float[] a, long rows, long ld, long col, long cols)
    {
        var r = new float[rows * cols];
        for (long i = 0; i < rows; i++) Array.Copy(a, i * ld + col, r, i * cols, cols);
        return r;
    }

    private static double[] SliceD(double[] a, long rows, long ld, long col, long cols, double scale)
    {
        var r = new double[rows * cols];
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < cols; j++) r[i * cols + j] = scale * a[i * ld + col + j];
        return r;
    }

    private static double[] SliceRows(double[] a, long ld, long row, long rows) => a.Skip((int)(row * ld)).Take((int)(rows * ld)).ToArray();
}
