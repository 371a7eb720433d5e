"""Rule summary: aggregated results -> summary.csv (one row per experiment)."""

from llenergymeasure.jobs import summarise

summarise(inputs=snakemake.input, output=snakemake.output[0], log_path=snakemake.log[0])
