"""Rule aggregate: every experiment across its cycles, and summary.csv."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line("aggregation")
    from llenergymeasure.jobs import aggregate

    aggregate(
        inputs=snakemake.input.raw,
        out_dir=snakemake.output.aggregated,
        summary=snakemake.output.summary,
        log_path=snakemake.log[0],
        names=snakemake.params.names,
        analysis=snakemake.params.analysis,
        failures=snakemake.output.failures,
        runtime=snakemake.config["_lem"],
    )
