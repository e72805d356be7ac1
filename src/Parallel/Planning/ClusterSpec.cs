using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Shardwise.Parallel;

/// <summary>A link between devices as the α-β model sees it: a fixed cost per message (or per collective step) and
/// the bandwidth one device reaches on it, in one direction, as a collective achieves it (bus bandwidth, not the
/// datasheet's bidirectional figure).</summary>
/// <param name="BandwidthBytesPerSecond">Achievable bytes per second per device and direction.</param>
/// <param name="LatencySeconds">α: seconds per message / per step of a collective's algorithm.</param>
public sealed record LinkSpec(double BandwidthBytesPerSecond, double LatencySeconds)
{
    /// <summary>NVLink 4 through NVSwitch (H100/H200 SXM, 8 per node): 450 GB/s per direction on the datasheet;
    /// 360 GB/s (80 %) as NCCL's all-reduce bus bandwidth reaches it, 3 µs per step.</summary>
    public static LinkSpec NvLink4 { get; } = new(360e9, 3e-6);
    /// <summary>InfiniBand NDR, one 400 Gb/s adapter per GPU: 50 GB/s; 45 GB/s achieved, 6 µs per step.</summary>
    public static LinkSpec InfiniBandNdr400 { get; } = new(45e9, 6e-6);
    /// <summary>RoCE v2 at 400 Gb/s per GPU: 50 GB/s; 40 GB/s achieved (congestion control, no adaptive routing), 8 µs.</summary>
    public static LinkSpec RoCe400 { get; } = new(40e9, 8e-6);

    /// <summary>"360 GB/s, 3 µs".</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{BandwidthBytesPerSecond / 1e9:0.###} GB/s, {LatencySeconds * 1e6:0.##} µs");
}

/// <summary>A collective (or the point-to-point transfer) as the planner costs it.</summary>
public enum CollectiveKind
{
    /// <summary>All-reduce of a buffer of n bytes.</summary>
    AllReduce,
    /// <summary>All-gather into a buffer of n bytes (each rank contributes n / p).</summary>
    AllGather,
    /// <summary>Reduce-scatter of a buffer of n bytes (each rank keeps n / p).</summary>
    ReduceScatter,
    /// <summary>One send of n bytes to a neighbour (a pipeline stage boundary).</summary>
    SendRecv,
    /// <summary>The data-parallel average of n bytes of fp32 gradients as <see cref="GradientReducer"/> runs it: the
    /// gradients copied into its bucket, all-reduced, scaled and checked, copied back (without a measured fit: the
    /// all-reduce plus four passes over the memory).</summary>
    GradientAverage,
}

/// <summary>A measured cost of one collective on a group of <paramref name="Ranks"/> ranks of one node: time =
/// <paramref name="LatencySeconds"/> + n · <paramref name="SecondsPerByte"/> for a buffer of n bytes (as
/// <see cref="CollectiveKind"/> defines n), a least-squares fit of the calibration's measurements. <paramref name="Shared"/>:
/// measured with every virtual rank of the node busy in groups of that size making the same collectives, the node's time
/// per collective (what it takes from cores the ranks share); else one group alone, its wall time.</summary>
public sealed record CollectiveFit(CollectiveKind Kind, int Ranks, double LatencySeconds, double SecondsPerByte, bool Shared = false);

/// <summary>One measured GEMM: C (M × N) = A (M × K) · B (K × N) in fp32; <paramref name="Seconds"/> per call alone on
/// the device, <paramref name="SharedSeconds"/> the node's time per call when every virtual rank of the node
/// (<see cref="ClusterSpec.SharedRanks"/>) makes the same calls at once (their wall time divided by the calls of all of
/// them; 0 when not measured).</summary>
public sealed record GemmSample(long M, long N, long K, double Seconds, double SharedSeconds = 0)
{
    /// <summary>2·M·N·K.</summary>
    public double Flops => 2.0 * M * N * K;
}

/// <summary>
/// A GEMM time curve measured on a grid of shapes (powers of four by default): the time of any other shape is the
/// flops divided by the efficiency (flop/s) interpolated linearly in log(efficiency) over log M, log N and log K
/// between the grid's neighbours (clamped at its edges). Shapes the calibration skipped (too large to time quickly)
/// take the efficiency of the largest measured shape below them.
/// </summary>
public sealed class GemmCurve
{
    private readonly long[] _m, _n, _k;
    private readonly double[,,] _eff, _effShared; // flop/s alone and shared

