# Plots and captions for `snakemake --report report.html` (the captions are written from the results).
#
# Each plot's caption is an output of this rule too, so Snakemake knows which job writes it. Snakemake reads a
# caption when the report is built, from the path given to report(), which it joins with this file's folder
# (snakemake/rules.py, Rule._set_inoutput_item: workflow.current_basedir.join(caption)): report_caption() gives
# the absolute path of the declared output, which that join leaves as it is.
#
# What is read and not an input. The aggregated files come from the aggregation's one directory output, declared
# as the input `aggregated`; the files inside it are params (a directory output is a single file to Snakemake, so
# its files cannot be inputs of their own: see workflow/aggregate.smk for why the aggregation has one). The raw
# results are params as well: only the first with a saved timeline is read, for the timeline plot, and each of
# them is already an input of the aggregation, which this rule waits for. Listing them as inputs would add one DAG
# edge per measurement to a job that reads one of them (10,000 in the scale benchmark's default campaign).
rule report_plots:
    input:
        summary=LAYOUT.summary,
        thermal=LAYOUT.thermal_gaps,
        aggregated=LAYOUT.aggregated_dir,
    output:
        efficiency=report(
            LAYOUT.report("efficiency"),
            caption=report_caption("efficiency"),
            category="1. Efficiency",
        ),
        drift=report(
            LAYOUT.report("drift"),
            caption=report_caption("drift"),
            category="2. Energy per cycle",
        ),
        latency=report(
            LAYOUT.report("latency"),
            caption=report_caption("latency"),
            category="3. Latency",
        ),
        timeline=report(
            LAYOUT.report("timeline"),
            caption=report_caption("timeline"),
            category="4. Timeline",
        ),
        load=report(
            LAYOUT.report("load"),
            caption=report_caption("load"),
            category="5. Load line",
        ),
        captions=report_captions(),
    log:
        LAYOUT.log("report_plots"),
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        aggregated=aggregated_results(),
        raw=all_raw_results(),
    script:
        "../scripts/report_plots.py"
