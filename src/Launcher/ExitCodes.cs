namespace Shardwise.Launcher;

/// <summary>The launcher's own exit codes (a failing rank's code is passed through as it is).</summary>
internal static class ExitCodes
{
    /// <summary>Every rank exited with code 0 (or help/version was printed).</summary>
    public const int Success = 0;

    /// <summary>A failure that has no code of its own (e.g. the tee folder cannot be created).</summary>
    public const int Failure = 1;

    /// <summary>Bad usage: unknown option, missing or malformed value, no command.</summary>
    public const int Usage = 2;

    /// <summary>The command could not be started (not found, not executable), as in POSIX shells.</summary>
    public const int CannotStart = 127;

    /// <summary>Base of "killed by signal N" codes: 128 + N.</summary>
    public const int SignalBase = 128;
}
