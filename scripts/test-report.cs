// The readable part of `./build.sh test`'s report: every failed test in full (name, message, stack trace, output) and
// the skipped tests grouped by reason, with ONE line for those that need a GPU. A .NET file-based program:
//
//   dotnet run --file scripts/test-report.cs -- --results DIR
//       [--trx SUITE REPORT.trx EXIT_CODE LOG]...    a Microsoft.Testing.Platform TRX report (NUnit, TorchSharp)
//       [--junit SUITE REPORT.xml EXIT_CODE LOG]...  a CTest JUnit report (--output-junit)
//
// build.sh prints the per-suite counts and the totals line itself (from the same reports); this program only reads
// and explains. A suite that failed (non-zero EXIT_CODE) without a failed test in its report (a crash, no report)
// gets the last lines of its LOG. Every skipped test with its reason is written to DIR/skipped.txt.
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;

var suites = new List<(string Kind, string Name, string Report, int ExitCode, string Log)>();
string resultsDir = ".";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--results" when i + 1 < args.Length:
            resultsDir = args[++i];
            break;
        case "--trx" or "--junit" when i + 4 < args.Length:
            suites.Add((args[i], args[i + 1], args[i + 2], int.Parse(args[i + 3]), args[i + 4]));
            i += 4;
            break;
        default:
            Console.Error.WriteLine($"test-report: unexpected argument '{args[i]}'");
            return 2;
    }
}

var failures = new List<TestCase>();
var skipped = new List<TestCase>();
var brokenSuites = new List<(string Name, int ExitCode, string Log)>();
foreach (var suite in suites)
{
    List<TestCase> cases = File.Exists(suite.Report)
        ? (suite.Kind == "--trx" ? ReadTrx(suite.Name, suite.Report) : ReadJUnit(suite.Name, suite.Report))
        : [];
    failures.AddRange(cases.Where(c => c.Outcome == Outcome.Failed));
    skipped.AddRange(cases.Where(c => c.Outcome == Outcome.Skipped));
    // A failed run without a failed test: say what the log says (exit code 8 of the test platform is "no test ran").
    bool runFailed = suite.ExitCode != 0 && !(suite.Kind == "--trx" && suite.ExitCode == 8);
    if (runFailed && !cases.Any(c => c.Outcome == Outcome.Failed))
    {
        brokenSuites.Add((suite.Name, suite.ExitCode, suite.Log));
    }
}

foreach (TestCase failure in failures)
{
    Console.WriteLine();
    Console.WriteLine($"FAILED ({failure.Suite}) {failure.Name}");
    WriteIndented("", failure.Message);
    WriteIndented("stack trace:", failure.StackTrace);
    WriteIndented("output:", failure.Output);
}
foreach (var (name, exitCode, log) in brokenSuites)
{
    Console.WriteLine();
    Console.WriteLine($"FAILED ({name}) the run itself ended with exit code {exitCode} without a failed test in its report; last lines of {log}:");
    string[] lines = File.Exists(log) ? File.ReadAllLines(log) : ["(no log)"];
    foreach (string line in lines.TakeLast(40))
    {
        Console.WriteLine($"    {line}");
    }
}
if (failures.Count + brokenSuites.Count > 0)
{
    Console.WriteLine();
}

// Skipped: the GPU ones on one line, every other reason on its own line (most frequent first, at most eight).
var gpuPattern = new Regex(@"\b(CUDA|GPU|NCCL)\b", RegexOptions.IgnoreCase);
var gpu = skipped.Where(c => gpuPattern.IsMatch(c.Message)).ToList();
var other = skipped.Except(gpu).ToList();
string skippedFile = Path.Combine(resultsDir, "skipped.txt");
if (gpu.Count > 0)
{
    var reasons = gpu.GroupBy(c => FirstLine(c.Message)).OrderByDescending(g => g.Count()).ToList();
    string more = reasons.Count > 1 ? $" (and {reasons.Count - 1} other wording(s))" : "";
    Console.WriteLine($"  skipped, no GPU: {Tests(gpu.Count)} ({PerSuite(gpu)}): \"{reasons[0].Key}\"{more}");
}
foreach (var reason in other.GroupBy(c => FirstLine(c.Message)).OrderByDescending(g => g.Count()).Take(8))
{
    Console.WriteLine($"  skipped, other: {Tests(reason.Count())} ({PerSuite(reason)}): \"{reason.Key}\"");
}
if (skipped.Count > 0)
{
    var text = new StringBuilder();
    foreach (TestCase c in skipped.OrderBy(c => c.Suite).ThenBy(c => c.Name, StringComparer.Ordinal))
    {
        text.Append(c.Suite).Append('\t').Append(c.Name).Append('\t').AppendLine(FirstLine(c.Message));
    }
    Directory.CreateDirectory(resultsDir);
    File.WriteAllText(skippedFile, text.ToString());
    Console.WriteLine($"  every skipped test with its reason: {skippedFile}");
}
return 0;