    /// <summary>A curve from samples on a grid: every sample's M, N and K are the grid's axes (each axis sorted,
    /// distinct, positive); the grid may have holes (filled as above), and must have at least one sample.</summary>
    public GemmCurve(IEnumerable<GemmSample> samples)
    {
        ArgumentNullException.ThrowIfNull(samples);
        Samples = samples.ToArray();
        if (Samples.Count == 0) throw new ArgumentException("samples is empty; expected at least one measured GEMM.", nameof(samples));
        foreach (var s in Samples)
            if (s.M < 1 || s.N < 1 || s.K < 1 || !(s.Seconds > 0) || s.SharedSeconds < 0 || !double.IsFinite(s.Seconds))
                throw new ArgumentException($"sample {s}: expected M, N, K >= 1 and a positive finite time.", nameof(samples));
        _m = Samples.Select(s => s.M).Distinct().Order().ToArray();
        _n = Samples.Select(s => s.N).Distinct().Order().ToArray();
        _k = Samples.Select(s => s.K).Distinct().Order().ToArray();
        _eff = new double[_m.Length, _n.Length, _k.Length];
        _effShared = new double[_m.Length, _n.Length, _k.Length];
        foreach (var s in Samples)
        {
            int i = Array.IndexOf(_m, s.M), j = Array.IndexOf(_n, s.N), l = Array.IndexOf(_k, s.K);
            _eff[i, j, l] = s.Flops / s.Seconds;
            _effShared[i, j, l] = s.SharedSeconds > 0 ? s.Flops / s.SharedSeconds : s.Flops / s.Seconds; // not measured: no gain
        }
        Fill(_eff);
        Fill(_effShared);
    }

    /// <summary>The measurements.</summary>
    public IReadOnlyList<GemmSample> Samples { get; }

    /// <summary>Whether shared times were measured.</summary>
    public bool HasShared => Samples.Any(s => s.SharedSeconds > 0);

    /// <summary>Seconds of an fp32 GEMM of this shape alone on the device (<paramref name="shared"/>: the node's time per call
    /// when all its virtual ranks make such calls at once; the alone time when not measured).</summary>
    public double Seconds(long m, long n, long k, bool shared = false)
    {
        if (m <= 0 || n <= 0 || k <= 0) return 0;
        var e = shared && HasShared ? _effShared : _eff;
        return 2.0 * m * n * k / Interpolate(e, m, n, k);
    }

    // A hole (a skipped shape, or a shared time not measured) takes the largest efficiency measured at a shape
    // no larger in every dimension; with none, the largest anywhere.
    private void Fill(double[,,] e)
    {
        var measured = (double[,,])e.Clone();
        double any = 0;
        foreach (var v in measured) any = Math.Max(any, v);
        if (any == 0) return;
        for (int i = 0; i < _m.Length; i++)
            for (int j = 0; j < _n.Length; j++)
                for (int l = 0; l < _k.Length; l++)
                {
                    if (measured[i, j, l] > 0) continue;
                    double best = 0;
                    for (int a = 0; a <= i; a++)
                        for (int b = 0; b <= j; b++)
                            for (int c = 0; c <= l; c++)
                                best = Math.Max(best, measured[a, b, c]);
                    e[i, j, l] = best > 0 ? best : any;
                }
    }

    private double Interpolate(double[,,] e, long m, long n, long k)
    {
        var (i0, i1, fi) = Bracket(_m, m);
        var (j0, j1, fj) = Bracket(_n, n);
        var (l0, l1, fl) = Bracket(_k, k);
        double acc = 0;
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++)
                for (int c = 0; c < 2; c++)
                {
                    double w = (a == 0 ? 1 - fi : fi) * (b == 0 ? 1 - fj : fj) * (c == 0 ? 1 - fl : fl);
                    if (w == 0) continue;
                    acc += w * Math.Log(e[a == 0 ? i0 : i1, b == 0 ? j0 : j1, c == 0 ? l0 : l1]);
                }
        return Math.Exp(acc);
    }

    private static (int Lo, int Hi, double Frac) Bracket(long[] axis, long v)
    {
        if (v <= axis[0]) return (0, 0, 0);
        if (v >= axis[^1]) return (axis.Length - 1, axis.Length - 1, 0);
        int hi = 1;
        while (axis[hi] < v) hi++;
        double f = (Math.Log(v) - Math.Log(axis[hi - 1])) / (Math.Log(axis[hi]) - Math.Log(axis[hi - 1]));
        return (hi - 1, hi, f);
    }
}

