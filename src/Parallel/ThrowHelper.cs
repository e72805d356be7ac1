using System.Runtime.CompilerServices;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Argument checks with messages that name the argument and what was expected. The name defaults to the expression
/// the caller passed (<see cref="CallerArgumentExpressionAttribute"/>): <c>ThrowHelper.Positive(x.Rows)</c> names
/// "x.Rows"; pass the name explicitly only where it differs from that expression.
/// </summary>
internal static class ThrowHelper
{
    /// <summary>Throws the typed exception of a failed native call. <paramref name="call"/> defaults to the function the
    /// caller's expression calls: <c>Check(Native.sw_gemm(...))</c> reports "sw_gemm". Where the status comes from a
    /// variable, pass the function's name (<c>nameof(Native.sw_store_get)</c>).</summary>
    public static void Check(SwStatus status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != SwStatus.Ok) ShardwiseException.ThrowIfFailed(status, CallName(call));
    }

    // "Native.sw_gemm(stream.Handle, ...)" -> "sw_gemm"; a plain name stays as it is. Runs on failure only.
    internal static string CallName(string expression)
    {
        int paren = expression.IndexOf('(');
        string callee = (paren < 0 ? expression : expression[..paren]).Trim();
        return callee[(callee.LastIndexOf('.') + 1)..];
    }

    public static void Positive(long value, [CallerArgumentExpression(nameof(value))] string name = "")
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive.");
    }

    public static void NonNegative(long value, [CallerArgumentExpression(nameof(value))] string name = "")
    {
        if (value < 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be >= 0.");
    }

    public static void Rank(int rank, int worldSize, [CallerArgumentExpression(nameof(rank))] string name = "")
    {
        if ((uint)rank >= (uint)worldSize)
            throw new ArgumentOutOfRangeException(name, rank, $"{name} must be in [0, {worldSize}).");
    }

    /// <summary>Throws unless <paramref name="view"/> is set (not a default <see cref="MatrixView{T}"/>).</summary>
    public static void NotEmpty<T>(MatrixView<T> view, [CallerArgumentExpression(nameof(view))] string name = "") where T : unmanaged
    {
        if (view.IsEmpty) throw new ArgumentException($"{name} is an empty (default) view.", name);
    }

    /// <summary>Throws unless <paramref name="m"/> is <paramref name="rows"/> × <paramref name="cols"/>; <paramref name="what"/>
    /// says what it should be ("M x in-features").</summary>
    public static void Shape<T>(MatrixView<T> m, long rows, long cols, string what, [CallerArgumentExpression(nameof(m))] string name = "")
        where T : unmanaged
    {
        if (m.Rows != rows || m.Cols != cols)
            throw new ArgumentException($"{name} is {m.Rows} x {m.Cols}; expected {rows} x {cols} ({what}).", name);
    }

    /// <summary>Throws unless <paramref name="buffer"/> lives on <paramref name="expected"/>.</summary>
    public static void SameDevice<T>(Device expected, DeviceBuffer<T> buffer, [CallerArgumentExpression(nameof(buffer))] string name = "")
        where T : unmanaged
    {
        if (!ReferenceEquals(expected, buffer.Device))
            throw new ArgumentException($"{name} lives on device '{buffer.Device}' but is used on device '{expected}'; expected a buffer of that device.", name);
    }

    /// <summary>Throws unless the buffer of <paramref name="view"/> lives on <paramref name="expected"/>.</summary>
    public static void SameDevice<T>(Device expected, MatrixView<T> view, [CallerArgumentExpression(nameof(view))] string name = "")
        where T : unmanaged =>
        SameDevice(expected, view.Buffer, name);
}
