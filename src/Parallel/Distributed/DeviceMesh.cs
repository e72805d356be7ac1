namespace Shardwise.Parallel;

/// <summary>
/// A mesh of the ranks of a <see cref="ProcessGroup"/> with named dimensions (PyTorch's <c>DeviceMesh</c>, Megatron-Core's
/// TP × PP × DP layout), e.g. <c>DeviceMesh.Create(world, ("pp", 2), ("dp", 2), ("tp", 2))</c>.
/// <para>Layout: row-major, the LAST dimension varies fastest. With shape (s0, s1, ..., s(d-1)) the world rank of coordinates
/// (c0, ..., c(d-1)) is ((c0·s1 + c1)·s2 + c2)... — for ("pp",2),("dp",2),("tp",2): rank = (pp·2 + dp)·2 + tp, so the ranks of a
/// tensor-parallel group are neighbours (put the dimension that talks most last).</para>
/// <para>Groups: for every non-empty proper subset of the dimensions the mesh splits the world once, at creation
/// (<see cref="ProcessGroup.Split"/>, in a fixed order: subsets by ascending bit mask, dimension i being bit i, so every process of a
/// multi-process world makes the same collective calls in the same order). The group spanning a subset S holds the ranks whose
/// coordinates outside S equal this rank's; inside it they are ranked by the row-major order of their coordinates in S (in mesh
/// order). The subset of all dimensions is <see cref="World"/> itself. <see cref="MeshRank.Group"/> returns a rank's context in one.</para>
/// <para>Works over every kind of group: in-process (virtual ranks: <see cref="Ranks"/> holds every rank), <c>shardwise launch</c>
/// (TCP) and mpirun (MPI): <see cref="Ranks"/> then holds this process's rank only. The sub-groups run on the world ranks'
/// streams and share the world's fate (a failure in one aborts all). Dispose the mesh (its sub-groups) before the world.</para>
/// </summary>
public sealed class DeviceMesh : IDisposable
{
    private readonly string[] _names;
    private readonly int[] _shape;
    private readonly int[] _strides;              // world rank = Σ coordinate[i]·_strides[i]
    private readonly ProcessGroupSplit?[] _splits; // by subset mask (0 and the full mask: none)
    private readonly MeshRank[] _ranks;            // this process's ranks, in world.Ranks order
    private bool _disposed;

