using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>
/// A failure reported by the native core. Carries the status, the native message (which names the argument
/// or the rank and the operation) and the C function that reported it.
/// </summary>
/// <param name="status">The status the native call returned.</param>
/// <param name="call">The C function that failed.</param>
/// <param name="nativeMessage">The message of <c>sw_last_error()</c> right after the failure.</param>
public class ShardwiseException(SwStatus status, string call, string nativeMessage)
    : Exception(Format(status, call, nativeMessage))
{
    /// <summary>The status the native call returned.</summary>
    public SwStatus Status { get; } = status;

    /// <summary>The C function that failed, e.g. <c>sw_gemm</c>.</summary>
    public string Call { get; } = call;

    /// <summary>The message of <c>sw_last_error()</c> right after the failure.</summary>
    public string NativeMessage { get; } = nativeMessage;

    private static string Format(SwStatus status, string call, string message) =>
        string.IsNullOrEmpty(message) ? $"{call} failed with {status}" : $"{message} [{call}: {status}]";

    /// <summary>Throws the typed exception for <paramref name="status"/> unless it is <see cref="SwStatus.Ok"/>.</summary>
    public static void ThrowIfFailed(SwStatus status, string call)
    {
        if (status != SwStatus.Ok) Throw(status, call);
    }

    /// <summary>Creates the typed exception for a failed status, reading the thread's last native error.</summary>
    public static ShardwiseException Create(SwStatus status, string call)
    {
        var message = Marshal.PtrToStringUTF8(Native.sw_last_error()) ?? "";
        return status switch
        {
            SwStatus.InvalidArgument or SwStatus.NullHandle => new ShardwiseArgumentException(status, call, message),
            SwStatus.OutOfMemory => new ShardwiseOutOfMemoryException(status, call, message),
            SwStatus.Unsupported => new ShardwiseUnsupportedException(status, call, message),
            SwStatus.Timeout => new CollectiveTimeoutException(status, call, message),
            SwStatus.Mismatch => new CollectiveMismatchException(status, call, message),
            SwStatus.Aborted => new CommunicatorAbortedException(status, call, message),
            SwStatus.NotFound => new ShardwiseNotFoundException(status, call, message),
            _ => new ShardwiseException(status, call, message),
        };
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Throw(SwStatus status, string call) => throw Create(status, call);
}

/// <summary>The native core rejected an argument (shape, offset, leading dimension, handle, rank...).</summary>
public sealed class ShardwiseArgumentException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>A native allocation failed.</summary>
public sealed class ShardwiseOutOfMemoryException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>The request is valid but this backend or build does not implement it.</summary>
public sealed class ShardwiseUnsupportedException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>No such device, library or symbol.</summary>
public sealed class ShardwiseNotFoundException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>A collective timed out: the message names the missing ranks, the operation and its sequence number.</summary>
public sealed class CollectiveTimeoutException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>Ranks disagreed inside a collective (operation, dtype, count, root).</summary>
public sealed class CollectiveMismatchException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);

/// <summary>The communicator was aborted by an earlier failure; create a new one.</summary>
public sealed class CommunicatorAbortedException(SwStatus status, string call, string message) : ShardwiseException(status, call, message);
