"""Rule notify_campaign: the campaign-end webhook, and a record of what was sent."""

from llenergymeasure.jobs import campaign_complete

campaign_complete(
    summary=snakemake.input.summary,
    output=snakemake.output[0],
    log_path=snakemake.log[0],
    runtime=snakemake.config["_lem"],
)
