using System.Numerics;

namespace Shardwise.Bench.Support;

/// <summary>
/// A float64 reference for selected rows of <c>Y = X·W (+ bias)</c> (row-major X: M × K, W: K × N), together with
/// the magnitudes <c>Σ_k |X[i,k]·W[k,j]| (+ |bias[j]|)</c> that bound the rounding error of any float32 evaluation.
/// </summary>
internal sealed class Reference
{
    private readonly double[] _values;
    private readonly double[] _magnitudes;

    private Reference(int[] rows, int n, int k, double[] values, double[] magnitudes)
    {
        Rows = rows;
        N = n;
        K = k;
        _values = values;
        _magnitudes = magnitudes;
    }

    /// <summary>The rows of Y this reference covers, ascending.</summary>
    public int[] Rows { get; }

    /// <summary>Columns of Y.</summary>
    public int N { get; }

    /// <summary>The inner dimension.</summary>
    public int K { get; }

    /// <summary>True when every row of Y is covered.</summary>
    public bool IsFull(int m) => Rows.Length == m;

    /// <summary>
    /// The tolerance for <see cref="MaxRelativeError"/>: 4·√K units of float32 roundoff (2⁻²⁴). The worst-case bound
    /// of a K-term float32 sum is K·u; blocked and FMA summation of random data stays far below it, while a dropped or
    /// doubled term (relative size ~1/K) still exceeds 4·√K·u for every K up to ~16 000.
    /// </summary>
    public double Tolerance => 4.0 * Math.Sqrt(Math.Max(K, 1)) * Math.ScaleB(1.0, -24);

    /// <summary>
    /// Computes the reference for all rows (when M·K·N ≤ <paramref name="fullLimit"/>) or for
    /// <paramref name="sampleRows"/> random rows (always including the first and the last).
    /// </summary>
    public static Reference Compute(float[] x, float[] w, float[]? bias, int m, int k, int n,
        long fullLimit = 1L << 28, int sampleRows = 24, int seed = 12345)
    {
        int[] rows;
        if ((long)m * k * n <= fullLimit || m <= sampleRows)
        {
            rows = Enumerable.Range(0, m).ToArray();
        }
        else
        {
            var rng = new Random(seed);
            var set = new SortedSet<int> { 0, m - 1 };
            while (set.Count < sampleRows) set.Add(rng.Next(m));
            rows = set.ToArray();
        }

        var values = new double[(long)rows.Length * n];
        var magnitudes = new double[(long)rows.Length * n];
        System.Threading.Tasks.Parallel.For(0, rows.Length, ri =>
            ComputeRow(x.AsSpan(rows[ri] * k, k), w, bias, n,
                values.AsSpan(ri * n, n), magnitudes.AsSpan(ri * n, n)));
        return new Reference(rows, n, k, values, magnitudes);
    }

    // acc[j] = Σ_k x[k]·W[k,j] and mag[j] = Σ_k |x[k]·W[k,j]| in float64, vectorised over j.
    private static void ComputeRow(ReadOnlySpan<float> xRow, float[] w, float[]? bias, int n, Span<double> acc, Span<double> mag)
    {
        acc.Clear();
        mag.Clear();
        int vf = Vector<float>.Count, vd = Vector<double>.Count;
        for (int kk = 0; kk < xRow.Length; kk++)
        {
            double xv = xRow[kk];
            var xs = new Vector<double>(xv);
            var wRow = w.AsSpan(kk * n, n);
            int j = 0;
            for (; j + vf <= n; j += vf)
            {
                Vector.Widen(new Vector<float>(wRow[j..]), out var lo, out var hi);
                var plo = xs * lo;
                var phi = xs * hi;
                (new Vector<double>(acc[j..]) + plo).CopyTo(acc[j..]);
                (new Vector<double>(acc[(j + vd)..]) + phi).CopyTo(acc[(j + vd)..]);
                (new Vector<double>(mag[j..]) + Vector.Abs(plo)).CopyTo(mag[j..]);
                (new Vector<double>(mag[(j + vd)..]) + Vector.Abs(phi)).CopyTo(mag[(j + vd)..]);
            }
            for (; j < n; j++)
            {
                double p = xv * wRow[j];
                acc[j] += p;
                mag[j] += Math.Abs(p);
            }
        }
        if (bias is not null)
        {
            for (int j = 0; j < n; j++)
            {
                acc[j] += bias[j];
                mag[j] += Math.Abs(bias[j]);
            }
        }
    }

    /// <summary>
    /// max over covered elements of |Y[i,j] − ref[i,j]| / Σ_k |X[i,k]·W[k,j]| (the componentwise error relative to its
    /// bound). <paramref name="y"/> is the full row-major M × N result. NaN or infinity in Y gives +∞.
    /// </summary>
    public double MaxRelativeError(ReadOnlySpan<float> y)
    {
        double worst = 0;
        for (int ri = 0; ri < Rows.Length; ri++)
        {
            var yRow = y.Slice(Rows[ri] * N, N);
            for (int j = 0; j < N; j++)
            {
                double got = yRow[j];
                if (!double.IsFinite(got)) return double.PositiveInfinity;
                double scale = Math.Max(_magnitudes[(long)ri * N + j], double.Epsilon);
                double err = Math.Abs(got - _values[(long)ri * N + j]) / scale;
                if (err > worst) worst = err;
            }
        }
        return worst;
    }
}