    private DeviceMesh(ProcessGroup world, string[] names, int[] shape)
    {
        World = world;
        _names = names;
        _shape = shape;
        _strides = new int[shape.Length];
        int stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            _strides[i] = stride;
            stride *= shape[i];
        }
        int full = (1 << shape.Length) - 1;
        _splits = new ProcessGroupSplit?[full + 1];
        try
        {
            for (int mask = 1; mask < full; mask++)
            {
                int m = mask;
                _splits[mask] = world.Split(rank => ColorOf(rank, m), rank => KeyOf(rank, m));
            }
        }
        catch
        {
            DisposeSplits();
            throw;
        }
        _ranks = world.Ranks.Select(r => new MeshRank(this, r)).ToArray();
    }

    /// <summary>
    /// Lays the ranks of <paramref name="world"/> out on a mesh of the named <paramref name="dimensions"/> (row-major, the last
    /// varies fastest) and makes every sub-group at once. The product of the sizes must equal <c>world.WorldSize</c>; names
    /// are distinct and non-empty; sizes ≥ 1. In a multi-process world every process must call it at the same point (it is a
    /// sequence of collective splits).
    /// </summary>
    public static DeviceMesh Create(ProcessGroup world, params (string Name, int Size)[] dimensions)
    {
        ArgumentNullException.ThrowIfNull(world);
        ArgumentNullException.ThrowIfNull(dimensions);
        if (dimensions.Length == 0)
            throw new ArgumentException("dimensions is empty; expected at least one (name, size), e.g. (\"dp\", world.WorldSize).", nameof(dimensions));
        if (dimensions.Length > 16)
            throw new ArgumentException($"dimensions has {dimensions.Length} entries; at most 16 are supported.", nameof(dimensions));
        var seen = new HashSet<string>(StringComparer.Ordinal);
        long product = 1;
        for (int i = 0; i < dimensions.Length; i++)
        {
            var (name, size) = dimensions[i];
            if (string.IsNullOrEmpty(name))
                throw new ArgumentException($"dimensions[{i}] has an empty name; expected a non-empty name such as \"dp\".", nameof(dimensions));
            if (!seen.Add(name))
                throw new ArgumentException($"dimensions[{i}] repeats the name \"{name}\"; expected distinct names.", nameof(dimensions));
            if (size < 1)
                throw new ArgumentException($"dimensions[{i}] (\"{name}\") has size {size}; expected a size >= 1.", nameof(dimensions));
            product *= size;
            if (product > world.WorldSize) break;
        }
        if (product != world.WorldSize)
            throw new ArgumentException(
                $"the mesh shape ({string.Join(" x ", dimensions.Select(d => $"{d.Name}={d.Size}"))}) holds " +
                $"{(product > world.WorldSize ? "more than " + world.WorldSize : product.ToString(System.Globalization.CultureInfo.InvariantCulture))} ranks; " +
                $"expected the product of the sizes to equal the world size {world.WorldSize}.", nameof(dimensions));
        return new DeviceMesh(world, dimensions.Select(d => d.Name).ToArray(), dimensions.Select(d => d.Size).ToArray());
    }

    /// <summary>The group the mesh lays out (the group of all dimensions).</summary>
    public ProcessGroup World { get; }

    /// <summary>The dimensions' names, outermost first.</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>The dimensions' sizes, in <see cref="Names"/> order.</summary>
    public IReadOnlyList<int> Shape => _shape;

    /// <summary>The size of dimension <paramref name="dimension"/>.</summary>
    public int Size(string dimension) => _shape[IndexOf(dimension)];

    /// <summary>World rank <paramref name="worldRank"/>'s place in the mesh (in-process: any rank; multi-process: this process's
    /// rank, as with <see cref="ProcessGroup"/>'s indexer).</summary>
    public MeshRank this[int worldRank]
    {
        get
        {
            var ctx = World[worldRank]; // checks the range and that this process runs it
            return _ranks.First(r => ReferenceEquals(r.World, ctx));
        }
    }

    /// <summary>The ranks this process runs (every rank of an in-process world), in world rank order.</summary>
    public IReadOnlyList<MeshRank> Ranks => _ranks;

    /// <summary>The coordinates of any world rank (also one of another process), in <see cref="Names"/> order.</summary>
    public IReadOnlyList<int> CoordinatesOf(int worldRank)
    {
        ThrowHelper.Rank(worldRank, World.WorldSize);
        var c = new int[_shape.Length];
        for (int i = 0; i < c.Length; i++) c[i] = worldRank / _strides[i] % _shape[i];
        return c;
    }

    /// <summary>The world rank at the given coordinates: every dimension exactly once, each in [0, its size).</summary>
    public int RankAt(params (string Dimension, int Coordinate)[] coordinates)
    {
        ArgumentNullException.ThrowIfNull(coordinates);
        var set = new int?[_shape.Length];
        foreach (var (dim, c) in coordinates)
        {
            int i = IndexOf(dim, nameof(coordinates));
            if (set[i] is not null)
                throw new ArgumentException($"coordinates names \"{dim}\" twice; expected each dimension once.", nameof(coordinates));
            if (c < 0 || c >= _shape[i])
                throw new ArgumentOutOfRangeException(nameof(coordinates), c, $"coordinate of \"{dim}\" is {c}; expected [0, {_shape[i]}).");
            set[i] = c;
        }
        int rank = 0;
        for (int i = 0; i < set.Length; i++)
        {
            if (set[i] is not int c)
                throw new ArgumentException($"coordinates lacks dimension \"{_names[i]}\"; expected one coordinate for each of {Describe()}.",
                    nameof(coordinates));
            rank += c * _strides[i];
        }
        return rank;
    }

    /// <summary>The world rank at the given coordinates (a dictionary by dimension name).</summary>
    public int RankAt(IReadOnlyDictionary<string, int> coordinates)
    {
        ArgumentNullException.ThrowIfNull(coordinates);
        return RankAt(coordinates.Select(kv => (kv.Key, kv.Value)).ToArray());
    }

    /// <summary>Disposes the sub-groups (not <see cref="World"/>).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        DisposeSplits();
    }

    /// <inheritdoc />
    public override string ToString() => $"DeviceMesh {Describe()} over the {World.Backend} group of {World.WorldSize}";

    private void DisposeSplits()
    {
        for (int m = _splits.Length - 1; m >= 0; m--)
        {
            _splits[m]?.Dispose();
            _splits[m] = null;
        }
    }

    private string Describe() => "(" + string.Join(", ", _names.Select((n, i) => $"\"{n}\"={_shape[i]}")) + ")";

    internal int IndexOf(string dimension, string argument = "dimension")
    {
        ArgumentNullException.ThrowIfNull(dimension, argument);
        int i = Array.IndexOf(_names, dimension);
        if (i < 0)
            throw new ArgumentException($"the mesh has no dimension \"{dimension}\"; its dimensions are {Describe()}.", argument);
        return i;
    }

    // The color of a subset's group: the row-major index of the coordinates outside the subset; the key: that of the
    // coordinates inside it (so the sub rank is the key: keys are distinct within a color).
    private int ColorOf(int worldRank, int mask) => Linear(worldRank, mask, inside: false);
    private int KeyOf(int worldRank, int mask) => Linear(worldRank, mask, inside: true);

    private int Linear(int worldRank, int mask, bool inside)
    {
        int index = 0;
        for (int i = 0; i < _shape.Length; i++)
            if (((mask >> i) & 1) == (inside ? 1 : 0))
                index = index * _shape[i] + worldRank / _strides[i] % _shape[i];
        return index;
    }

    internal RankContext GroupOf(RankContext world, string[] dimensions)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(dimensions);
        if (dimensions.Length == 0)
            throw new ArgumentException($"dimensions is empty; expected one or more of {Describe()}.", nameof(dimensions));
        int mask = 0;
        foreach (var d in dimensions)
        {
            int bit = 1 << IndexOf(d, nameof(dimensions));
            if ((mask & bit) != 0)
                throw new ArgumentException($"dimensions names \"{d}\" twice; expected each dimension once.", nameof(dimensions));
            mask |= bit;
        }
        if (mask == (1 << _shape.Length) - 1) return world;
        return _splits[mask]![world.Rank]
               ?? throw new InvalidOperationException($"world rank {world.Rank} has no group for ({string.Join(", ", dimensions)})");
    }
}

