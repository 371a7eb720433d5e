"""Rule settle: an experiment's cycles once its decisions have stopped it (precision-targeted campaigns)."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.jobs import settle

    settle(
        decision=snakemake.input.decision,
        raw=list(snakemake.input.raw),
        experiment_id=snakemake.wildcards.experiment,
        output=snakemake.output[0],
        log_path=snakemake.log[0],
    )
