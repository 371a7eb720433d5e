"""Rule thermal_gaps: audit of the gap before every measurement window."""

from llenergymeasure.jobs import thermal_gaps

thermal_gaps(aggregated=snakemake.params.aggregated, output=snakemake.output[0], log_path=snakemake.log[0])
