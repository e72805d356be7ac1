using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Shardwise.Parallel;

/// <summary>
/// Per-shard checkpoints. <see cref="Save"/>: every rank of a group writes its parameter shards to
/// <c>rank{r}.safetensors</c> (one tensor per shard, named as the parameter; the shard's place in the full tensor in the
/// file's metadata) and a small <c>rank{r}.json</c> (the file's size and SHA-256); after a barrier rank 0 writes
/// <c>index.json</c> (rank count, every file with its size and hash, every parameter's full shape) — last, through a
/// temporary file renamed into place, so a checkpoint without its index is an unfinished one. <see cref="Open"/> checks
/// everything before any weight is read: the index, every file's size and SHA-256, every file's safetensors header, and
/// that each parameter's saved blocks cover its full tensor exactly once (replicated ones: rank 0's copy); any problem is
/// an <see cref="InvalidDataException"/> naming the file and what is wrong. The reader then serves any block of any
/// parameter as a <see cref="WeightSource"/>, so a checkpoint saved at p ranks loads at any other count: the layers
/// re-split it as they load.
/// </summary>
public static class Checkpoint
{
    private const int Version = 1;

    /// <summary>Writes this rank's shards (call on every rank of <paramref name="context"/>'s group, same directory, same
    /// parameter names); queued work on the rank's stream is waited for first. <paramref name="metadata"/> goes into the
    /// index (e.g. the step).</summary>
    public static void Save(string directory, RankContext context, IEnumerable<ParameterShard> parameters, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(parameters);
        Directory.CreateDirectory(directory);
        int rank = context.Rank;
        var list = parameters.ToList();
        var tensors = new List<(string, long[], float[])>();
        var places = new Dictionary<string, string>();
        foreach (var p in list)
        {
            var data = p.Value.ToArray(context.Stream);
            var block = data.AsSpan((int)p.ValueOffset, (int)p.Count).ToArray();
            tensors.Add((p.Name, [p.Rows, p.Cols], block));
            places[p.Name] = string.Join(",", new[] { p.FullRows, p.FullCols, p.RowOffset, p.Rows, p.ColOffset, p.Cols, p.Replicated ? 1 : 0 }
                .Select(v => v.ToString(CultureInfo.InvariantCulture)));
        }
        string file = Path.Combine(directory, $"rank{rank}.safetensors");
        SafeTensors.Write(file, tensors, new Dictionary<string, string> { ["shardwise.places"] = JsonSerializer.Serialize(places, CheckpointJson.Default.DictionaryStringString) });
        var info = new FileInfo(file);
        string hash = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));
        WriteAtomically(Path.Combine(directory, $"rank{rank}.json"),
            JsonSerializer.Serialize(new CheckpointRankEntry($"rank{rank}.safetensors", info.Length, hash), CheckpointJson.Default.CheckpointRankEntry));
        if (context.WorldSize > 1) context.Barrier();
        context.Synchronize();
        if (rank == 0)
        {
            var ranks = new List<CheckpointRankEntry>();
            for (int r = 0; r < context.WorldSize; r++)
                ranks.Add(JsonSerializer.Deserialize(File.ReadAllText(Path.Combine(directory, $"rank{r}.json")), CheckpointJson.Default.CheckpointRankEntry)!);
            var index = new CheckpointIndex(Version, context.WorldSize, ranks, metadata?.ToDictionary() ?? []);
            WriteAtomically(Path.Combine(directory, "index.json"), JsonSerializer.Serialize(index, CheckpointJson.Default.CheckpointIndex));
        }
        if (context.WorldSize > 1) context.Barrier(); // every rank returns once the checkpoint is complete
        context.Synchronize();
    }

    /// <summary>Opens and checks a checkpoint directory (see the class); throws <see cref="InvalidDataException"/> or
    /// <see cref="FileNotFoundException"/> naming the file at fault.</summary>
    public static CheckpointReader Open(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        string indexPath = Path.Combine(directory, "index.json");
        if (!File.Exists(indexPath))
            throw new FileNotFoundException($"'{indexPath}' does not exist: not a checkpoint, or an unfinished one (the index is written last).", indexPath);
        CheckpointIndex index;
        try { index = JsonSerializer.Deserialize(File.ReadAllText(indexPath), CheckpointJson.Default.CheckpointIndex) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new InvalidDataException($"'{indexPath}' is not a valid checkpoint index: {e.Message}"); }
        if (index.Version != Version) throw new InvalidDataException($"'{indexPath}': version {index.Version}; this library reads version {Version}.");
        if (index.Ranks is null || index.Ranks.Count != index.WorldSize || index.WorldSize < 1)
            throw new InvalidDataException($"'{indexPath}': {index.Ranks?.Count ?? 0} rank files for a world of {index.WorldSize}.");
        var blocks = new Dictionary<string, List<SavedBlock>>();
        for (int r = 0; r < index.WorldSize; r++)
        {
            var entry = index.Ranks[r];
            string path = Path.Combine(directory, Path.GetFileName(entry.File ?? ""));
            if (!File.Exists(path)) throw new FileNotFoundException($"'{path}' (rank {r} of the checkpoint '{indexPath}') does not exist.", path);
            long length = new FileInfo(path).Length;
            if (length != entry.Bytes)
                throw new InvalidDataException($"'{path}' has {length} bytes; the index records {entry.Bytes}: {(length < entry.Bytes ? "truncated" : "extended")}.");
            string hash = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));
            if (!string.Equals(hash, entry.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"'{path}' is corrupted: its SHA-256 is {hash}, the index records {entry.Sha256}.");
            var file = SafeTensors.Open(path);
            if (!file.Metadata.TryGetValue("shardwise.places", out var placesJson))
                throw new InvalidDataException($"'{path}' has no shardwise.places metadata: not a Shardwise checkpoint shard.");
            Dictionary<string, string> places;
            try { places = JsonSerializer.Deserialize(placesJson, CheckpointJson.Default.DictionaryStringString) ?? []; }
            catch (JsonException e) { throw new InvalidDataException($"'{path}': its shardwise.places metadata is not valid JSON ({e.Message})."); }
            foreach (var t in file.Tensors)
            {
                if (!places.TryGetValue(t.Name, out var place)) throw new InvalidDataException($"'{path}': tensor '{t.Name}' has no place in the metadata.");
                var v = place.Split(',').Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray();
                if (v.Length != 7 || t.Dtype != "F32" || t.Shape.Length != 2 || t.Shape[0] != v[3] || t.Shape[1] != v[5])
                    throw new InvalidDataException($"'{path}': tensor '{t.Name}' ({t.Dtype} [{string.Join(", ", t.Shape)}]) does not match its place {place}.");
                var b = new SavedBlock(file, t.Name, v[0], v[1], v[2], v[3], v[4], v[5], v[6] != 0, r);
                if (b.RowOffset < 0 || b.ColOffset < 0 || b.RowOffset + b.Rows > b.FullRows || b.ColOffset + b.Cols > b.FullCols)
                    throw new InvalidDataException($"'{path}': tensor '{t.Name}''s block {place} lies outside its full tensor.");
                if (!blocks.TryGetValue(t.Name, out var l)) blocks[t.Name] = l = [];
                l.Add(b);
            }
        }
        // Each parameter: one full shape; its blocks tile it exactly once (replicated: every copy whole, rank 0's used).
        foreach (var (name, list) in blocks)
        {
            if (list.Any(b => b.FullRows != list[0].FullRows || b.FullCols != list[0].FullCols || b.Replicated != list[0].Replicated))
                throw new InvalidDataException($"'{indexPath}': parameter '{name}' is saved with different full shapes or kinds by different ranks.");
            if (list[0].Replicated)
            {
                if (list.Any(b => b.Rows != b.FullRows || b.Cols != b.FullCols))
                    throw new InvalidDataException($"'{indexPath}': replicated parameter '{name}' is not saved whole.");
                list.RemoveAll(b => !ReferenceEquals(b, list.MinBy(x => x.Rank)));
                continue;
            }
            long covered = list.Sum(b => b.Rows * b.Cols);
            bool overlap = list.Any(a => list.Any(b => !ReferenceEquals(a, b) && a.RowOffset < b.RowOffset + b.Rows && b.RowOffset < a.RowOffset + a.Rows
                && a.ColOffset < b.ColOffset + b.Cols && b.ColOffset < a.ColOffset + a.Cols));
            if (overlap || covered != list[0].FullRows * list[0].FullCols)
                throw new InvalidDataException($"'{indexPath}': the saved blocks of '{name}' {(overlap ? "overlap" : $"cover {covered} of its {list[0].FullRows * list[0].FullCols} elements")}.");
        }
        return new CheckpointReader(directory, index.WorldSize, index.Metadata ?? [], blocks);
    }

    private static void WriteAtomically(string path, string text)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }

}