/// <summary>One rank's place in a <see cref="DeviceMesh"/>: its coordinates and its context in every sub-group.</summary>
public sealed class MeshRank
{
    private readonly DeviceMesh _mesh;
    private readonly int[] _coordinates;

    internal MeshRank(DeviceMesh mesh, RankContext world)
    {
        _mesh = mesh;
        World = world;
        _coordinates = mesh.CoordinatesOf(world.Rank).ToArray();
    }

    /// <summary>The mesh.</summary>
    public DeviceMesh Mesh => _mesh;

    /// <summary>This rank's context in the world group.</summary>
    public RankContext World { get; }

    /// <summary>This rank's coordinates, in <see cref="DeviceMesh.Names"/> order.</summary>
    public IReadOnlyList<int> Coordinates => _coordinates;

    /// <summary>This rank's coordinate along <paramref name="dimension"/>.</summary>
    public int Coordinate(string dimension) => _coordinates[_mesh.IndexOf(dimension)];

    /// <summary>
    /// This rank's context in the group spanning <paramref name="dimensions"/> (the other coordinates fixed at this rank's),
    /// whose ranks are numbered by the row-major order of their coordinates in those dimensions, taken in mesh order (the
    /// order of the names passed does not matter). All dimensions: <see cref="World"/>. An unknown name throws
    /// <see cref="ArgumentException"/> naming it and the mesh's dimensions.
    /// </summary>
    public RankContext Group(params string[] dimensions) => _mesh.GroupOf(World, dimensions);

    /// <inheritdoc />
    public override string ToString() =>
        $"world rank {World.Rank} at ({string.Join(", ", _mesh.Names.Select((n, i) => $"{n}={_coordinates[i]}"))})";
}
