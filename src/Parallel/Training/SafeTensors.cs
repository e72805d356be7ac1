using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Shardwise.Parallel;

/// <summary>One tensor of a safetensors file: its name, element type ("F32", "F16", "BF16", ...), shape (row-major,
/// outermost first) and its bytes' range in the data section.</summary>
public sealed record SafeTensorInfo(string Name, string Dtype, long[] Shape, long Begin, long End)
{
    /// <summary>Elements (the product of the shape; 1 for a scalar).</summary>
    public long Elements => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>
/// The safetensors format (Hugging Face's, public and small): an unsigned 64-bit little-endian header size N, N bytes of
/// UTF-8 JSON (an object mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} relative to the data
/// section, plus an optional "__metadata__" object of string values), then the data section. The reader checks every
/// rule before it reads a byte of data: header size within the file and at most 100 MB, the JSON an object with unique
/// keys, known dtypes, non-negative shapes whose byte size matches the offsets, offsets in order within the data
/// section, the tensors covering it exactly (no holes, no overlaps), string-only metadata — and names the file and the
/// rule on any failure. The writer pads the header with spaces to a multiple of 8 bytes, tensors in the order given.
/// </summary>
public static class SafeTensors
{
    /// <summary>The largest header accepted (as the reference implementation).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private static readonly Dictionary<string, int> s_sizes = new()
    {
        ["BOOL"] = 1, ["U8"] = 1, ["I8"] = 1, ["F8_E5M2"] = 1, ["F8_E4M3"] = 1, ["I16"] = 2, ["U16"] = 2, ["F16"] = 2, ["BF16"] = 2,
        ["I32"] = 4, ["U32"] = 4, ["F32"] = 4, ["F64"] = 8, ["I64"] = 8, ["U64"] = 8,
    };

    /// <summary>Bytes per element of a safetensors dtype name.</summary>
    public static int DtypeSize(string dtype) => s_sizes.TryGetValue(dtype, out int s) ? s : throw new ArgumentException($"unknown safetensors dtype '{dtype}'.", nameof(dtype));

    /// <summary>Writes fp32 tensors (name, shape, row-major data) and string metadata to <paramref name="path"/>, through a
    /// temporary file renamed into place (a reader never sees half a file).</summary>
    public static void Write(string path, IEnumerable<(string Name, long[] Shape, float[] Data)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        var names = new HashSet<string>();
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) json.WriteString(k, v);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, shape, data) in list)
            {
                if (string.IsNullOrEmpty(name) || name == "__metadata__" || !names.Add(name))
                    throw new ArgumentException($"tensor name '{name}' is empty, reserved or repeated.", nameof(tensors));
                long n = shape.Aggregate(1L, (a, b) => b >= 0 ? checked(a * b) : throw new ArgumentException($"{name}: negative dimension {b}.", nameof(tensors)));
                if (n != data.LongLength) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] holds {n} elements; data has {data.LongLength}.", nameof(tensors));
                json.WriteStartObject(name);
                json.WriteString("dtype", "F32");
                json.WriteStartArray("shape");
                foreach (long d in shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + 4 * n);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += 4 * n;
            }
            json.WriteEndObject();
        }
        long padded = (header.Length + 7) / 8 * 8;
        while (header.Length < padded) header.WriteByte((byte)' ');
        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            Span<byte> size = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(size, (ulong)header.Length);
            f.Write(size);
            header.Position = 0;
            header.CopyTo(f);
            foreach (var (_, _, data) in list)
            {
                var bytes = new byte[data.Length * 4];
                for (int i = 0; i < data.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), data[i]);
                f.Write(bytes);
            }
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Reads and checks the header of <paramref name="path"/> (no tensor data is read); throws
    /// <see cref="InvalidDataException"/> naming the file and the broken rule.</summary>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file '{path}' does not exist.", path);
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = f.Length;
        InvalidDataException Bad(string why) => new($"'{path}' is not a valid safetensors file: {why}.");
        if (length < 8) throw Bad($"it has {length} bytes, fewer than the 8 of the header size");
        Span<byte> size = stackalloc byte[8];
        f.ReadExactly(size);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(size);
        if (n > (ulong)MaxHeaderBytes) throw Bad($"the header size {n} exceeds {MaxHeaderBytes} bytes");
        if ((long)n > length - 8) throw Bad($"the header size {n} runs past the end of the file ({length} bytes): truncated?");
        var header = new byte[n];
        f.ReadExactly(header);
        long dataStart = 8 + (long)n, dataBytes = length - dataStart;
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header, new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow }); }
        catch (JsonException e) { throw Bad($"the header is not valid JSON ({e.Message})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad("the header is not a JSON object");
            var tensors = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>();
            var seen = new HashSet<string>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(prop.Name)) throw Bad($"the key '{prop.Name}' appears twice");
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad("__metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Bad($"__metadata__.{m.Name} is not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                var t = prop.Value;
                if (t.ValueKind != JsonValueKind.Object) throw Bad($"tensor '{prop.Name}' is not an object");
                if (!t.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String || !s_sizes.ContainsKey(dt.GetString()!))
                    throw Bad($"tensor '{prop.Name}' has no known dtype");
                if (!t.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad($"tensor '{prop.Name}' has no shape array");
                var shape = new List<long>();
                foreach (var d in sh.EnumerateArray())
                {
                    if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0) throw Bad($"tensor '{prop.Name}' has a shape entry that is not a non-negative integer");
                    shape.Add(v);
                }
                if (!t.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
                    throw Bad($"tensor '{prop.Name}' has no [begin, end] data_offsets");
                long begin = off[0].TryGetInt64(out long b0) ? b0 : -1, end = off[1].TryGetInt64(out long e0) ? e0 : -1;
                if (begin < 0 || end < begin || end > dataBytes)
                    throw Bad($"tensor '{prop.Name}' has data_offsets [{begin}, {end}] outside the {dataBytes}-byte data section");
                var info = new SafeTensorInfo(prop.Name, dt.GetString()!, [.. shape], begin, end);
                long expected;
                try { expected = checked(info.Elements * s_sizes[info.Dtype]); }
                catch (OverflowException) { throw Bad($"tensor '{prop.Name}''s shape overflows"); }
                if (end - begin != expected)
                    throw Bad($"tensor '{prop.Name}' ({info.Dtype} [{string.Join(", ", shape)}]) needs {expected} bytes; its data_offsets span {end - begin}");
                tensors.Add(info);
            }
            long cursor = 0;
            foreach (var t in tensors.OrderBy(t => t.Begin).ThenBy(t => t.End))
            {
                if (t.Begin != cursor)
                    throw Bad(t.Begin > cursor ? $"the data section has a hole at bytes [{cursor}, {t.Begin})" : $"tensor '{t.Name}' overlaps the one before it");
                cursor = t.End;
            }
            if (cursor != dataBytes)
                throw Bad($"the tensors cover {cursor} bytes of the {dataBytes}-byte data section (extra bytes at the end)");
            return new SafeTensorsFile(path, dataStart, tensors, metadata);
        }
    }
}

