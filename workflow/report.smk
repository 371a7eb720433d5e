# Plots and captions for `snakemake --report report.html` (the captions are written from the results).
rule report_plots:
    input:
        summary=f"{ROOT}/summary.csv",
        thermal=f"{ROOT}/thermal_gaps.json",
    output:
        efficiency=report(
            f"{ROOT}/report/efficiency.svg",
            caption=report_caption("efficiency"),
            category="1. Efficiency",
        ),
        drift=report(
            f"{ROOT}/report/drift.svg",
            caption=report_caption("drift"),
            category="2. Energy per cycle",
        ),
        latency=report(
            f"{ROOT}/report/latency.svg",
            caption=report_caption("latency"),
            category="3. Latency",
        ),
        timeline=report(
            f"{ROOT}/report/timeline.svg",
            caption=report_caption("timeline"),
            category="4. Timeline",
        ),
    log:
        f"{ROOT}/logs/report_plots.log",
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        aggregated=aggregated_results(),
        raw=all_raw_results(),
    script:
        "../scripts/report_plots.py"