static string Tests(int count) => count == 1 ? "1 test" : $"{count} tests";

static string PerSuite(IEnumerable<TestCase> cases) =>
    string.Join(", ", cases.GroupBy(c => c.Suite).Select(g => $"{g.Key} {g.Count()}"));

static string FirstLine(string text)
{
    string line = text.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0) ?? "(no reason given)";
    return line.Length > 200 ? line[..200] + "…" : line;
}

static void WriteIndented(string title, string text)
{
    if (string.IsNullOrWhiteSpace(text))
    {
        return;
    }
    if (title.Length > 0)
    {
        Console.WriteLine($"  {title}");
    }
    foreach (string line in text.TrimEnd().Split('\n'))
    {
        Console.WriteLine($"    {line.TrimEnd('\r')}");
    }
}

// TRX (Microsoft.Testing.Platform's TrxReport): UnitTestResult elements with outcome Passed / Failed / Error /
// Timeout / Aborted / NotExecuted; the class of each test from its TestDefinitions entry.
static List<TestCase> ReadTrx(string suite, string path)
{
    XDocument doc = XDocument.Load(path);
    XNamespace ns = doc.Root!.Name.Namespace;
    var classes = doc.Descendants(ns + "UnitTest").ToDictionary(
        t => (string?)t.Attribute("id") ?? "",
        t => (string?)t.Element(ns + "TestMethod")?.Attribute("className") ?? "");
    var cases = new List<TestCase>();
    foreach (XElement result in doc.Descendants(ns + "UnitTestResult"))
    {
        string outcome = (string?)result.Attribute("outcome") ?? "";
        Outcome kind = outcome switch
        {
            "Passed" => Outcome.Passed,
            "NotExecuted" or "Inconclusive" => Outcome.Skipped,
            _ => Outcome.Failed,
        };
        string name = (string?)result.Attribute("testName") ?? "?";
        if (classes.TryGetValue((string?)result.Attribute("testId") ?? "", out string? cls) && cls.Length > 0 && !name.StartsWith(cls, StringComparison.Ordinal))
        {
            name = $"{cls}.{name}";
        }
        XElement? output = result.Element(ns + "Output");
        XElement? error = output?.Element(ns + "ErrorInfo");
        string stdout = string.Join("\n", new[] { output?.Element(ns + "StdOut")?.Value, output?.Element(ns + "StdErr")?.Value }
            .Where(s => !string.IsNullOrWhiteSpace(s)));
        string message = error?.Element(ns + "Message")?.Value ?? "";
        if (kind == Outcome.Skipped && message.Length == 0)
        {
            message = stdout; // where a skip reason is only in the output
        }
        cases.Add(new TestCase(suite, name, kind, message, error?.Element(ns + "StackTrace")?.Value ?? "", stdout));
    }
    return cases;
}

// CTest's JUnit report: testcase status run / fail / notrun / disabled; a check skipped on purpose (exit 77) is
// notrun with <skipped message="SKIP_...">, and its reason is the last line it printed.
static List<TestCase> ReadJUnit(string suite, string path)
{
    var cases = new List<TestCase>();
    foreach (XElement test in XDocument.Load(path).Descendants("testcase"))
    {
        string status = (string?)test.Attribute("status") ?? "";
        string output = test.Element("system-out")?.Value ?? "";
        string skipMessage = (string?)test.Element("skipped")?.Attribute("message") ?? "";
        Outcome kind = status switch
        {
            "run" => Outcome.Passed,
            "disabled" => Outcome.Skipped,
            "notrun" when skipMessage.StartsWith("SKIP_", StringComparison.Ordinal) => Outcome.Skipped,
            _ => Outcome.Failed,
        };
        string lastLine = output.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.Length > 0) ?? "";
        string message = kind switch
        {
            Outcome.Skipped => lastLine.Length > 0 ? lastLine : skipMessage,
            Outcome.Failed => (string?)test.Element("failure")?.Attribute("message") ?? (skipMessage.Length > 0 ? skipMessage : $"status {status}"),
            _ => "",
        };
        cases.Add(new TestCase(suite, (string?)test.Attribute("name") ?? "?", kind, message, "", kind == Outcome.Failed ? output : ""));
    }
    return cases;
}

enum Outcome { Passed, Failed, Skipped }

record TestCase(string Suite, string Name, Outcome Outcome, string Message, string StackTrace, string Output);