/// <summary>
/// A cluster as the planner sees it: <see cref="Nodes"/> nodes of <see cref="DevicesPerNode"/> devices, each with its
/// memory, dense GEMM throughput per precision, memory bandwidth, and the links inside a node and between nodes.
/// Presets: <see cref="H100Sxm"/> and <see cref="H200Sxm"/> (nodes of 8 over NVLink, InfiniBand or RoCE between nodes;
/// datasheet figures with the efficiencies stated on each member), and the CPU backend measured on the spot
/// (<see cref="ClusterCalibration.Measure(Device, int, CalibrationOptions?, Action{string}?)"/>, which fills <see cref="Gemm"/> and <see cref="Collectives"/> from
/// measurements and marks the node's virtual devices as sharing one pool of cores, <see cref="SharedCompute"/>).
/// Save and load one with <see cref="ToJson"/> / <see cref="FromJson"/>.
/// </summary>
public sealed record ClusterSpec
{
    /// <summary>A name for tables ("8 × H100 SXM").</summary>
    public string Name { get; init; } = "cluster";
    /// <summary>Nodes.</summary>
    public int Nodes { get; init; } = 1;
    /// <summary>Devices per node.</summary>
    public int DevicesPerNode { get; init; } = 1;
    /// <summary>Memory per device, bytes (what a rank may use; with <see cref="SharedCompute"/> the node's memory
    /// divided by its devices).</summary>
    public long MemoryBytesPerDevice { get; init; }
    /// <summary>Dense fp32 GEMM flop/s per device (the datasheet's peak; <see cref="GemmEfficiency"/> scales it).</summary>
    public double Fp32FlopsPerSecond { get; init; }
    /// <summary>Dense bf16/fp16 GEMM flop/s per device (fp32 accumulation).</summary>
    public double Bf16FlopsPerSecond { get; init; }
    /// <summary>Device memory bandwidth, bytes per second (element-wise work and the optimizer step are costed at it).</summary>
    public double MemoryBandwidthBytesPerSecond { get; init; }
    /// <summary>Bytes per second of the activation functions' kernels (GeLU/SiLU and their derivatives, softmax), read
    /// and written; 0: <see cref="MemoryBandwidthBytesPerSecond"/> (memory-bound kernels, as on a GPU). The CPU backend's
    /// are compute-bound (a libm call per element) and the calibration measures them.</summary>
    public double ActivationBytesPerSecond { get; init; }
    /// <summary>The link between devices of one node.</summary>
    public LinkSpec IntraNode { get; init; } = LinkSpec.NvLink4;
    /// <summary>The link between nodes, per device.</summary>
    public LinkSpec InterNode { get; init; } = LinkSpec.InfiniBandNdr400;
    /// <summary>The fraction of the peak a large GEMM reaches when no measured <see cref="Gemm"/> curve is given.</summary>
    public double GemmEfficiency { get; init; } = 0.7;
    /// <summary>Fixed seconds per kernel / per queued operation (launch, stream hand-off).</summary>
    public double OpLatencySeconds { get; init; } = 5e-6;
    /// <summary>True when a node's devices are virtual ranks sharing one pool of <see cref="CoresPerNode"/> cores (the
    /// CPU backend): their work adds up on the node instead of running side by side.</summary>
    public bool SharedCompute { get; init; }
    /// <summary>Cores of a node's shared pool (<see cref="SharedCompute"/> only).</summary>
    public int CoresPerNode { get; init; } = 1;
    /// <summary>How many virtual ranks ran at once when the curves' shared times were measured (<see cref="GemmSample.SharedSeconds"/>).</summary>
    public int SharedRanks { get; init; } = 1;
    /// <summary>Measured fp32 GEMM times (null: the roofline from the peaks and <see cref="GemmEfficiency"/>).</summary>
    public GemmCurve? Gemm { get; init; }
    /// <summary>Measured training steps of one residual feed-forward block (<see cref="ParallelFeedForward"/> forward and
    /// backward on one rank, fp32, GeLU, biases: its GEMMs, activation, bias gradients and the temporary buffers it
    /// allocates), as a curve over M = rows, N = the rank's share of F, K = H; null: the block is costed from
    /// <see cref="Gemm"/> and the element-wise rates. The planner uses it for models without attention.</summary>
    public GemmCurve? FeedForwardBlock { get; init; }
    /// <summary>Measured collectives on groups inside a node (empty: α-β ring formulas on the links).</summary>
    public IReadOnlyList<CollectiveFit> Collectives { get; init; } = [];

