"""Rule measure: one experiment x one cycle -> one raw result."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    import os
    import sys

    try:
        import llenergymeasure  # noqa: F401
    except ModuleNotFoundError:
        # In a stock engine image the package is not installed: use this checkout's copy (the container sees the
        # working directory). Only the standard library, nvidia-ml-py and the engine are needed from the image.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "src"))

    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line(f"{snakemake.wildcards.experiment} cycle {snakemake.wildcards.cycle}")
    from llenergymeasure.jobs import end_published_job, measure

    measure(
        config=snakemake.params.experiment,
        experiment_id=snakemake.wildcards.experiment,
        cycle=int(snakemake.wildcards.cycle),
        model_path=snakemake.input.get("model", snakemake.params.experiment["model_name"]),
        output=snakemake.output.raw,
        log_path=snakemake.log[0],
        runtime=snakemake.config["_lem"],
    )
    end_published_job()
