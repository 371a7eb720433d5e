"""Rule build_model: the embedded random-weight model and its tokenizer."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line(f"model {snakemake.wildcards.model}")
    from llenergymeasure.jobs import build_model

    build_model(output=snakemake.output[0], log_path=snakemake.log[0])
