using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>What a <see cref="GradientReducer"/> leaves behind.</summary>
public enum GradientReduction
{
    /// <summary>Every gradient buffer is replaced by its average over the data-parallel group (all-reduce, then ÷ dp).</summary>
    AllReduceAverage,
    /// <summary>Each data-parallel rank receives its own shard (<see cref="GradientReducer.Shard"/>) of the averaged flat
    /// gradient (reduce-scatter, then ÷ dp), for a sharded optimizer; the gradient buffers are left as they were.</summary>
    ReduceScatterAverage,
}

/// <summary>
/// Averages gradients across a data-parallel group, bucket by bucket, overlapping the backward pass (PyTorch DDP's reducer,
/// Megatron-Core's grad buffer).
/// <para><b>Buckets.</b> The gradients, concatenated in index order, form a flat gradient of <see cref="TotalElements"/>
/// elements. It is cut into buckets of <c>bucketBytes / sizeof(T)</c> elements from its END (bucket 0 holds the last
/// elements: backward produces the last layers' gradients first); a bucket may hold several gradients, and a gradient may
/// span several buckets (one larger than a bucket always does). Each bucket has an fp32 staging buffer (the whole set:
/// 4·<see cref="TotalElements"/> bytes), so 16-bit gradients are summed in fp32.</para>
/// <para><b>Overlap.</b> <see cref="MarkReady"/> is called as backward produces each gradient (on the rank's compute
/// stream, <c>dataParallel.Stream</c>). Once every gradient touching bucket k is marked, and buckets 0..k-1 have started,
/// bucket k starts at once — buckets start in index order on every rank whatever the order of the marks, so the ranks'
/// collectives match: an <see cref="Event"/> recorded on the compute stream orders the reducer's own
/// <see cref="CommunicationStream"/> after the gradients' producers; there the bucket's gradients are converted into the
/// staging buffer, summed by one collective, scaled by 1/dp and (all-reduce mode) converted back into the gradients,
/// while the compute stream runs the rest of the backward pass. <see cref="Finish"/> makes the compute stream wait for
/// every bucket (no host wait) and readies the reducer for the next step.</para>
/// <para><b>Arithmetic.</b> The collectives sum in rank order in fp32; the sum is multiplied by 1/dp in fp32 and, for Half and
/// BFloat16 gradients, rounded to the 16-bit type once. For dp a power of two the division is exact (1/dp and the product
/// are exact, barring fp32 underflow below 2^-126), so the result is the fp32 sum ÷ dp rounded once; otherwise
/// fl(1/dp) adds at most one more fp32 rounding (relative error ≤ 2^-23 in all). A group of one rank does nothing in
/// all-reduce mode (its gradients are their own average) and copies the flat gradient into its shard in reduce-scatter mode.</para>
/// <para>Every rank of the group must create its reducer with the same gradient sizes and bucket size, and call
/// <see cref="Finish"/> once per step after marking every gradient.</para>
/// </summary>
public sealed class GradientReducer : IDisposable
{
    private readonly RankContext _dp;
    private readonly BufferHandle[] _handles;
    private readonly long[] _lengths;
    private readonly long[] _starts;     // flat offset of each gradient
    private readonly SwDtype _dtype;
    private readonly long _bucketElements;
    private readonly (long Start, long End)[] _buckets; // flat ranges; bucket 0 is the last
    private readonly int[] _pending;     // per bucket: gradients touching it not yet marked
    private readonly bool[] _marked;
    private readonly List<int>[] _bucketsOf; // per gradient: the buckets it touches
    private readonly DeviceBuffer<float>[] _staging;
    private readonly DeviceBuffer<float>? _shard;
    private readonly DeviceBuffer<float>? _flag;
    private readonly Event[] _ready;
    private readonly Event _done;
    private readonly DeviceStream? _comm;
    private readonly object[] _keepAlive;
    private int _launched;
    private bool _disposed;

    /// <summary>
    /// A reducer of fp32 <paramref name="gradients"/> across <paramref name="dataParallel"/> (this rank's context in the
    /// data-parallel group, e.g. <c>mesh[rank].Group("dp")</c>), with buckets of <paramref name="bucketBytes"/>.
    /// </summary>
    public GradientReducer(RankContext dataParallel, IReadOnlyList<DeviceBuffer<float>> gradients, long bucketBytes = 25 << 20,
        GradientReduction mode = GradientReduction.AllReduceAverage)
        : this(dataParallel, Handles(gradients, dataParallel), SwDtype.F32, sizeof(float), bucketBytes, mode, gradients)
    {
    }

