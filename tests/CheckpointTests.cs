using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Checkpoints per shard and the safetensors format: a block saved at p = 4 (after an optimizer step) loads at p =
/// 1, 2, 3 with every weight bit for bit; corrupted, truncated or unfinished checkpoints are refused naming the file; our
/// safetensors files follow the format's rules (checked here on the raw bytes, independently of our reader), and the
/// reader refuses each broken rule.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class CheckpointTests(Backend backend) : BackendTest(backend)
{
    private static string TempDir()
    {
        string d = Path.Combine(Path.GetTempPath(), $"shardwise-ckpt-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    private static float[] ReadAll(WeightSource s)
    {
        var a = new float[s.Rows * s.Cols];
        s.Read(0, 0, s.Rows, s.Cols, a);
        return a;
    }

    private void SaveBlock(string dir, int p, TransformerBlockOptions o, TransformerBlockWeights w, bool step, Random? rng)
    {
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        var gradsByName = new Dictionary<string, float[]>();
        var gate = new object();
        Spmd.Run(group, ctx =>
        {
            using var block = new ParallelTransformerBlock(ctx, o, w);
            using var grads = new TransformerBlockGradients(ctx.Device, block);
            var ps = block.Parameters(grads);
            if (step)
            {
                foreach (var q in ps)
                {
                    float[] full;
                    lock (gate)
                        if (!gradsByName.TryGetValue(q.Name, out full!))
                            gradsByName[q.Name] = full = RandomArray(rng!, q.FullRows * q.FullCols);
                    var block2 = new float[q.Count];
                    for (long r = 0; r < q.Rows; r++)
                        for (long c = 0; c < q.Cols; c++) block2[r * q.Cols + c] = full[(q.RowOffset + r) * q.FullCols + q.ColOffset + c];
                    q.Gradient.CopyFrom(block2, ctx.Stream, q.GradientOffset);
                }
                using var opt = new AdamWOptimizer(0.01f);
                opt.Step(ctx.Stream, ps);
            }
            Checkpoint.Save(dir, ctx, ps, new Dictionary<string, string> { ["step"] = step ? "1" : "0" });
        });
    }

    [TestCase(FeedForwardKind.Gelu, SwNormKind.Layer)]
    [TestCase(FeedForwardKind.SwiGlu, SwNormKind.Rms)]
    public void SavedAtFourRanksLoadsBitIdenticalAtOneTwoThree(FeedForwardKind ffn, SwNormKind norm)
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(12, 6, 3, 10, ffn, norm);
        long h = 12, f = 10, qd = 12, kd = 6;
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c, 0.5f), r, c);
        var weights = ffn == FeedForwardKind.SwiGlu
            ? new TransformerBlockWeights(W(h, qd), W(h, kd), W(h, kd), W(qd, h), W(h, f), W(f, h), W3: W(h, f), Bq: W(1, qd), Bo: W(1, h), B2: W(1, h),
                Norm1Gamma: W(1, h), Norm2Gamma: W(1, h))
            : new TransformerBlockWeights(W(h, qd), W(h, kd), W(h, kd), W(qd, h), W(h, f), W(f, h), Bq: W(1, qd), Bk: W(1, kd), Bv: W(1, kd),
                Bo: W(1, h), B1: W(1, f), B2: W(1, h), Norm1Gamma: W(1, h), Norm1Beta: W(1, h), Norm2Gamma: W(1, h), Norm2Beta: W(1, h));
        string saved = TempDir();
        var dirs = new List<string> { saved };
        try
        {
            SaveBlock(saved, 4, o, weights, step: true, rng);
            var four = Checkpoint.Open(saved);
            Assert.That(four.SavedRanks, Is.EqualTo(4));
            Assert.That(four.Metadata["step"], Is.EqualTo("1"));
            foreach (int p in new[] { 1, 2, 3 })
            {
                // Load at p, save again from the loaded block's device buffers, and compare the logical tensors bit for bit.
                string again = TempDir();
                dirs.Add(again);
                SaveBlock(again, p, o, TransformerBlockWeights.FromCheckpoint(four), step: false, null);
                var other = Checkpoint.Open(again);
                Assert.That(other.Names.OrderBy(n => n), Is.EqualTo(four.Names.OrderBy(n => n)), $"p={p}: parameter names");
                foreach (var name in four.Names)
                {
                    if (name.EndsWith("w_gate_up", StringComparison.Ordinal))
                    {
                        var (g4, u4) = four.GateUp(name);
                        var (gp, up) = other.GateUp(name);
                        Reference.AssertBitwise(ReadAll(gp), ReadAll(g4), $"p={p}: {name} (gate)");
                        Reference.AssertBitwise(ReadAll(up), ReadAll(u4), $"p={p}: {name} (up)");
                        continue;
                    }
                    Reference.AssertBitwise(ReadAll(other.Source(name)), ReadAll(four.Source(name)), $"p={p}: {name}");
                }
            }
            // The step changed the weights: the checkpoint is not just the initial ones.
            Assert.That(ReadAll(four.Source("attn.wq")), Is.Not.EqualTo(ReadAll(weights.Wq)));
        }
        finally
        {
            foreach (var d in dirs) Directory.Delete(d, true);
        }
    }

    [Test]
    public void CorruptTruncatedOrUnfinishedCheckpointsAreRefusedNamingTheFile()
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(8, 4, 2, 6);
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c), r, c);
        var weights = new TransformerBlockWeights(W(8, 8), W(8, 4), W(8, 4), W(8, 8), W(8, 6), W(6, 8));
        string dir = TempDir();
        try
        {
            SaveBlock(dir, 2, o, weights, step: false, null);
            Assert.That(Checkpoint.Open(dir).SavedRanks, Is.EqualTo(2));
            string shard = Path.Combine(dir, "rank1.safetensors");
            var bytes = File.ReadAllBytes(shard);

            File.WriteAllBytes(shard, bytes[..^10]); // truncated
            var ex = Assert.Throws<InvalidDataException>(() => Checkpoint.Open(dir))!;
            Assert.That(ex.Message, Does.Contain(shard).And.Contain("truncated"));

            var flipped = (byte[])bytes.Clone();
            flipped[^5] ^= 0x40; // one bit of a weight
            File.WriteAllBytes(shard, flipped);
            ex = Assert.Throws<InvalidDataException>(() => Checkpoint.Open(dir))!;
            Assert.That(ex.Message, Does.Contain(shard).And.Contain("corrupted"));

            File.WriteAllBytes(shard, bytes);
            File.WriteAllText(Path.Combine(dir, "index.json"), "{ not json");
            ex = Assert.Throws<InvalidDataException>(() => Checkpoint.Open(dir))!;
            Assert.That(ex.Message, Does.Contain("index.json"));

            File.Delete(Path.Combine(dir, "index.json")); // unfinished: the index is written last
            var missing = Assert.Throws<FileNotFoundException>(() => Checkpoint.Open(dir))!;
            Assert.That(missing.Message, Does.Contain("index.json").And.Contain("unfinished"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void OurSafeTensorsFilesFollowTheFormatsRules()
    {
        var rng = NewRandom();
        string dir = TempDir();
        try
        {
            string path = Path.Combine(dir, "t.safetensors");
            var a = RandomArray(rng, 6);
            var b = RandomArray(rng, 5);
            SafeTensors.Write(path, [("a", [2, 3], a), ("b.bias", [5], b), ("empty", [0, 4], [])], new Dictionary<string, string> { ["k"] = "v" });
            // The rules, on the raw bytes (not through our reader).
            var raw = File.ReadAllBytes(path);
            ulong n = BinaryPrimitives.ReadUInt64LittleEndian(raw);
            Assert.That(n % 8, Is.Zero, "the header is padded to a multiple of 8 bytes");
            Assert.That(8 + (long)n, Is.LessThanOrEqualTo(raw.Length));
            using var doc = JsonDocument.Parse(raw.AsMemory(8, (int)n));
            var data = raw.AsSpan(8 + (int)n);
            long cursor = 0;
            foreach (var (name, want, shape) in new[] { ("a", a, new[] { 2, 3 }), ("b.bias", b, new[] { 5 }), ("empty", Array.Empty<float>(), new[] { 0, 4 }) })
            {
                var t = doc.RootElement.GetProperty(name);
                Assert.That(t.GetProperty("dtype").GetString(), Is.EqualTo("F32"));
                Assert.That(t.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(shape));
                long begin = t.GetProperty("data_offsets")[0].GetInt64(), end = t.GetProperty("data_offsets")[1].GetInt64();
                Assert.That(begin, Is.EqualTo(cursor), $"{name}: contiguous");
                Assert.That(end - begin, Is.EqualTo(4L * want.Length), $"{name}: size");
                for (int i = 0; i < want.Length; i++)
                    Assert.That(BinaryPrimitives.ReadSingleLittleEndian(data[(int)(begin + 4 * i)..]), Is.EqualTo(want[i]), $"{name}[{i}] little-endian");
                cursor = end;
            }
            Assert.That(cursor, Is.EqualTo(data.Length), "the tensors cover the data section");
            Assert.That(doc.RootElement.GetProperty("__metadata__").GetProperty("k").GetString(), Is.EqualTo("v"));
            // And our reader agrees.
            var file = SafeTensors.Open(path);
            var got = new float[6];
            file.ReadFloats("a", 0, got);
            Assert.That(got, Is.EqualTo(a));
            Assert.That(ReadAll(file.AsWeightSource("a", transpose: true)), Is.EqualTo(new[] { a[0], a[3], a[1], a[4], a[2], a[5] }), "transposed (torch's out x in)");
        }
        finally { Directory.Delete(dir, true); }
    }

    private static byte[] File8(string header, int dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var f = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(f, (ulong)h.Length);
        h.CopyTo(f, 8);
        return f;
    }

    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}""", 16, "hole")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12, "overlaps")]
    [TestCase("""{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8, "needs 12 bytes")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 12, "extra bytes")]
    [TestCase("""{"a":{"dtype":"X99","shape":[2],"data_offsets":[0,8]}}""", 8, "dtype")]
    [TestCase("""{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}""", 8, "non-negative")]
    [TestCase("""{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8, "not a string")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8, "twice")]
    [TestCase("""[1, 2]""", 0, "not a JSON object")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}""", 8, "not valid JSON")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}}""", 8, "outside")]
    public void ReaderRefusesEveryBrokenRuleNamingTheFile(string header, int dataBytes, string why)
    {
        string dir = TempDir();
        try
        {
            string path = Path.Combine(dir, "bad.safetensors");
            File.WriteAllBytes(path, File8(header, dataBytes));
            var ex = Assert.Throws<InvalidDataException>(() => SafeTensors.Open(path))!;
            Assert.That(ex.Message, Does.Contain(path).And.Contain(why));
            // A header size past the end of the file (truncated) and a file shorter than 8 bytes.
            var whole = File8(header, dataBytes);
            File.WriteAllBytes(path, whole[..(8 + 3)]);
            Assert.That(Assert.Throws<InvalidDataException>(() => SafeTensors.Open(path))!.Message, Does.Contain("truncated"));
            File.WriteAllBytes(path, [1, 2, 3]);
            Assert.That(Assert.Throws<InvalidDataException>(() => SafeTensors.Open(path))!.Message, Does.Contain("fewer than the 8"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void TransposedSourceReadsEveryBlockTransposed()
    {
        var rng = NewRandom();
        var a = RandomArray(rng, 5 * 7);
        var t = WeightSource.FromArray(a, 5, 7).Transposed();
        Assert.That((t.Rows, t.Cols), Is.EqualTo((7L, 5L)));
        var block = new float[3 * 2];
        t.Read(2, 1, 3, 2, block);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++) Assert.That(block[i * 2 + j], Is.EqualTo(a[(1 + j) * 7 + 2 + i]), $"[{i},{j}]");
    }
}