    /// <summary>All devices: <see cref="Nodes"/> · <see cref="DevicesPerNode"/>.</summary>
    public int Devices => Nodes * DevicesPerNode;

    /// <summary>H100 SXM5 80 GB nodes of 8 (DGX/HGX H100): 989 TFLOP/s dense bf16, 494 TFLOP/s TF32 for fp32 GEMMs,
    /// 3.35 TB/s HBM3, NVLink 4 inside a node, <paramref name="interNode"/> between nodes (default InfiniBand NDR, one
    /// 400 Gb/s adapter per GPU). Large GEMMs at 70 % of the peak (cuBLAS's typical reach; this project's own CUDA
    /// kernels have not been measured on a GPU).</summary>
    public static ClusterSpec H100Sxm(int nodes = 1, LinkSpec? interNode = null) => new()
    {
        Name = $"{nodes} × 8 H100 SXM",
        Nodes = nodes,
        DevicesPerNode = 8,
        MemoryBytesPerDevice = 80L * 1000 * 1000 * 1000,
        Fp32FlopsPerSecond = 494e12,
        Bf16FlopsPerSecond = 989e12,
        MemoryBandwidthBytesPerSecond = 3.35e12,
        IntraNode = LinkSpec.NvLink4,
        InterNode = interNode ?? LinkSpec.InfiniBandNdr400,
        GemmEfficiency = 0.7,
        OpLatencySeconds = 5e-6,
    };

    /// <summary>H200 SXM 141 GB nodes of 8: the H100's compute and links, 141 GB of HBM3e at 4.8 TB/s.</summary>
    public static ClusterSpec H200Sxm(int nodes = 1, LinkSpec? interNode = null) => H100Sxm(nodes, interNode) with
    {
        Name = $"{nodes} × 8 H200 SXM",
        MemoryBytesPerDevice = 141L * 1000 * 1000 * 1000,
        MemoryBandwidthBytesPerSecond = 4.8e12,
    };

    /// <summary>What is wrong with this description, one line per problem naming the member (empty: usable).</summary>
    public IReadOnlyList<string> Problems()
    {
        var p = new List<string>();
        if (Nodes < 1) p.Add($"Nodes = {Nodes}: expected at least 1 node.");
        if (DevicesPerNode < 1) p.Add($"DevicesPerNode = {DevicesPerNode}: expected at least 1 device per node (a cluster with zero devices runs nothing).");
        if (MemoryBytesPerDevice <= 0) p.Add($"MemoryBytesPerDevice = {MemoryBytesPerDevice}: expected a positive number of bytes.");
        if (!(Fp32FlopsPerSecond > 0) || !double.IsFinite(Fp32FlopsPerSecond)) p.Add($"Fp32FlopsPerSecond = {Fp32FlopsPerSecond}: expected a positive flop rate.");
        if (!(Bf16FlopsPerSecond > 0) || !double.IsFinite(Bf16FlopsPerSecond)) p.Add($"Bf16FlopsPerSecond = {Bf16FlopsPerSecond}: expected a positive flop rate.");
        if (!(MemoryBandwidthBytesPerSecond > 0) || !double.IsFinite(MemoryBandwidthBytesPerSecond)) p.Add($"MemoryBandwidthBytesPerSecond = {MemoryBandwidthBytesPerSecond}: expected a positive bandwidth.");
        if (!(ActivationBytesPerSecond >= 0) || !double.IsFinite(ActivationBytesPerSecond)) p.Add($"ActivationBytesPerSecond = {ActivationBytesPerSecond}: expected 0 (the memory bandwidth) or a positive rate.");
        if (!(GemmEfficiency > 0 && GemmEfficiency <= 1)) p.Add($"GemmEfficiency = {GemmEfficiency}: expected a fraction in (0, 1].");
        if (!(OpLatencySeconds >= 0) || !double.IsFinite(OpLatencySeconds)) p.Add($"OpLatencySeconds = {OpLatencySeconds}: expected a non-negative time.");
        if (SharedRanks < 1) p.Add($"SharedRanks = {SharedRanks}: expected at least 1.");
        if (SharedCompute && CoresPerNode < 1) p.Add($"CoresPerNode = {CoresPerNode}: expected at least 1 core for a node with shared compute.");
        foreach (var (link, name) in new[] { (IntraNode, nameof(IntraNode)), (InterNode, nameof(InterNode)) })
        {
            if (link is null) { p.Add($"{name} is null: expected a link."); continue; }
            if (!(link.BandwidthBytesPerSecond > 0) || !double.IsFinite(link.BandwidthBytesPerSecond))
                p.Add($"{name}.BandwidthBytesPerSecond = {link.BandwidthBytesPerSecond}: expected a positive bandwidth.");
            if (!(link.LatencySeconds >= 0) || !double.IsFinite(link.LatencySeconds))
                p.Add($"{name}.LatencySeconds = {link.LatencySeconds}: expected a non-negative latency.");
        }
        foreach (var c in Collectives ?? [])
            if (c.Ranks < 1 || !(c.LatencySeconds >= 0) || !(c.SecondsPerByte >= 0))
                p.Add($"Collectives: {c}: expected Ranks >= 1 and non-negative latency and seconds per byte.");
        return p;
    }

