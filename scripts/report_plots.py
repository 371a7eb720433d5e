"""Rule report_plots: the report's plots and their captions."""

from pathlib import Path

from llenergymeasure.jobs import report_plots

report_plots(
    aggregated=snakemake.params.aggregated,
    raw=snakemake.params.raw,
    out_dir=str(Path(snakemake.output.efficiency).parent),
    log_path=snakemake.log[0],
)
