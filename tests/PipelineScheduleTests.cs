using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The pure logic of the pipeline schedules, no device and no transfers: every stage's actions are run in a simulator of
/// rendezvous transfers (a send and its receive complete together, when both stages have reached them; a paired
/// transfer's halves progress together), which checks that nothing deadlocks, that every receive gets the micro-batch it
/// expects, that each forward and backward has its data, and measures the peak of held micro-batches and, with fixed
/// forward and backward times, the idle fraction.
/// </summary>
public class PipelineScheduleTests
{
    private static readonly PipelineSchedule[] Schedules = [PipelineSchedule.GPipe, PipelineSchedule.OneForwardOneBackward];

    private sealed record Half(bool IsSend, int Peer, bool Gradient, int MicroBatch);

    private static List<Half> Halves(PipelineAction a, int s) => a.Kind switch
    {
        PipelineActionKind.RecvForward => [new(false, s - 1, false, a.MicroBatch)],
        PipelineActionKind.SendForward => [new(true, s + 1, false, a.MicroBatch)],
        PipelineActionKind.RecvBackward => [new(false, s + 1, true, a.MicroBatch)],
        PipelineActionKind.SendBackward => [new(true, s - 1, true, a.MicroBatch)],
        PipelineActionKind.SendForwardRecvBackward => [new(true, s + 1, false, a.MicroBatch), new(false, s + 1, true, a.Other)],
        PipelineActionKind.SendBackwardRecvForward => [new(true, s - 1, true, a.MicroBatch), new(false, s - 1, false, a.Other)],
        _ => [],
    };

    /// <summary>Runs every stage's actions; returns each stage's peak of held micro-batches, its busy time and the makespan
    /// (forward tf, backward tb, transfers free). Fails on a deadlock or a data error.</summary>
    internal static (int[] Peak, double[] Busy, double Makespan) Simulate(PipelineSchedule schedule, int stages, int m, double tf = 1, double tb = 1)
    {
        var actions = Enumerable.Range(0, stages).Select(s => PipelineSchedules.Actions(schedule, stages, s, m)).ToArray();
        var pc = new int[stages];
        var clock = new double[stages];
        var busy = new double[stages];
        var matched = Enumerable.Range(0, stages).Select(_ => new HashSet<int>()).ToArray(); // matched halves of the current action
        var hasInput = new bool[stages, m];
        var hasOutput = new bool[stages, m];
        var hasOutGrad = new bool[stages, m];
        var hasInGrad = new bool[stages, m];
        var forwarded = new bool[stages, m];
        var backwarded = new bool[stages, m];
        var live = new int[stages];
        var peak = new int[stages];
        for (int s = 0; s < stages; s++)
            for (int i = 0; i < m; i++) hasInput[0, i] = true;
        bool Done(int s) => pc[s] == actions[s].Count;
        while (!Enumerable.Range(0, stages).All(Done))
        {
            bool progress = false;
            for (int s = 0; s < stages; s++)
            {
                if (Done(s)) continue;
                var a = actions[s][pc[s]];
                int i = a.MicroBatch;
                if (a.Kind == PipelineActionKind.Forward)
                {
                    Assert.That(hasInput[s, i], $"stage {s}: Forward({i}) before its input arrived");
                    Assert.That(forwarded[s, i], Is.False, $"stage {s}: Forward({i}) twice");
                    forwarded[s, i] = hasOutput[s, i] = true;
                    peak[s] = Math.Max(peak[s], ++live[s]);
                    clock[s] += tf;
                    busy[s] += tf;
                    if (s == stages - 1) hasOutGrad[s, i] = true; // the loss
                    pc[s]++;
                    progress = true;
                    continue;
                }
                if (a.Kind == PipelineActionKind.Backward)
                {
                    Assert.That(forwarded[s, i] && hasOutGrad[s, i], $"stage {s}: Backward({i}) without its forward or output gradient");
                    Assert.That(backwarded[s, i], Is.False, $"stage {s}: Backward({i}) twice");
                    backwarded[s, i] = hasInGrad[s, i] = true;
                    live[s]--;
                    clock[s] += tb;
                    busy[s] += tb;
                    pc[s]++;
                    progress = true;
                    continue;
                }
                var halves = Halves(a, s);
                for (int h = 0; h < halves.Count; h++)
                {
                    if (matched[s].Contains(h)) continue;
                    var me = halves[h];
                    Assert.That(me.Peer, Is.InRange(0, stages - 1), $"stage {s}: {a} talks to stage {me.Peer}");
                    if (me.IsSend)
                        Assert.That(me.Gradient ? hasInGrad[s, me.MicroBatch] : hasOutput[s, me.MicroBatch], $"stage {s}: {a} sends what it does not have");
                    int t = me.Peer;
                    if (Done(t)) continue;
                    var theirs = Halves(actions[t][pc[t]], t);
                    for (int k = 0; k < theirs.Count; k++)
                    {
                        var other = theirs[k];
                        if (matched[t].Contains(k) || other.Peer != s || other.IsSend == me.IsSend) continue;
                        Assert.That((other.Gradient, other.MicroBatch), Is.EqualTo((me.Gradient, me.MicroBatch)),
                            $"stage {s}'s {a} meets stage {t}'s {actions[t][pc[t]]}: the transfer carries the wrong micro-batch");
                        matched[s].Add(h);
                        matched[t].Add(k);
                        double when = Math.Max(clock[s], clock[t]);
                        clock[s] = clock[t] = when;
                        var recv = me.IsSend ? other : me;
                        int receiver = me.IsSend ? t : s;
                        if (recv.Gradient) hasOutGrad[receiver, recv.MicroBatch] = true;
                        else hasInput[receiver, recv.MicroBatch] = true;
                        progress = true;
                        break;
                    }
                }
                foreach (var st in new[] { s }.Concat(halves.Select(x => x.Peer)).Distinct())
                {
                    if (st < 0 || st >= stages || Done(st)) continue;
                    var cur = actions[st][pc[st]];
                    var hs = Halves(cur, st);
                    if (hs.Count > 0 && matched[st].Count == hs.Count)
                    {
                        matched[st].Clear();
                        pc[st]++;
                        progress = true;
                    }
                }
            }
            if (!progress)
                Assert.Fail($"{schedule}, {stages} stages, m = {m}: deadlock at " +
                            string.Join("; ", Enumerable.Range(0, stages).Select(s => $"stage {s}: {(Done(s) ? "done" : actions[s][pc[s]].ToString())}")));
        }
        for (int s = 0; s < stages; s++)
            for (int i = 0; i < m; i++)
                Assert.That(forwarded[s, i] && backwarded[s, i], $"stage {s}: micro-batch {i} not forwarded and backwarded once");
        return (peak, busy, clock.Max());
    }