    /// <summary>The description as JSON (what <c>Shardwise.Bench calibrate</c> writes).</summary>
    public string ToJson()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("name", Name);
            w.WriteNumber("nodes", Nodes);
            w.WriteNumber("devicesPerNode", DevicesPerNode);
            w.WriteNumber("memoryBytesPerDevice", MemoryBytesPerDevice);
            w.WriteNumber("fp32FlopsPerSecond", Fp32FlopsPerSecond);
            w.WriteNumber("bf16FlopsPerSecond", Bf16FlopsPerSecond);
            w.WriteNumber("memoryBandwidthBytesPerSecond", MemoryBandwidthBytesPerSecond);
            w.WriteNumber("activationBytesPerSecond", ActivationBytesPerSecond);
            WriteLink(w, "intraNode", IntraNode);
            WriteLink(w, "interNode", InterNode);
            w.WriteNumber("gemmEfficiency", GemmEfficiency);
            w.WriteNumber("opLatencySeconds", OpLatencySeconds);
            w.WriteBoolean("sharedCompute", SharedCompute);
            w.WriteNumber("coresPerNode", CoresPerNode);
            w.WriteNumber("sharedRanks", SharedRanks);
            WriteCurve(w, "gemm", Gemm);
            WriteCurve(w, "feedForwardBlock", FeedForwardBlock);
            w.WriteStartArray("collectives");
            foreach (var c in Collectives)
            {
                w.WriteStartObject();
                w.WriteString("kind", c.Kind.ToString());
                w.WriteNumber("ranks", c.Ranks);
                w.WriteNumber("latencySeconds", c.LatencySeconds);
                w.WriteNumber("secondsPerByte", c.SecondsPerByte);
                w.WriteBoolean("shared", c.Shared);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>Reads a description written by <see cref="ToJson"/>; a missing or mistyped member fails with a
    /// <see cref="FormatException"/> naming it.</summary>
    public static ClusterSpec FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        GemmCurve? Curve(string name) => r.TryGetProperty(name, out var g) && g.ValueKind == JsonValueKind.Array
            ? new GemmCurve(g.EnumerateArray().Select(e => new GemmSample(Long(e, "m"), Long(e, "n"), Long(e, "k"),
                Double(e, "seconds"), e.TryGetProperty("sharedSeconds", out _) ? Double(e, "sharedSeconds") : 0)).ToList())
            : null;
        var fits = new List<CollectiveFit>();
        if (r.TryGetProperty("collectives", out var cs) && cs.ValueKind == JsonValueKind.Array)
            foreach (var e in cs.EnumerateArray())
            {
                string kind = Str(e, "kind");
                if (!Enum.TryParse<CollectiveKind>(kind, out var k))
                    throw new FormatException($"collectives: kind '{kind}' is not one of {string.Join(", ", Enum.GetNames<CollectiveKind>())}.");
                fits.Add(new CollectiveFit(k, (int)Long(e, "ranks"), Double(e, "latencySeconds"), Double(e, "secondsPerByte"),
                    e.TryGetProperty("shared", out var sh) && sh.ValueKind == JsonValueKind.True));
            }
        return new ClusterSpec
        {
            Name = Str(r, "name"),
            Nodes = (int)Long(r, "nodes"),
            DevicesPerNode = (int)Long(r, "devicesPerNode"),
            MemoryBytesPerDevice = Long(r, "memoryBytesPerDevice"),
            Fp32FlopsPerSecond = Double(r, "fp32FlopsPerSecond"),
            Bf16FlopsPerSecond = Double(r, "bf16FlopsPerSecond"),
            MemoryBandwidthBytesPerSecond = Double(r, "memoryBandwidthBytesPerSecond"),
            ActivationBytesPerSecond = r.TryGetProperty("activationBytesPerSecond", out _) ? Double(r, "activationBytesPerSecond") : 0,
            IntraNode = ReadLink(r, "intraNode"),
            InterNode = ReadLink(r, "interNode"),
            GemmEfficiency = Double(r, "gemmEfficiency"),
            OpLatencySeconds = Double(r, "opLatencySeconds"),
            SharedCompute = r.TryGetProperty("sharedCompute", out var sc) && sc.ValueKind == JsonValueKind.True,
            CoresPerNode = r.TryGetProperty("coresPerNode", out _) ? (int)Long(r, "coresPerNode") : 1,
            SharedRanks = r.TryGetProperty("sharedRanks", out _) ? (int)Long(r, "sharedRanks") : 1,
            Gemm = Curve("gemm"),
            FeedForwardBlock = Curve("feedForwardBlock"),
            Collectives = fits,
        };
    }

