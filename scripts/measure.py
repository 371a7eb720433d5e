"""Rule measure: one experiment x one cycle -> one raw result."""

from llenergymeasure.jobs import measure

measure(
    config=snakemake.params.experiment,
    experiment_id=snakemake.wildcards.experiment,
    cycle=int(snakemake.wildcards.cycle),
    model_path=snakemake.input.get("model", snakemake.params.experiment["model_name"]),
    output=snakemake.output.raw,
    log_path=snakemake.log[0],
    runtime=snakemake.config["_lem"],
)
