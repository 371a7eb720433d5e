# Per experiment across cycles, the campaign summary, and the thermal-gap audit of every window.
rule aggregate:
    input:
        experiment_cycles,
    output:
        f"{ROOT}/aggregated/{{experiment}}.json",
    log:
        f"{ROOT}/logs/aggregate/{{experiment}}.log",
    wildcard_constraints:
        experiment=r"[a-z0-9][a-z0-9.-]*",
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        analysis=aggregate_params,
    script:
        "../scripts/aggregate.py"


rule summary:
    input:
        aggregated_results(),
    output:
        f"{ROOT}/summary.csv",
    log:
        f"{ROOT}/logs/summary.log",
    conda:
        "../envs/llenergymeasure.yaml"
    script:
        "../scripts/summary.py"


rule thermal_gaps:
    input:
        all_raw_results(),
    output:
        f"{ROOT}/thermal_gaps.json",
    log:
        f"{ROOT}/logs/thermal_gaps.log",
    conda:
        "../envs/llenergymeasure.yaml"
    script:
        "../scripts/thermal_gaps.py"
