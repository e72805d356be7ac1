using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>The "calibrate" scenario: <see cref="ClusterCalibration.Measure(ProcessGroup, CalibrationOptions?, Action{string}?)"/>
/// over the job's processes on a small grid (a few seconds).</summary>
public static class CalibrationScenario
{
    public static readonly CalibrationOptions Options = new()
    {
        GemmM = [1, 64], GemmN = [64, 256], GemmK = [64, 256],
        BlockRows = [4, 16], BlockShare = [64], BlockHidden = [128],
        GroupSizes = [2, 4, 8], CollectiveBytes = [4096, 65536], MinSeconds = 0.002,
    };
}
