namespace Shardwise.Launcher;

/// <summary>Bad command-line usage: the message is the one line printed to stderr; the exit code is 2.</summary>
/// <param name="message">One line that names the option and what was expected.</param>
internal sealed class UsageException(string message) : Exception(message);
