using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>Argument checks with messages that name the argument and what was expected.</summary>
internal static class ThrowHelper
{
    public static void Check(SwStatus status, string call) => ShardwiseException.ThrowIfFailed(status, call);

    public static void Positive(long value, string name)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive.");
    }

    public static void NonNegative(long value, string name)
    {
        if (value < 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be >= 0.");
    }

    public static void Rank(int rank, int worldSize, string name = "rank")
    {
        if ((uint)rank >= (uint)worldSize)
            throw new ArgumentOutOfRangeException(name, rank, $"{name} must be in [0, {worldSize}).");
    }

    public static void Shape(MatrixView m, long rows, long cols, string name, string what)
    {
        if (m.Rows != rows || m.Cols != cols)
            throw new ArgumentException($"{name} is {m.Rows} x {m.Cols}; expected {rows} x {cols} ({what}).", name);
    }

    public static void SameDevice(Device expected, Device actual, string name)
    {
        if (!ReferenceEquals(expected, actual))
            throw new ArgumentException($"{name} lives on device '{actual}' but is used on device '{expected}'; expected a buffer of that device.", name);
    }
}
