"""Checkpoint decide: after a cycle of an experiment, stop it or ask for one more (precision-targeted campaigns)."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line(f"decision of {snakemake.wildcards.experiment} after cycle {snakemake.wildcards.n}")
    from llenergymeasure.jobs import decide

    decide(
        raw=list(snakemake.input.raw),
        experiment_id=snakemake.wildcards.experiment,
        after_cycle=int(snakemake.wildcards.n),
        target=snakemake.params.target,
        output=snakemake.output[0],
        log_path=snakemake.log[0],
    )
