namespace Shardwise.Parallel;

/// <summary>Reusable per-layer device buffers that grow on demand (no allocation once warm).</summary>
internal static class Scratch
{
    /// <summary>Returns <paramref name="cache"/> when it holds at least <paramref name="elements"/> elements, else replaces it
    /// with a larger buffer on <paramref name="device"/>. Work already queued may still use the old buffer: the native
    /// side keeps its memory alive until that work has run.</summary>
    public static DeviceBuffer<T> Ensure<T>(ref DeviceBuffer<T>? cache, Device device, long elements) where T : unmanaged
    {
        elements = Math.Max(1, elements);
        if (cache is null || cache.Length < elements)
        {
            cache?.Dispose();
            cache = device.Allocate<T>(elements);
        }
        return cache;
    }
}
