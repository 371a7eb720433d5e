"""Rule aggregate: every cycle of one experiment -> statistics across cycles."""

from llenergymeasure.jobs import aggregate

aggregate(
    inputs=snakemake.input, output=snakemake.output[0], log_path=snakemake.log[0], params=snakemake.params.analysis
)
