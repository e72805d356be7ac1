namespace Shardwise.Parallel;

/// <summary>The order in which a pipeline's stages run the forward and backward passes of a step's micro-batches.</summary>
public enum PipelineSchedule
{
    /// <summary>GPipe: every micro-batch's forward, then every backward. A stage keeps the activations of all
    /// micro-batches of the step.</summary>
    GPipe,

    /// <summary>1F1B (PipeDream-Flush, Megatron's default): after a warm-up of (stages − stage − 1) forwards, each stage
    /// alternates one forward and one backward. Stage s keeps at most (stages − s) micro-batches' activations. Same
    /// idle fraction as GPipe, (stages − 1) / (micro-batches + stages − 1) with equal stage times.</summary>
    OneForwardOneBackward,
}