    [Test]
    public void EveryScheduleRunsWithoutDeadlockAndHoldsWhatItPromises(
        [ValueSource(nameof(Schedules))] PipelineSchedule schedule, [Range(1, 6)] int stages)
    {
        for (int m = 1; m <= 10; m++)
        {
            var (peak, _, _) = Simulate(schedule, stages, m);
            for (int s = 0; s < stages; s++)
            {
                int want = schedule == PipelineSchedule.GPipe ? m : Math.Min(m, stages - s);
                Assert.That(peak[s], Is.EqualTo(want), $"{schedule}, {stages} stages, m = {m}: stage {s}'s peak of held micro-batches");
                Assert.That(PipelineSchedules.PeakMicroBatches(schedule, stages, s, m), Is.EqualTo(want), "PeakMicroBatches");
                var acts = PipelineSchedules.Actions(schedule, stages, s, m);
                Assert.That(acts.Count(a => a.Kind == PipelineActionKind.Forward), Is.EqualTo(m));
                Assert.That(acts.Count(a => a.Kind == PipelineActionKind.Backward), Is.EqualTo(m));
            }
        }
    }

    [Test]
    public void SimulatedIdleFractionIsTheFormula([ValueSource(nameof(Schedules))] PipelineSchedule schedule,
        [Values(1, 2, 3, 4)] int stages, [Values(1, 2, 5, 8)] int m)
    {
        // Equal stage times (tb = 2·tf, as a backward of two GEMMs per forward GEMM): the step lasts (m + p − 1)(tf + tb)
        // and every stage is busy m(tf + tb) of it.
        var (_, busy, makespan) = Simulate(schedule, stages, m, tf: 1, tb: 2);
        Assert.That(makespan, Is.EqualTo((m + stages - 1) * 3.0), "makespan");
        for (int s = 0; s < stages; s++)
            Assert.That(1 - busy[s] / makespan, Is.EqualTo(PipelineSchedules.IdleFraction(stages, m)).Within(1e-12), $"stage {s}");
    }

    [Test]
    public void OneForwardOneBackwardPairsItsSteadyStateTransfers()
    {
        // 4 stages, 8 micro-batches: a middle stage's steady state alternates F, send-forward/recv-backward, B,
        // send-backward/recv-forward (Megatron-Core's order).
        var acts = PipelineSchedules.Actions(PipelineSchedule.OneForwardOneBackward, 4, 1, 8).Select(a => a.ToString()).ToArray();
        Assert.That(acts.Take(7), Is.EqualTo(new[]
        {
            "RecvForward(0)", "Forward(0)", "SendForward(0)", "RecvForward(1)", "Forward(1)", "SendForward(1)", "RecvForward(2)",
        }));
        Assert.That(acts.Skip(7).Take(4), Is.EqualTo(new[]
        {
            "Forward(2)", "SendForwardRecvBackward(2, 0)", "Backward(0)", "SendBackwardRecvForward(0, 3)",
        }));
        Assert.That(acts.TakeLast(3), Is.EqualTo(new[] { "RecvBackward(7)", "Backward(7)", "SendBackward(7)" }));
    }

    [Test]
    public void BadArgumentsAreNamed()
    {
        Assert.That(() => PipelineSchedules.Actions(PipelineSchedule.GPipe, 0, 0, 1),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("stages"));
        Assert.That(() => PipelineSchedules.Actions(PipelineSchedule.GPipe, 2, 2, 1),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("stage"));
        Assert.That(() => PipelineSchedules.Actions(PipelineSchedule.GPipe, 2, 0, 0),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("microBatches"));
        Assert.That(() => PipelineSchedules.Actions((PipelineSchedule)7, 2, 0, 1),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("schedule"));
        Assert.That(() => PipelineSchedules.IdleFraction(0, 1),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("stages"));
        Assert.That(() => FeedForwardStage.LayerRange(1, 2, 0),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("layers"));
    }

    [Test]
    public void LayersSplitUnevenlyFirstStagesTakeMore()
    {
        Assert.That(Enumerable.Range(0, 2).Select(s => FeedForwardStage.LayerRange(5, 2, s)), Is.EqualTo(new[] { (0, 3), (3, 2) }));
        Assert.That(Enumerable.Range(0, 3).Select(s => FeedForwardStage.LayerRange(7, 3, s)), Is.EqualTo(new[] { (0, 3), (3, 2), (5, 2) }));
    }
}