internal sealed record CheckpointRankEntry(string File, long Bytes, string Sha256);
internal sealed record CheckpointIndex(int Version, int WorldSize, List<CheckpointRankEntry> Ranks, Dictionary<string, string> Metadata);

// Source-generated JSON (the library is trimming- and AOT-safe).
[JsonSourceGenerationOptions(WriteIndented = true)]
[JsonSerializable(typeof(CheckpointIndex))]
[JsonSerializable(typeof(CheckpointRankEntry))]
[JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class CheckpointJson : JsonSerializerContext;

internal sealed record SavedBlock(SafeTensorsFile File, string Name, long FullRows, long FullCols, long RowOffset, long Rows, long ColOffset,
    long Cols, bool Replicated, int Rank);

/// <summary>A checked checkpoint (from <see cref="Checkpoint.Open"/>): each parameter's full shape, and any block of it
/// as a <see cref="WeightSource"/> assembled from the saved shards.</summary>
public sealed class CheckpointReader
{
    private readonly Dictionary<string, List<SavedBlock>> _blocks;

    internal CheckpointReader(string directory, int savedRanks, Dictionary<string, string> metadata, Dictionary<string, List<SavedBlock>> blocks)
    {
        Directory = directory;
        SavedRanks = savedRanks;
        Metadata = metadata;
        _blocks = blocks;
    }

    /// <summary>The checkpoint's directory.</summary>
    public string Directory { get; }
    /// <summary>The rank count it was saved at.</summary>
    public int SavedRanks { get; }
    /// <summary>The metadata given to <see cref="Checkpoint.Save"/>.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The parameter names.</summary>
    public IEnumerable<string> Names => _blocks.Keys;

    /// <summary>The full shape of <paramref name="name"/>.</summary>
    public (long Rows, long Cols) Shape(string name) => (Blocks(name)[0].FullRows, Blocks(name)[0].FullCols);

    private List<SavedBlock> Blocks(string name) => _blocks.TryGetValue(name, out var l) ? l
        : throw new KeyNotFoundException($"the checkpoint '{Directory}' has no parameter '{name}'.");

    /// <summary>The full parameter <paramref name="name"/> as a weight source: a requested block is read from the saved
    /// shards it intersects (each read once per row segment), whatever the rank count now.</summary>
    public WeightSource Source(string name)
    {
        var list = Blocks(name);
        var (rows, cols) = (list[0].FullRows, list[0].FullCols);
        return WeightSource.FromLoader(rows, cols, (r0, c0, nr, nc, dest) =>
        {
            foreach (var b in list)
            {
                long rs = Math.Max(r0, b.RowOffset), re = Math.Min(r0 + nr, b.RowOffset + b.Rows);
                long cs = Math.Max(c0, b.ColOffset), ce = Math.Min(c0 + nc, b.ColOffset + b.Cols);
                if (rs >= re || cs >= ce) continue;
                var seg = new float[ce - cs];
                for (long r = rs; r < re; r++)
                {
                    b.File.ReadFloats(b.Name, (r - b.RowOffset) * b.Cols + (cs - b.ColOffset), seg);
                    seg.CopyTo(dest.Slice((int)((r - r0) * nc + (cs - c0)), seg.Length));
                }
            }
        });
    }

    /// <summary>Wg and Wu (H × F each) from a <see cref="ParallelGatedFeedForward"/>'s saved "w_gate_up", whose column
    /// blocks were [Wg[:, f_r] | Wu[:, f_r]] at the saved rank count.</summary>
    public (WeightSource Gate, WeightSource Up) GateUp(string name)
    {
        var list = Blocks(name);
        long h = list[0].FullRows, f = list[0].FullCols / 2;
        var fused = Source(name);
        // Saved rank r's fused block starts at column 2·off_r and holds f_r gate then f_r up columns: map column j of Wg
        // (or Wu) to its fused column through the saved blocks.
        var spans = list.OrderBy(b => b.ColOffset).Select(b => (FusedStart: b.ColOffset, Width: b.Cols / 2, Start: b.ColOffset / 2)).ToArray();
        WeightSource Half(bool up) => WeightSource.FromLoader(h, f, (r0, c0, nr, nc, dest) =>
        {
            var col = new float[nr];
            for (long j = 0; j < nc; j++)
            {
                long c = c0 + j;
                var s = spans.First(x => c >= x.Start && c < x.Start + x.Width);
                fused.Read(r0, s.FusedStart + (up ? s.Width : 0) + (c - s.Start), nr, 1, col);
                for (long i = 0; i < nr; i++) dest[(int)(i * nc + j)] = col[i];
            }
        });
        return (Half(false), Half(true));
    }
}