/// <summary>A checked safetensors file: its tensors and metadata; data is read on demand.</summary>
public sealed class SafeTensorsFile
{
    private readonly Dictionary<string, SafeTensorInfo> _byName;

    internal SafeTensorsFile(string path, long dataStart, List<SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        DataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
        _byName = tensors.ToDictionary(t => t.Name);
    }

    /// <summary>The file.</summary>
    public string Path { get; }
    /// <summary>Where the data section starts (8 + header size).</summary>
    public long DataStart { get; }
    /// <summary>The tensors in header order.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }
    /// <summary>The "__metadata__" strings.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensor called <paramref name="name"/> (<see cref="KeyNotFoundException"/> naming the file otherwise).</summary>
    public SafeTensorInfo this[string name] => _byName.TryGetValue(name, out var t) ? t
        : throw new KeyNotFoundException($"'{Path}' holds no tensor '{name}'.");

    /// <summary>Whether the file holds <paramref name="name"/>.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>Reads elements [<paramref name="start"/>, start + destination.Length) of an F32, F16 or BF16 tensor as
    /// fp32 (16-bit values widened exactly).</summary>
    public void ReadFloats(string name, long start, Span<float> destination)
    {
        var t = this[name];
        int es = SafeTensors.DtypeSize(t.Dtype);
        if (t.Dtype is not ("F32" or "F16" or "BF16"))
            throw new NotSupportedException($"'{Path}': tensor '{name}' is {t.Dtype}; expected F32, F16 or BF16.");
        if (start < 0 || start + destination.Length > t.Elements)
            throw new ArgumentOutOfRangeException(nameof(start), start, $"elements [{start}, {start + destination.Length}) are outside '{name}''s {t.Elements}.");
        var bytes = new byte[destination.Length * es];
        using (var f = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            f.Seek(DataStart + t.Begin + start * es, SeekOrigin.Begin);
            f.ReadExactly(bytes);
        }
        for (int i = 0; i < destination.Length; i++)
            destination[i] = t.Dtype switch
            {
                "F32" => BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(4 * i)),
                "F16" => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes.AsSpan(2 * i)),
                _ => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(2 * i)) << 16),
            };
    }

    /// <summary>A 2-D tensor (or a 1-D one as 1 × n) as a <see cref="WeightSource"/>, read block by block from the file;
    /// <paramref name="transpose"/> presents torch's out × in layout as in × out.</summary>
    public WeightSource AsWeightSource(string name, bool transpose = false)
    {
        var t = this[name];
        (long rows, long cols) = t.Shape.Length switch
        {
            1 => (1L, t.Shape[0]),
            2 => (t.Shape[0], t.Shape[1]),
            _ => throw new NotSupportedException($"'{Path}': tensor '{name}' has {t.Shape.Length} dimensions; a weight source is 2-D (or 1-D)."),
        };
        var source = WeightSource.FromLoader(rows, cols, (r0, c0, nr, nc, dest) =>
        {
            var row = new float[nc];
            for (long i = 0; i < nr; i++)
            {
                ReadFloats(name, (r0 + i) * cols + c0, row);
                row.CopyTo(dest.Slice((int)(i * nc), (int)nc));
            }
        });
        return transpose ? source.Transposed() : source;
    }
}
