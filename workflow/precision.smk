# Precision-targeted campaigns (execution.precision_target): every experiment runs min_cycles cycles; after each
# cycle from then on, a decision either stops it or asks for one more, up to max_cycles. Without a target the
# checkpoint below is not in the DAG: the campaign's jobs, files and results are those of a fixed number of cycles.
#
# Why checkpoints. How many cycles an experiment needs is known only once its cycles have run, and a Snakemake DAG
# is fixed at start unless a checkpoint's output re-opens it. An input function that asks for a checkpoint's output
# before that job has run gets IncompleteCheckpointException (snakemake/checkpoints.py, Checkpoint.get); the
# requesting job then depends on the checkpoint job instead (snakemake/rules.py, Rule.expand_input:
# handle_incomplete_checkpoint makes the exception's target file the input, with or without unpack), and once the
# checkpoint has run the input function is called again
# (snakemake/dag.py, update_checkpoint_dependencies, which loops until no new checkpoint target appears). Other
# mechanisms do not fit: a fixed DAG of max_cycles would measure everything; stopping early by failing jobs would
# leave failures behind; re-invoking Snakemake per round would serialise the campaign round by round (one slow
# experiment would hold every other) and lose the cluster executor's view of the whole campaign.
#
# One checkpoint job per experiment and cycle (decide), so each experiment moves on its own: a decision waits for
# that experiment's cycles only. The aggregation's input function (llenergymeasure.workflow.aggregate_inputs) walks
# every experiment's decisions, and for an experiment whose next decision is still to be taken it lists that
# decision's file flagged as a checkpoint target (what Snakemake itself makes of a raised
# IncompleteCheckpointException) and goes on with the next experiment, instead of letting the exception end the
# call: a raised exception would stop the walk at the first missing decision, so the DAG would learn of one
# decision at a time and the campaign would run one experiment's round after another. After any decision is taken
# Snakemake evaluates the function again (dag.py, update_checkpoint_dependencies: the jobs depending on a finished
# checkpoint), which extends only that experiment's part. No job per experiment sits between the decisions and the
# aggregation: a 10,000-experiment campaign's minimum plan is its measurements and one decision each.
#
# The price of a checkpoint per decision: before it starts the next job, Snakemake re-derives the aggregation job
# (this walk, which skips the experiments already settled, and every input of it) and updates the whole DAG
# (dag.py: update_checkpoint_dependencies, then postprocess_after_update). That pause grows with the campaign;
# benchmarks/decisions.py measures it (README, "Big campaigns").
#
# Resume. A decision is a file computed from cycles 1..n and the target alone (params): while those stay as they
# are, Snakemake never reruns it (the workflow profile's rerun triggers: mtime, params, input), and on restart it
# takes the decisions already on disk as done (update_checkpoint_dependencies with jobs=None: checkpoints whose
# output is present and which need no rerun). So a campaign killed at any point goes on where it stopped, and a
# decision already taken is read, never taken again differently. Changing the target or the confidence level does
# take the decisions again (their params changed); no measurement is ever repeated for that (raw results are
# protected and never rewritten).
#
# Order and gaps. Priorities rank every cycle up to max_cycles by the campaign's order rule (interleaved, grouped,
# shuffled: llenergymeasure.campaign.plan), so a cycle added later takes its place in that order among the
# measurements still to run; the local scheduler orders ready jobs by priority only, so decisions outrank every
# measurement and are taken as soon as their cycle is done. Thermal gaps are waited inside each measurement job,
# as for any cycle.


checkpoint decide:
    input:
        raw=decision_inputs,
    output:
        LAYOUT.decision("{experiment}", "{n}"),
    log:
        LAYOUT.decide_log("{experiment}", "{n}"),
    wildcard_constraints:
        experiment=r"[a-z0-9][a-z0-9.-]*",
        n=r"[1-9][0-9]*",
    priority: decision_priority()
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        target=precision_params(),
    script:
        "../scripts/decide.py"
