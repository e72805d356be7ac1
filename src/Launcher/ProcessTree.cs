using System.Globalization;
using System.Runtime.InteropServices;

namespace Shardwise.Launcher;

/// <summary>One process seen in /proc: its id and its start time (which tells a reused id apart).</summary>
/// <param name="Pid">The process id.</param>
/// <param name="StartTime">Field 22 of /proc/PID/stat (clock ticks since boot); 0 where unknown.</param>
internal readonly record struct ProcessId(int Pid, ulong StartTime);

/// <summary>
/// Process trees and signals on Unix. On Linux the descendants of a process are found through /proc; elsewhere
/// (macOS) only the process itself is signalled with SIGTERM, and <see cref="System.Diagnostics.Process.Kill(bool)"/>
/// takes the whole tree at the end.
/// </summary>
internal static partial class ProcessTree
{
    /// <summary>SIGTERM: the same number on Linux and macOS.</summary>
    public const int SigTerm = 15;

    /// <summary>SIGKILL: the same number on Linux and macOS.</summary>
    public const int SigKill = 9;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);

    /// <summary>Sends <paramref name="signal"/> to one process; false when it is gone (or not ours).</summary>
    /// <param name="pid">The process id (must be positive: 0 and negatives address process groups).</param>
    /// <param name="signal">The signal number.</param>
    /// <returns>Whether the signal was delivered.</returns>
    public static bool Signal(int pid, int signal) => pid > 0 && !OperatingSystem.IsWindows() && SysKill(pid, signal) == 0;

    /// <summary>
    /// The processes of the trees rooted at <paramref name="roots"/>: each root, then its descendants (breadth
    /// first), from one scan of /proc. Without /proc, only the roots (start time 0).
    /// </summary>
    /// <param name="roots">The root process ids.</param>
    /// <returns>Every process found, each once.</returns>
    public static List<ProcessId> Collect(IEnumerable<int> roots)
    {
        var result = new List<ProcessId>();
        var rootList = roots.Where(p => p > 0).Distinct().ToList();
        Dictionary<int, (int Parent, ulong Start)>? table = ScanProc();
        if (table is null)
        {
            foreach (int r in rootList)
                result.Add(new ProcessId(r, 0));
            return result;
        }
        var children = new Dictionary<int, List<int>>();
        foreach (var (pid, (parent, _)) in table)
        {
            if (!children.TryGetValue(parent, out var list))
                children[parent] = list = [];
            list.Add(pid);
        }
        var seen = new HashSet<int>();
        var queue = new Queue<int>();
        foreach (int r in rootList)
        {
            if (!table.ContainsKey(r) || !seen.Add(r))
                continue;
            queue.Enqueue(r);
            while (queue.Count > 0)
            {
                int p = queue.Dequeue();
                result.Add(new ProcessId(p, table[p].Start));
                if (children.TryGetValue(p, out var kids))
                    foreach (int k in kids)
                        if (seen.Add(k))
                            queue.Enqueue(k);
            }
        }
        return result;
    }

    /// <summary>Whether the process is still running (not gone, not a zombie, not a new process with the same id).</summary>
    /// <param name="id">The process as collected.</param>
    /// <returns>True while it runs.</returns>
    public static bool IsAlive(ProcessId id)
    {
        if (id.StartTime == 0)
            return Signal(id.Pid, 0);
        var stat = ReadStat(id.Pid);
        return stat is { } s && s.State != 'Z' && s.State != 'X' && s.Start == id.StartTime;
    }

    private static Dictionary<int, (int Parent, ulong Start)>? ScanProc()
    {
        if (!OperatingSystem.IsLinux() || !Directory.Exists("/proc/self"))
            return null;
        var table = new Dictionary<int, (int, ulong)>();
        IEnumerable<string> dirs;
        try
        {
            dirs = Directory.EnumerateDirectories("/proc");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        foreach (string dir in dirs)
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                continue;
            if (ReadStat(pid) is { } s && s.State != 'Z' && s.State != 'X')
                table[pid] = (s.Parent, s.Start);
        }
        return table;
    }

    /// <summary>State, parent id and start time from /proc/PID/stat; null when it cannot be read.</summary>
    private static (char State, int Parent, ulong Start)? ReadStat(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        // "pid (comm) state ppid ... starttime(22) ...": comm may hold spaces and parentheses, so split after the last ')'.
        int close = text.LastIndexOf(')');
        if (close < 0 || close + 2 >= text.Length)
            return null;
        string[] f = text[(close + 2)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // f[0] = field 3 (state), f[1] = field 4 (ppid), f[19] = field 22 (starttime).
        if (f.Length < 20 || f[0].Length == 0 ||
            !int.TryParse(f[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int parent) ||
            !ulong.TryParse(f[19], NumberStyles.None, CultureInfo.InvariantCulture, out ulong start))
            return null;
        return (f[0][0], parent, start);
    }
}