    /// <summary>Loads <see cref="FromJson"/> from a file.</summary>
    public static ClusterSpec Load(string path) => FromJson(File.ReadAllText(path));

    /// <summary>Writes <see cref="ToJson"/> to a file.</summary>
    public void Save(string path) => File.WriteAllText(path, ToJson());

    /// <summary>One paragraph: the nodes, devices, memory, peaks and links.</summary>
    public string Describe()
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append(c, $"{Name}: {Nodes} node(s) × {DevicesPerNode} device(s), {LayerPlan.Bytes(MemoryBytesPerDevice)} each, ");
        sb.Append(c, $"{Bf16FlopsPerSecond / 1e12:0.##} TFLOP/s bf16 / {Fp32FlopsPerSecond / 1e12:0.##} fp32, ");
        sb.Append(c, $"{MemoryBandwidthBytesPerSecond / 1e9:0.#} GB/s memory; intra-node {IntraNode}, inter-node {InterNode}");
        if (Gemm is not null) sb.Append(c, $"; measured GEMM curve ({Gemm.Samples.Count} shapes)");
        else sb.Append(c, $"; GEMMs at {GemmEfficiency:0.##} of peak");
        if (Collectives.Count > 0) sb.Append(c, $"; {Collectives.Count} measured collective fits");
        if (SharedCompute) sb.Append(c, $"; the node's devices share {CoresPerNode} cores");
        return sb.ToString();
    }

    private static void WriteCurve(Utf8JsonWriter w, string name, GemmCurve? curve)
    {
        if (curve is null) return;
        w.WriteStartArray(name);
        foreach (var s in curve.Samples)
        {
            w.WriteStartObject();
            w.WriteNumber("m", s.M); w.WriteNumber("n", s.N); w.WriteNumber("k", s.K);
            w.WriteNumber("seconds", s.Seconds); w.WriteNumber("sharedSeconds", s.SharedSeconds);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void WriteLink(Utf8JsonWriter w, string name, LinkSpec link)
    {
        w.WriteStartObject(name);
        w.WriteNumber("bandwidthBytesPerSecond", link.BandwidthBytesPerSecond);
        w.WriteNumber("latencySeconds", link.LatencySeconds);
        w.WriteEndObject();
    }

    private static LinkSpec ReadLink(JsonElement r, string name)
    {
        if (!r.TryGetProperty(name, out var e) || e.ValueKind != JsonValueKind.Object)
            throw new FormatException($"'{name}' is missing; expected an object with bandwidthBytesPerSecond and latencySeconds.");
        return new LinkSpec(Double(e, "bandwidthBytesPerSecond"), Double(e, "latencySeconds"));
    }

    private static JsonElement Member(JsonElement e, string name, JsonValueKind kind) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == kind ? v
            : throw new FormatException($"'{name}' is missing or not a {kind.ToString().ToLowerInvariant()}.");
    private static double Double(JsonElement e, string name) => Member(e, name, JsonValueKind.Number).GetDouble();
    private static long Long(JsonElement e, string name) => Member(e, name, JsonValueKind.Number).GetInt64();
    private static string Str(JsonElement e, string name) => Member(e, name, JsonValueKind.String).GetString()!;
}
