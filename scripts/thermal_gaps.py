"""Rule thermal_gaps: audit of the gap before every measurement window."""

from llenergymeasure.jobs import thermal_gaps

thermal_gaps(inputs=snakemake.input, output=snakemake.output[0], log_path=snakemake.log[0])
