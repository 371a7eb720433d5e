"""Rule notify_campaign: the campaign-end webhook, and a record of what was sent."""

# Snakemake runs this file as the main script, with `snakemake` defined by its preamble. An engine that starts
# workers by re-running the main file (mpi4py under TensorRT-LLM, multiprocessing's spawn) imports it again under
# another name: then it must do nothing.
if __name__ == "__main__":
    from llenergymeasure.process import interrupt_in_one_line

    interrupt_in_one_line("campaign notification")
    from llenergymeasure.jobs import campaign_complete

    campaign_complete(
        summary=snakemake.input.summary,
        output=snakemake.output[0],
        log_path=snakemake.log[0],
        runtime=snakemake.config["_lem"],
    )