    /// <summary>A reducer of float, <see cref="Half"/> or <see cref="BFloat16"/> gradients (see the constructor).</summary>
    public static GradientReducer Create<T>(RankContext dataParallel, IReadOnlyList<DeviceBuffer<T>> gradients, long bucketBytes = 25 << 20,
        GradientReduction mode = GradientReduction.AllReduceAverage) where T : unmanaged
    {
        var dtype = DeviceBuffer<T>.Dtype;
        if (dtype != SwDtype.F32 && dtype != SwDtype.F16 && dtype != SwDtype.BF16)
            throw new NotSupportedException($"gradients of {typeof(T).Name} are not supported; expected float, System.Half or Shardwise.BFloat16.");
        return new GradientReducer(dataParallel, Handles(gradients, dataParallel), dtype, System.Runtime.CompilerServices.Unsafe.SizeOf<T>(),
            bucketBytes, mode, gradients);
    }

    private static (BufferHandle Handle, long Length)[] Handles<T>(IReadOnlyList<DeviceBuffer<T>> gradients, RankContext dataParallel)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(dataParallel);
        ArgumentNullException.ThrowIfNull(gradients);
        var h = new (BufferHandle, long)[gradients.Count];
        for (int i = 0; i < gradients.Count; i++)
        {
            var g = gradients[i] ?? throw new ArgumentNullException(nameof(gradients), $"gradients[{i}] is null; expected a buffer.");
            ThrowHelper.SameDevice(dataParallel.Device, g, $"gradients[{i}]");
            h[i] = (g.Handle, g.Length);
        }
        return h;
    }

    private GradientReducer(RankContext dp, (BufferHandle Handle, long Length)[] grads, SwDtype dtype, int elementSize, long bucketBytes,
        GradientReduction mode, object keepAlive)
    {
        if (bucketBytes < elementSize)
            throw new ArgumentOutOfRangeException(nameof(bucketBytes), bucketBytes,
                $"bucketBytes must hold at least one gradient element ({elementSize} bytes).");
        if (mode != GradientReduction.AllReduceAverage && mode != GradientReduction.ReduceScatterAverage)
            throw new ArgumentOutOfRangeException(nameof(mode), mode, "mode must be AllReduceAverage or ReduceScatterAverage.");
        _dp = dp;
        Mode = mode;
        _dtype = dtype;
        _keepAlive = [keepAlive];
        _handles = grads.Select(g => g.Handle).ToArray();
        _lengths = grads.Select(g => g.Length).ToArray();
        _starts = new long[_lengths.Length];
        long total = 0;
        for (int i = 0; i < _lengths.Length; i++)
        {
            _starts[i] = total;
            total += _lengths[i];
        }
        TotalElements = total;
        _bucketElements = bucketBytes / elementSize;
        int count = (int)((total + _bucketElements - 1) / _bucketElements);
        _buckets = new (long, long)[count];
        for (int k = 0; k < count; k++)
            _buckets[k] = (Math.Max(0, total - (k + 1) * _bucketElements), total - k * _bucketElements);
        _bucketsOf = new List<int>[_lengths.Length];
        _pending = new int[count];
        for (int i = 0; i < _lengths.Length; i++)
        {
            _bucketsOf[i] = [];
            for (int k = 0; k < count; k++)
                if (_lengths[i] > 0 && _buckets[k].Start < _starts[i] + _lengths[i] && _starts[i] < _buckets[k].End)
                {
                    _bucketsOf[i].Add(k);
                    _pending[k]++;
                }
        }
        _marked = new bool[_lengths.Length];

        // The shard of the flat gradient this rank receives in reduce-scatter mode: uneven when dp does not divide it.
        int p = dp.WorldSize, r = dp.Rank;
        long baseLen = total / p, rem = total % p;
        ShardOffset = r * baseLen + Math.Min(r, rem);
        ShardLength = baseLen + (r < rem ? 1 : 0);

        var owned = new List<IDisposable>();
        try
        {
            bool communicates = p > 1 || mode == GradientReduction.ReduceScatterAverage;
            _staging = new DeviceBuffer<float>[p > 1 ? count : 0];
            for (int k = 0; k < _staging.Length; k++)
            {
                _staging[k] = dp.Device.Allocate<float>(_buckets[k].End - _buckets[k].Start);
                owned.Add(_staging[k]);
            }
            if (mode == GradientReduction.ReduceScatterAverage)
            {
                _shard = dp.Device.Allocate<float>(Math.Max(1, ShardLength));
                owned.Add(_shard);
            }
            if (p > 1)
            {
                _flag = dp.Device.Allocate<float>(1);
                owned.Add(_flag);
            }
            _ready = new Event[communicates ? count : 0];
            for (int k = 0; k < _ready.Length; k++)
            {
                _ready[k] = new Event(dp.Device);
                owned.Add(_ready[k]);
            }
            _done = new Event(dp.Device);
            owned.Add(_done);
            if (communicates)
            {
                _comm = dp.Device.CreateStream();
                owned.Add(_comm);
            }
        }
        catch
        {
            foreach (var o in owned) o.Dispose();
            throw;
        }
    }

    /// <summary>The mode.</summary>
    public GradientReduction Mode { get; }

    /// <summary>The data-parallel rank this reducer runs for.</summary>
    public RankContext DataParallel => _dp;

    /// <summary>Number of buckets.</summary>
    public int BucketCount => _buckets.Length;

    /// <summary>Bucket <paramref name="bucket"/>'s range [Start, End) of the flat gradient (bucket 0 is the last range).</summary>
    public (long Start, long End) BucketRange(int bucket)
    {
        if ((uint)bucket >= (uint)_buckets.Length)
            throw new ArgumentOutOfRangeException(nameof(bucket), bucket, $"bucket must be in [0, {_buckets.Length}).");
        return _buckets[bucket];
    }

    /// <summary>How many buckets of the current step have started (their collective is queued).</summary>
    public int StartedBuckets => _launched;

    /// <summary>Elements of the flat gradient (all gradients concatenated in index order).</summary>
    public long TotalElements { get; }

    /// <summary>The stream the reductions run on (null for a group of one rank in all-reduce mode, which does nothing).</summary>
    public DeviceStream? CommunicationStream => _comm;

    /// <summary>Reduce-scatter mode: where this rank's shard starts in the flat gradient (uneven shards: the first
    /// TotalElements % dp ranks hold one element more).</summary>
    public long ShardOffset { get; }

    /// <summary>Reduce-scatter mode: the length of this rank's shard (may be 0).</summary>
    public long ShardLength { get; }

    /// <summary>Reduce-scatter mode: after <see cref="Finish"/> (in stream order), elements [0, <see cref="ShardLength"/>)
    /// hold the averaged flat gradient's elements [<see cref="ShardOffset"/>, ShardOffset + ShardLength), in fp32 (for every
    /// gradient type: the fp32 master weights of a sharded optimizer take it as it is). Null in all-reduce mode.</summary>
    public DeviceBuffer<float>? Shard => _shard;

    /// <summary>
    /// Marks gradient <paramref name="gradientIndex"/> as produced: its producing work is queued on the compute stream
    /// (<c>DataParallel.Stream</c>) by now. Starts every bucket that became ready (in bucket order). Each gradient once per step.
    /// </summary>
    public void MarkReady(int gradientIndex)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)gradientIndex >= (uint)_marked.Length)
            throw new ArgumentOutOfRangeException(nameof(gradientIndex), gradientIndex, $"gradientIndex must be in [0, {_marked.Length}).");
        if (_marked[gradientIndex])
            throw new InvalidOperationException($"gradient {gradientIndex} is marked ready twice in this step; call Finish() before the next step.");
        _marked[gradientIndex] = true;
        foreach (int k in _bucketsOf[gradientIndex]) _pending[k]--;
        while (_launched < _buckets.Length && _pending[_launched] == 0) Launch(_launched++);
    }

    /// <summary>
    /// Ends the step: makes the compute stream wait (stream-wise; the host does not block) for every bucket's reduction, and
    /// clears the marks for the next step. Throws <see cref="InvalidOperationException"/> naming the gradients never
    /// marked (nothing is then waited for or cleared: mark them and call again).
    /// </summary>
    public void Finish()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var missing = Enumerable.Range(0, _marked.Length).Where(i => !_marked[i]).ToList();
        if (missing.Count > 0)
            throw new InvalidOperationException(
                $"gradient{(missing.Count == 1 ? "" : "s")} {string.Join(", ", missing.Take(20))}{(missing.Count > 20 ? ", ..." : "")} " +
                $"of {_marked.Length} {(missing.Count == 1 ? "was" : "were")} never marked ready in this step; call MarkReady for every gradient before Finish.");
        if (_comm is not null)
        {
            _done.Record(_comm);
            _dp.Stream.Wait(_done);
        }
        Array.Clear(_marked);
        for (int i = 0; i < _bucketsOf.Length; i++)
            foreach (int k in _bucketsOf[i]) _pending[k]++;
        _launched = 0;
    }

    private void Launch(int k)
    {
        if (_comm is null) return; // one rank, all-reduce: nothing to do
        var (start, end) = _buckets[k];
        long n = end - start;
        var stream = _comm.Handle;
        _ready[k].Record(_dp.Stream);
        _comm.Wait(_ready[k]);
        var comm = _dp.Group.Comm;
        if (_dp.WorldSize == 1)
        {
            // Reduce-scatter on one rank: the shard is the whole flat gradient.
            CopySegments(start, end, _shard!, start - ShardOffset, toStaging: true);
            return;
        }
        var staging = _staging[k];
        CopySegments(start, end, staging, 0, toStaging: true);
        float scale = _dp.WorldSize;
        if (Mode == GradientReduction.AllReduceAverage)
        {
            ThrowHelper.Check(Native.sw_all_reduce(comm, _dp.Rank, staging.Handle, 0, staging.Handle, 0, (ulong)n, SwDtype.F32,
                SwReduceOp.Sum, stream));
            ThrowHelper.Check(Native.sw_unscale_check(stream, SwDtype.F32, staging.Handle, 0, (ulong)n, scale, _flag!.Handle, 0));
            CopySegments(start, end, staging, 0, toStaging: false);
        }
        else
        {
            // The ranks' shards, cut to this bucket, tile it in rank order: this rank receives its part.
            long lo = Math.Max(start, ShardOffset), hi = Math.Min(end, ShardOffset + ShardLength);
            long mine = Math.Max(0, hi - lo);
            long recvOffset = mine > 0 ? lo - ShardOffset : 0;
            ThrowHelper.Check(Native.sw_reduce_scatter_v(comm, _dp.Rank, staging.Handle, 0, (ulong)n, _shard!.Handle, (ulong)recvOffset,
                (ulong)mine, SwDtype.F32, SwReduceOp.Sum, stream));
            if (mine > 0)
                ThrowHelper.Check(Native.sw_unscale_check(stream, SwDtype.F32, _shard.Handle, (ulong)recvOffset, (ulong)mine, scale,
                    _flag!.Handle, 0));
        }
        GC.KeepAlive(_keepAlive);
    }

    // Converts the gradients' parts in the flat range [start, end) into (toStaging) or out of `flat`, whose element
    // `flatOffset` is flat element `start`.
    private void CopySegments(long start, long end, DeviceBuffer<float> flat, long flatOffset, bool toStaging)
    {
        var stream = _comm!.Handle;
        for (int i = 0; i < _handles.Length; i++)
        {
            long lo = Math.Max(start, _starts[i]), hi = Math.Min(end, _starts[i] + _lengths[i]);
            if (hi <= lo) continue;
            ulong gOff = (ulong)(lo - _starts[i]), fOff = (ulong)(flatOffset + lo - start), count = (ulong)(hi - lo);
            ThrowHelper.Check(toStaging
                ? Native.sw_convert(stream, _dtype, _handles[i], gOff, SwDtype.F32, flat.Handle, fOff, count)
                : Native.sw_convert(stream, SwDtype.F32, flat.Handle, fOff, _dtype, _handles[i], gOff, count));
        }
    }

    /// <summary>Waits for the reductions still queued and releases the staging buffers, events and stream.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _comm?.Synchronize(); } catch (ShardwiseException) { /* the failure was reported where it happened */ }
        _comm?.Dispose();
        foreach (var s in _staging) s.Dispose();
        _shard?.Dispose();
        _flag?.Dispose();
        foreach (var e in _ready) e.Dispose();
        _done.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"GradientReducer ({Mode}, {_handles.Length} gradients, {TotalElements} elements of {_dtype}, {BucketCount} buckets of ≤ {_bucketElements}) on dp {_dp}";
}
