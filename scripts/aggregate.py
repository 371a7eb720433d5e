"""Rule aggregate: every experiment across its cycles, and summary.csv."""

from llenergymeasure.jobs import aggregate

aggregate(
    inputs=snakemake.input,
    out_dir=snakemake.output.aggregated,
    summary=snakemake.output.summary,
    log_path=snakemake.log[0],
    names=snakemake.params.names,
    analysis=snakemake.params.analysis,
    failures=snakemake.output.failures,
    runtime=snakemake.config["_lem"],
)
