# The embedded default model, built locally (no download) and shared by every campaign under results_dir.
rule build_model:
    output:
        directory(f"{MODELS_DIR}/{{model}}"),
    log:
        f"{MODELS_DIR}/logs/{{model}}.log",
    wildcard_constraints:
        model="lem-tiny-llama",
    conda:
        "../envs/llenergymeasure.yaml"
    script:
        "../scripts/build_model.py"
