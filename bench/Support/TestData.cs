namespace Shardwise.Bench.Support;

/// <summary>
/// Deterministic pseudo-random test data: uniform floats in [-1, 1) from a SplitMix64 stream, so that every run
/// (and every benchmark process) sees the same matrices for the same seed.
/// </summary>
internal static class TestData
{
    /// <summary>A new array of <paramref name="count"/> uniform values in [-1, 1).</summary>
    public static float[] Uniform(long count, ulong seed)
    {
        var data = new float[count];
        Fill(data, seed);
        return data;
    }

    /// <summary>Fills <paramref name="destination"/> with uniform values in [-1, 1).</summary>
    public static void Fill(Span<float> destination, ulong seed)
    {
        ulong state = seed * 0x9E3779B97F4A7C15UL + 0x632BE59BD9B4E019UL;
        for (int i = 0; i < destination.Length; i++)
        {
            // SplitMix64 step; the top 24 bits give an exactly representable float in [0, 1).
            ulong z = state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            z ^= z >> 31;
            destination[i] = (z >> 40) * (1f / (1 << 23)) - 1f;
        }
    }
}
