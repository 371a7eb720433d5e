"""Rule thermal_gaps: audit of the gap before every measurement window."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line("thermal-gap audit")
    from llenergymeasure.jobs import thermal_gaps

    thermal_gaps(aggregated=snakemake.params.aggregated, output=snakemake.output[0], log_path=snakemake.log[0])
