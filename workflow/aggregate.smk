# Every experiment across its cycles and the campaign summary, in one job (cheap per experiment, so one job keeps
# big campaigns fast), and the thermal-gap audit of every window (read from the aggregated per-cycle records, so
# that only the aggregation job has one DAG edge per raw result). The aggregated files are one directory output:
# a fixed set of outputs keeps Snakemake's provenance (input set, params) in charge of reruns whatever the
# experiments are (an experiment that joins or leaves the campaign changes the job's inputs, so it reruns), a rerun
# clears files of experiments that left the campaign, and the DAG holds three outputs here instead of one per
# experiment (benchmarks/scale.py times the dry run of 10,000 experiments). The rules downstream (thermal_gaps,
# report_plots) therefore declare the directory as their input and take the files in it as params: Snakemake sees a
# directory output as one file, so its files cannot be inputs of their own. The outputs are update():
# Snakemake then neither deletes them before the job nor after a failed one, and restores its backup of them
# when the job fails (snakemake/jobs.py: remove_existing_output skips "update" outputs, postprocess restores
# them), so a bad raw result never costs the previous summary. failures.json lists every planned measurement
# without a raw result (see llenergymeasure/failures.py: after failed measurements the workflow's onerror
# handler aggregates what completed). With a precision target its input function walks each experiment's
# decisions (workflow/precision.smk): the job runs once every experiment is stopped, on the cycles they settled on.
rule aggregate:
    input:
        raw=aggregate_inputs,
        analysis=analysis_stamp,
    output:
        aggregated=update(directory(LAYOUT.aggregated_dir)),
        summary=update(
            report(
                LAYOUT.summary,
                caption="report/summary.rst",
                category="0. Summary",
            )
        ),
        failures=update(LAYOUT.failures),
    log:
        LAYOUT.log("aggregate"),
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        names=config_names(),
        analysis=analysis_params(),
    script:
        "../scripts/aggregate.py"


rule thermal_gaps:
    input:
        aggregated=LAYOUT.aggregated_dir,
        summary=LAYOUT.summary,
    output:
        LAYOUT.thermal_gaps,
    log:
        LAYOUT.log("thermal_gaps"),
    conda:
        "../envs/llenergymeasure.yaml"
    params:
        aggregated=aggregated_results(),
    script:
        "../scripts/thermal_gaps.py"
