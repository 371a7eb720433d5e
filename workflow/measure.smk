# One job per experiment x cycle. The experiment config's non-default values are the job's params (plain data: editing a
# value gives a new experiment id, so a finished measurement is never overwritten). Priorities follow the
# campaign's order (interleaved / grouped / shuffled); the thermal gap is waited inside the job, right before
# its window. A measurement takes every core Snakemake may use, so that no other job (an aggregation, another
# measurement) shares the CPU with a measurement window. With --sdm apptainer the job runs in its backend's image
# (the campaign's `containers:`); the conda environment is the alternative for --use-conda.
rule measure:
    input:
        unpack(measure_inputs),
    output:
        raw=protected(LAYOUT.raw("{experiment}", "{cycle}")),
    log:
        LAYOUT.measure_log("{experiment}", "{cycle}"),
    benchmark:
        LAYOUT.measure_benchmark("{experiment}", "{cycle}")
    wildcard_constraints:
        experiment=r"[a-z0-9][a-z0-9.-]*",
        cycle=r"[1-9][0-9]*",
    priority: measure_priority
    conda:
        "../envs/llenergymeasure.yaml"
    container:
        measure_container
    threads: all_cores()
    resources:
        gpu=measure_gpus,
    params:
        experiment=measure_params,
    script:
        "../scripts/measure.py"
