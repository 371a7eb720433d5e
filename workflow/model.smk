# The embedded default model, built locally (no download) and shared by every campaign under results_dir.
rule build_model:
    output:
        directory(f"{MODELS_DIR}/{{model}}"),
    wildcard_constraints:
        model="lem-tiny-llama",
    log:
        f"{MODELS_DIR}/logs/{{model}}.log",
    script:
        "../scripts/build_model.py"
