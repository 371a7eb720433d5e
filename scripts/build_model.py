"""Rule build_model: the embedded random-weight model and its tokenizer."""

from llenergymeasure.jobs import build_model

build_model(output=snakemake.output[0], log_path=snakemake.log[0])
