using System.Diagnostics;
using System.Text;

namespace Shardwise.Launcher;

/// <summary>
/// The launcher's stdout and stderr. Every write is whole lines under one lock (one lock for both streams, which
/// may be the same file or terminal), so lines from different ranks never interleave mid-line. A stream that
/// cannot be written any more (a closed pipe) is dropped silently: the ranks' output is still drained.
/// </summary>
internal sealed class OutputSink
{
    private readonly object _gate = new();
    private readonly Stream _stdout;
    private readonly Stream _stderr;
    private bool _stdoutBroken;
    private bool _stderrBroken;

    /// <summary>Creates a sink over the given streams.</summary>
    /// <param name="stdout">Where the ranks' stdout lines go.</param>
    /// <param name="stderr">Where the ranks' stderr lines and the launcher's own messages go.</param>
    public OutputSink(Stream stdout, Stream stderr)
    {
        _stdout = stdout;
        _stderr = stderr;
    }

    /// <summary>Writes whole lines (each ending with a newline) to stdout or stderr.</summary>
    /// <param name="error">True for stderr.</param>
    /// <param name="lines">Bytes to write, whole lines only.</param>
    public void Write(bool error, ReadOnlySpan<byte> lines)
    {
        if (lines.IsEmpty)
            return;
        lock (_gate)
        {
            ref bool broken = ref error ? ref _stderrBroken : ref _stdoutBroken;
            if (broken)
                return;
            try
            {
                Stream s = error ? _stderr : _stdout;
                s.Write(lines);
                s.Flush();
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
            {
                broken = true;
            }
        }
    }

    /// <summary>Writes one line of the launcher's own, <c>shardwise launch: MESSAGE</c>, to stderr.</summary>
    /// <param name="message">The message, without a newline.</param>
    public void Message(string message) => Write(true, Encoding.UTF8.GetBytes($"shardwise launch: {message}\n"));
}

/// <summary>
/// Reads one rank's stdout and stderr line by line and writes each line, with the prefix <c>[rank R] </c> (unless
/// turned off), to the launcher's matching stream, and without prefix to the rank's log file when there is one.
/// Bytes are passed on unchanged (no decoding); an unfinished last line is written, with a newline, at the end.
/// </summary>
internal sealed class RankOutput : IDisposable
{
    private readonly OutputSink _sink;
    private readonly byte[] _prefix;
    private readonly Stream? _log;
    private readonly object _logGate = new();
    private bool _logBroken;
    private long _lastProgress = Stopwatch.GetTimestamp();
    private int _writing;

    /// <summary>Creates the output of one rank.</summary>
    /// <param name="rank">The rank, for the prefix.</param>
    /// <param name="sink">The launcher's stdout and stderr.</param>
    /// <param name="prefix">Whether to prefix lines with <c>[rank R] </c>.</param>
    /// <param name="log">The rank's log file (owned: disposed with this object), or null.</param>
    public RankOutput(int rank, OutputSink sink, bool prefix, Stream? log)
    {
        _sink = sink;
        _prefix = prefix ? Encoding.ASCII.GetBytes($"[rank {rank}] ") : [];
        _log = log;
    }

    /// <summary>True when nothing was read or written for <paramref name="idle"/> and no write is in progress: the
    /// pipe is held open by something that does not write (e.g. a background process the rank left behind).</summary>
    /// <param name="idle">How long without progress counts as idle.</param>
    /// <returns>Whether this output is idle.</returns>
    public bool IsIdle(TimeSpan idle) =>
        Volatile.Read(ref _writing) == 0 && Stopwatch.GetElapsedTime(Volatile.Read(ref _lastProgress)) >= idle;

    /// <summary>Copies <paramref name="source"/> line by line until its end. Never throws.</summary>
    /// <param name="source">The rank's stdout or stderr pipe.</param>
    /// <param name="error">True for stderr.</param>
    /// <returns>A task that completes at the end of the stream.</returns>
    public async Task PumpAsync(Stream source, bool error)
    {
        var buffer = new byte[16384];
        var partial = new MemoryStream();   // the unfinished line carried over from the previous read
        var console = new MemoryStream();   // prefixed lines of one read, written at once
        var log = _log is null ? null : new MemoryStream();
        try
        {
            while (true)
            {
                int n = await source.ReadAsync(buffer).ConfigureAwait(false);
                Volatile.Write(ref _lastProgress, Stopwatch.GetTimestamp());
                if (n == 0)
                    break;
                var data = buffer.AsSpan(0, n);
                int nl;
                while ((nl = data.IndexOf((byte)'\n')) >= 0)
                {
                    AddLine(partial, data[..nl], console, log);
                    data = data[(nl + 1)..];
                }
                partial.Write(data);
                Emit(error, console, log);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
        {
            // The pipe broke: write what was read so far.
        }
        if (partial.Length > 0)
            AddLine(partial, [], console, log);
        Emit(error, console, log);
    }

    private void AddLine(MemoryStream partial, ReadOnlySpan<byte> tail, MemoryStream console, MemoryStream? log)
    {
        var head = partial.GetBuffer().AsSpan(0, (int)partial.Length);
        console.Write(_prefix);
        console.Write(head);
        console.Write(tail);
        console.WriteByte((byte)'\n');
        if (log is not null)
        {
            log.Write(head);
            log.Write(tail);
            log.WriteByte((byte)'\n');
        }
        partial.SetLength(0);
    }

    private void Emit(bool error, MemoryStream console, MemoryStream? log)
    {
        if (console.Length == 0)
            return;
        Interlocked.Increment(ref _writing);
        try
        {
            _sink.Write(error, console.GetBuffer().AsSpan(0, (int)console.Length));
            if (log is not null && _log is not null)
            {
                lock (_logGate)
                {
                    if (!_logBroken)
                    {
                        try
                        {
                            _log.Write(log.GetBuffer().AsSpan(0, (int)log.Length));
                            _log.Flush();
                        }
                        catch (Exception e) when (e is IOException or ObjectDisposedException)
                        {
                            _logBroken = true;
                        }
                    }
                }
            }
        }
        finally
        {
            console.SetLength(0);
            log?.SetLength(0);
            Volatile.Write(ref _lastProgress, Stopwatch.GetTimestamp());
            Interlocked.Decrement(ref _writing);
        }
    }

    /// <summary>Closes the log file, if any.</summary>
    public void Dispose()
    {
        lock (_logGate)
        {
            _logBroken = true;
            try
            {
                _log?.Dispose();
            }
            catch (IOException)
            {
                // Nothing more to do with a log that cannot be flushed.
            }
        }
    }
}
