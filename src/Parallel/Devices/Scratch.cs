namespace Shardwise.Parallel;

/// <summary>Reusable per-layer device buffers that grow on demand (no allocation once warm).</summary>
internal static class Scratch
{
    /// <summary>Returns <paramref name="cache"/> when it holds at least <paramref name="elements"/> floats, else replaces it
    /// with a larger buffer on <paramref name="device"/>. Work already queued may still use the old buffer: the native
    /// side keeps its memory alive until that work has run.</summary>
    public static DeviceBuffer<float> Ensure(ref DeviceBuffer<float>? cache, Device device, long elements)
    {
        elements = Math.Max(1, elements);
        if (cache is null || cache.Length < elements)
        {
            cache?.Dispose();
            cache = device.Allocate<float>(elements);
        }
        return cache;
    }
}
