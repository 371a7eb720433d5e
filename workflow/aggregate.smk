# Every experiment across its cycles and the campaign summary, in one job (cheap per experiment, so one job keeps
# big campaigns fast), and the thermal-gap audit of every window (read from the aggregated per-cycle records, so
# that only the aggregation job has one DAG edge per raw result). The aggregated files are one directory output:
# a fixed set of outputs keeps Snakemake's provenance (input set, params) in charge of reruns whatever the
# experiments are, and a rerun clears files of experiments that left the campaign.
rule aggregate:
    input:
        all_raw_results(),
    output:
        aggregated=directory(f"{ROOT}/aggregated"),
        summary=report(
            f"{ROOT}/summary.csv",
            caption="report/summary.rst",
            category="0. Summary",
        ),
    log:
        f"{ROOT}/logs/aggregate.log",
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        names=config_names(),
        analysis=config["analysis"],
    script:
        "../scripts/aggregate.py"


rule thermal_gaps:
    input:
        aggregated=f"{ROOT}/aggregated",
        summary=f"{ROOT}/summary.csv",
    output:
        f"{ROOT}/thermal_gaps.json",
    log:
        f"{ROOT}/logs/thermal_gaps.log",
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        aggregated=aggregated_results(),
    script:
        "../scripts/thermal_gaps.py"
