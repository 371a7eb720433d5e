"""Rule report_plots: the report's plots and their captions."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from pathlib import Path

    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line("report")
    from llenergymeasure.jobs import report_plots

    report_plots(
        aggregated=snakemake.params.aggregated,
        raw=snakemake.params.raw,
        out_dir=str(Path(snakemake.output.efficiency).parent),
        log_path=snakemake.log[0],
    )
