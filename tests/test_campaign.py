"""Expansion of grid x configs, experiment ids, and measurement order."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from llenergymeasure.campaign import (
    expand,
    experiment_id,
    measurement_order,
    plan,
    resolve_campaign,
    resolve_experiment,
)
from llenergymeasure.errors import ConfigError


def campaign(tmp_path, **raw):
    base = {"campaign_name": "t", "model": "lem-tiny-llama"}
    return resolve_campaign({**base, **raw}, tmp_path, tmp_path, env={})


def test_grid_product_and_names(tmp_path):
    c = campaign(
        tmp_path,
        grid={
            "backends": ["pytorch"],
            "shared": {"fp_precision": ["float32", "bfloat16"], "max_output_tokens": 16},
            "backend_overrides": {"pytorch": {"batch_size": [1, 4, 8]}},
        },
    )
    exp = expand(c)
    assert len(exp.experiments) == 6
    names = [e.config_name for e in exp.experiments]
    assert len(set(names)) == 6
    assert "pytorch-lem-tiny-llama-fp_precisionbfloat16-batch_size4" in names
    assert all(e.config["max_output_tokens"] == 16 for e in exp.experiments)
    assert {e.config["pytorch"]["batch_size"] for e in exp.experiments} == {1, 4, 8}


def test_combinations_an_engine_cannot_run_are_dropped_with_reason(tmp_path):
    c = campaign(
        tmp_path,
        grid={
            "backends": ["pytorch", "vllm", "tensorrt"],
            "shared": {"fp_precision": ["float32", "float16"], "max_output_tokens": [4, 16], "min_output_tokens": 8},
        },
    )
    exp = expand(c)
    kept = sorted((e.backend, e.config["fp_precision"]) for e in exp.experiments)
    assert kept == [
        ("pytorch", "float16"),
        ("pytorch", "float32"),
        ("tensorrt", "float16"),
        ("vllm", "float16"),
        ("vllm", "float32"),
    ]
    assert all(e.config["max_output_tokens"] == 16 for e in exp.experiments)
    reasons = [r for _, r in exp.dropped]
    assert sum("min_output_tokens = 8 is larger than max_output_tokens = 4" in r for r in reasons) == 5
    assert reasons.count("TensorRT-LLM builds float16/bfloat16 engines: fp_precision = float32 is not supported") == 2
    assert len(exp.dropped) == 7
    ids = {e.backend: e.experiment_id for e in exp.experiments if e.config["fp_precision"] == "float16"}
    assert "-seqs256-" in ids["vllm"] and "-bs8-" in ids["tensorrt"] and "-bs1-" in ids["pytorch"]


@pytest.mark.parametrize(
    ("experiment", "reason"),
    [
        ({"backend": "vllm", "device": "cpu", "vllm": {"block_size": 16}}, "CPU attention takes multiples of 32"),
        ({"backend": "tensorrt", "device": "cpu"}, "backend = tensorrt runs on CUDA GPUs only"),
        ({"backend": "vllm", "pytorch": {"load_in_4bit": True}}, "pytorch.load_in_4bit is set, but backend = vllm"),
        ({"backend": "pytorch", "vllm": {"max_num_seqs": 8}}, "vllm.max_num_seqs is set, but backend = pytorch"),
        (
            {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}},
            "vllm.tensor_parallel_size x pipeline_parallel_size = 2, but gpus lists 1 GPU(s) [0]",
        ),
        ({"backend": "vllm", "vllm": {"tensor_parallel_size": 2}, "gpus": [0, 1, 2]}, "= 2, but gpus lists 3 GPU(s)"),
        (
            {"backend": "tensorrt", "tensorrt": {"tp_size": 2, "pp_size": 2}, "gpus": [0, 1]},
            "tensorrt.tp_size x pp_size = 4, but gpus lists 2",
        ),
        (
            {"backend": "pytorch", "device": "cuda", "pytorch": {"num_processes": 2}},
            "pytorch.num_processes = 2, but gpus lists 1",
        ),
        (
            {"backend": "pytorch", "device": "cuda", "gpus": [0, 1]},
            "pytorch.num_processes = 1, but gpus lists 2 GPU(s) [0, 1]",
        ),
        (
            {"backend": "pytorch", "device": "auto", "gpus": [0, 1]},
            "pytorch.num_processes = 1, but gpus lists 2 GPU(s) [0, 1]",
        ),
        (
            {"backend": "pytorch", "gpus": [2, 3, 4], "pytorch": {"num_processes": 2}},
            "pytorch.num_processes = 2, but gpus lists 3",
        ),
        (
            {"backend": "pytorch", "device": "cpu", "pytorch": {"load_in_8bit": True}},
            "needs a CUDA device, but device = cpu",
        ),
        (
            {"backend": "pytorch", "device": "cuda", "pytorch": {"load_in_8bit": True, "load_in_4bit": True}},
            "mutually exclusive",
        ),
        ({"backend": "pytorch", "adapter": "some/lora"}, "adapter (LoRA) is supported on backend vllm only"),
        ({"backend": "vllm", "adapter": "some/lora"}, "adapter is set, but vllm.lora.enabled = false"),
        (
            {"backend": "vllm", "vllm": {"speculative": {"method": "eagle"}}},
            "vllm.speculative.method = eagle needs vllm.speculative.model",
        ),
        ({"backend": "vllm", "vllm": {"speculative": {"method": "ngram"}}}, "needs vllm.speculative.prompt_lookup_max"),
        (
            {"backend": "vllm", "vllm": {"max_model_len": 100}},
            "vllm.max_model_len = 100 is smaller than max_input_tokens + max_output_tokens = 640",
        ),
        (
            {"backend": "vllm", "vllm": {"max_num_batched_tokens": 100}},
            "vllm.max_num_batched_tokens = 100 is smaller than vllm.max_num_seqs = 256",
        ),
        (
            {"backend": "vllm", "vllm": {"speculative": {"method": "mlp", "model": "x/y"}}},
            "is not supported by vLLM 0.32.0",
        ),
        (
            {"backend": "vllm", "adapter": "a/b", "vllm": {"lora": {"enabled": True, "max_rank": 24}}},
            "vllm.lora.max_rank = 24: vLLM 0.32.0 accepts",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"max_input_len": 100}},
            "tensorrt.max_input_len = 100 is smaller than max_input_tokens = 512",
        ),
        ({"backend": "vllm", "no_weights": True, "model_name": "llama-3.2-1b"}, "backend vllm loads checkpoints only"),
        (
            {"backend": "tensorrt", "tensorrt": {"kv_cache_type": "continuous"}},
            "chunked context and KV cache reuse need a paged KV cache",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"draft_model": "x/y"}},
            "draft-target speculative decoding on its PyTorch flow only",
        ),
        ({"backend": "tensorrt", "tensorrt": {"builder_opt_level": 5}}, "BuildConfig has no optimisation level"),
        (
            {"backend": "tensorrt", "tensorrt": {"quantization": "int8_weight_only", "engine_path": "/e"}},
            "is applied while building",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"quantization": "fp8", "calibration": {"split": "validation"}}},
            "CalibConfig has no split",
        ),
        ({"pytorch": {"torch_compile_backend": "cudagraphs"}}, "has no effect while pytorch.torch_compile = false"),
        (
            {"pytorch": {"torch_compile": "max-autotune", "torch_compile_backend": "aot_eager"}},
            "is a mode of the inductor backend",
        ),
        ({"device": "cpu", "pytorch": {"torch_compile": "reduce-overhead"}}, "need a CUDA device, but device = cpu"),
        (
            {"device": "cpu", "pytorch": {"torch_compile": True, "torch_compile_backend": "cudagraphs"}},
            "need a CUDA device",
        ),
        ({"device": "cuda", "pytorch": {"torch_compile": True, "load_in_4bit": True}}, "does not compile BitsAndBytes"),
        (
            {"pytorch": {"cache_implementation": "static", "use_cache": False}},
            "has no effect with pytorch.use_cache = false",
        ),
        ({"warmup": {"enabled": False, "mode": "cv"}}, "warmup.mode = cv, but warmup.enabled = false"),
        (
            {"backend": "tensorrt", "tensorrt": {"quantization": "int4_gptq"}},
            "int4_gptq: TensorRT-LLM 1.0.0 cannot build it",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"quantization": "fp8", "calibration": {"dataset": "wikitext"}}},
            "calibrates text models from cnn_dailymail, pileval",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"quantization": "fp8"}},
            "cnn_dailymail is downloaded while the engine builds",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"num_draft_tokens": 3}},
            "num_draft_tokens = 3 applies to speculative decoding",
        ),
        (
            {"backend": "tensorrt", "tensorrt": {"engine_path": "/e", "strongly_typed": False}},
            "is applied while building",
        ),
        ({"backend": "vllm", "vllm": {"swap_space": 8}}, "vLLM 0.32.0 has no swap space"),
        (
            {"backend": "vllm", "device": "cpu", "vllm": {"cpu_offload_gb": 2}},
            "on a CPU the weights are in host memory already",
        ),
        ({"backend": "vllm", "vllm": {"lora": {"max_rank": 32}}}, "vllm.lora.max_rank = 32 applies to LoRA adapters"),
        (
            {"backend": "vllm", "vllm": {"distributed_backend": "ray"}},
            "with one GPU vLLM runs its single worker in process",
        ),
        ({"backend": "pytorch", "pytorch": {"batching_strategy": "dynamic"}}, "set pytorch.max_tokens_per_batch"),
        ({"backend": "pytorch", "pytorch": {"max_tokens_per_batch": 600}}, "forms batches of batch_size prompts"),
        (
            {"backend": "pytorch", "pytorch": {"bnb_4bit_quant_type": "fp4"}},
            "applies to 4-bit BitsAndBytes weights only",
        ),
        (
            {"backend": "pytorch", "decoder": {"preset": "deterministic", "top_p": 0.9}},
            "decoder.top_p = 0.9 shapes sampling",
        ),
        ({"backend": "pytorch", "device": "cpu", "gpus": [1]}, "gpus = [1] selects CUDA devices, but device = cpu"),
        (
            {"backend": "pytorch", "baseline": {"enabled": False, "duration_s": 5}},
            "baseline.duration_s = 5 has no effect",
        ),
        (
            {"backend": "pytorch", "dataset": {"split": "test"}},
            "dataset.split = test chooses part of a Hugging Face dataset",
        ),
        (
            {"backend": "pytorch", "device": "cpu", "energy": {"backend": "nvml"}},
            "energy.backend = nvml reads GPU energy counters",
        ),
    ],
)
def test_capability_checks_give_the_reason(experiment, reason):
    from llenergymeasure.campaign import resolve_experiment, semantic_problem

    problem = semantic_problem(resolve_experiment({"model_name": "some/model", **experiment}))
    assert problem is not None and reason in problem


def test_a_capability_problem_in_an_experiment_file_stops_the_campaign(tmp_path):
    (tmp_path / "trt.yaml").write_text("model_name: some/model\nbackend: tensorrt\nfp_precision: float32\n")
    c = campaign(tmp_path, configs=["trt.yaml"])
    with pytest.raises(ConfigError, match=r"configs\[trt.yaml\].*fp_precision = float32 is not supported"):
        expand(c)


def test_bad_grid_value_is_an_error_naming_the_key(tmp_path):
    c = campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {"pytorch.batch_size": [1, 0]}})
    with pytest.raises(ConfigError, match=r"key 'grid.shared.pytorch.batch_size' = 0 is out of range; allowed: >= 1"):
        expand(c)


def test_unknown_grid_key_has_hint(tmp_path):
    c = campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {"pytorch.batchsize": [1]}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'grid.shared.pytorch.batchsize'.*did you mean 'pytorch.batch_size'"
    ):
        expand(c)


@pytest.mark.parametrize(
    ("where", "key", "value", "suggested"),
    [
        ("pytorch", "batch_sise", [1, 2], "grid.backend_overrides.pytorch.batch_size"),
        ("pytorch", "pytorch.batch_size", [1, 2], "grid.backend_overrides.pytorch.batch_size"),
        ("pytorch", "max_output_tokens", 4, "grid.shared.max_output_tokens"),
        ("pytorch", "enforce_eager", True, "grid.backend_overrides.vllm.enforce_eager"),
        ("shared", "decoder.temprature", 0.5, "grid.shared.decoder.temperature"),
    ],
)
def test_the_suggested_grid_key_is_accepted_where_it_is_suggested(tmp_path, where, key, value, suggested):
    """A misspelt or misplaced grid key gets a suggestion that, written as suggested, is accepted: a key of
    grid.backend_overrides.<backend> is named by its whole path (the experiment's dotted key written there would be
    the same error again), and a key that belongs elsewhere is named where it belongs."""
    grid: dict = {"backends": ["pytorch"], "shared": {}, "backend_overrides": {"pytorch": {}}}
    (grid["shared"] if where == "shared" else grid["backend_overrides"][where])[key] = value
    with pytest.raises(ConfigError) as err:
        expand(campaign(tmp_path, grid=grid))
    (problem,) = err.value.problems
    shown = re.search(r"did you mean '([^']+)'\?", problem).group(1)
    # in grid.shared a key is named as written there, in grid.backend_overrides by its whole path
    assert (f"grid.shared.{shown}" if where == "shared" else shown) == suggested, problem
    fixed: dict = {"backends": ["pytorch", "vllm"], "shared": {}, "backend_overrides": {}}
    _, section, rest = suggested.split(".", 2)
    if section == "shared":
        fixed["shared"][rest] = value
    else:
        backend, name = rest.split(".", 1)
        fixed["backend_overrides"][backend] = {name: value}
    assert expand(campaign(tmp_path, grid=fixed)).experiments


def test_a_key_like_none_of_its_section_gets_no_suggestion(tmp_path):
    """Not the section it is in, nor a key of that section that only shares the section's prefix with it."""
    grid = {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"zzqq": 1}}}
    with pytest.raises(ConfigError) as err:
        expand(campaign(tmp_path, grid=grid))
    assert err.value.problems == [
        "unknown key 'grid.backend_overrides.pytorch.zzqq'; allowed keys: see config/README.md"
    ]


def test_configs_and_grid_are_combined_and_deduplicated(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"config_name": "from-file", "pytorch": {"batch_size": 2}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"pytorch": {"batch_size": 3}, "fp_precision": "float32"}))
    c = campaign(
        tmp_path,
        configs=["a.yaml", "b.yaml"],
        grid={"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [2, 5]}}},
    )
    exp = expand(c)
    # a.yaml and the grid's batch_size 2 resolve to the same config: measured once
    assert [e.config["pytorch"]["batch_size"] for e in exp.experiments] == [2, 3, 5]
    assert exp.experiments[0].config_name == "from-file"
    assert exp.experiments[1].config_name == "b"
    assert len(exp.duplicates) == 1


def test_error_in_experiment_file_is_fatal_and_names_file(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"pytorch": {"batching_strategy": "sorted"}}))
    c = campaign(tmp_path, configs=["bad.yaml"])
    with pytest.raises(
        ConfigError,
        match=r"key 'configs\[bad.yaml\].pytorch.batching_strategy' = 'sorted' is not allowed; allowed: static, dynamic",
    ):
        expand(c)


def test_missing_config_file(tmp_path):
    c = campaign(tmp_path, configs=["nope.yaml"])
    with pytest.raises(ConfigError, match=r"nope\.yaml' does not exist"):
        expand(c)


def test_ids_are_stable_readable_and_config_derived():
    cfg = resolve_experiment({"model_name": "lem-tiny-llama", "fp_precision": "float32"})
    same = resolve_experiment({"fp_precision": "float32", "model_name": "lem-tiny-llama", "pytorch": {"batch_size": 1}})
    other = resolve_experiment({"model_name": "lem-tiny-llama", "fp_precision": "float32", "max_output_tokens": 64})
    assert experiment_id(cfg) == experiment_id(same)
    assert experiment_id(cfg) != experiment_id(other)
    assert experiment_id(cfg).startswith("pytorch-lem-tiny-llama-fp32-bs1-")
    # The id depends on nothing but the resolved config's non-default values: this literal holds on any machine,
    # and in any later version that adds fields with defaults.
    assert experiment_id(cfg) == "pytorch-lem-tiny-llama-fp32-bs1-c9b66d6b0a"
    older = {k: v for k, v in cfg.items() if k != "no_weights"}  # as resolved before that field existed
    assert experiment_id(older) == experiment_id(cfg)


def test_keys_of_seconds_in_either_spelling_give_one_experiment_and_the_ids_measured_before(tmp_path):
    """Seconds are '_s' in every key; the former spellings are read with a note. Ids, the measurement job's params
    and the config hash of a raw result are made of the former spellings, so that results measured before keep
    their ids (the default campaign's, recorded before the keys were respelled) and their cycles aggregate with
    cycles measured after."""
    import hashlib

    from conftest import DEFAULT_CAMPAIGN
    from llenergymeasure.campaign import complete_config, identity_form, load_campaign, sparse_config
    from llenergymeasure.config import canonical_json

    default = plan(load_campaign(DEFAULT_CAMPAIGN))
    assert [e.experiment_id for e in default.expansion.experiments] == [
        "pytorch-lem-tiny-llama-fp32-bs1-a1bc372c72",
        "pytorch-lem-tiny-llama-fp32-bs8-fdfc84ecb7",
    ]
    assert default.expansion.experiments[0].params["baseline"] == {"duration_sec": 5}  # as the job's params were
    now = {"baseline": {"duration_s": 5, "cache_ttl_s": 120}, "energy": {"min_window_s": 2.0}}
    before = {"baseline": {"duration_sec": 5, "cache_ttl_sec": 120}, "energy": {"min_window_sec": 2.0}}
    common = {"campaign_name": "s", "model": "lem-tiny-llama", "grid": {"backends": ["pytorch"]}}
    new = campaign(tmp_path, **common, execution={"config_gap_s": 4, "cycle_gap_s": 8})
    old = campaign(tmp_path, **common, execution={"config_gap_seconds": 4, "cycle_gap_seconds": 8})
    assert new["execution"] == old["execution"] and not new["_notes"]
    assert "'execution.config_gap_seconds' is the former spelling of 'execution.config_gap_s'" in old["_notes"][0]
    new_cfg = resolve_experiment({"model_name": "lem-tiny-llama", **now})
    old_raw = {"model_name": "lem-tiny-llama", **before}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old_raw))
    old_exp = expand(campaign(tmp_path, campaign_name="t2", configs=["old.yaml"])).experiments[0]
    assert old_exp.config == new_cfg and old_exp.experiment_id == experiment_id(new_cfg)
    assert sparse_config(new_cfg)["baseline"] == {"duration_sec": 5, "cache_ttl_sec": 120}
    assert complete_config(sparse_config(new_cfg)) == new_cfg
    # a raw result measured before recorded its config with the former names: its config hash is the one now
    as_recorded_before = {**new_cfg, "baseline": {**new_cfg["baseline"]}, "energy": {**new_cfg["energy"]}}
    for section, key, former in (
        ("baseline", "duration_s", "duration_sec"),
        ("baseline", "cache_ttl_s", "cache_ttl_sec"),
        ("energy", "min_window_s", "min_window_sec"),
    ):
        as_recorded_before[section][former] = as_recorded_before[section].pop(key)

    def sha(config):
        return hashlib.sha256(canonical_json(config).encode()).hexdigest()

    assert sha(identity_form(new_cfg)) == sha(as_recorded_before)


@pytest.mark.parametrize(
    "raw",
    [
        {"model_name": "m"},
        {"model_name": "m", "decoder": {"preset": "creative", "temperature": 1.0}},  # explicit value = default
        {"model_name": "m", "pytorch": {"batch_size": 4, "extra": {"a": 1}}, "dataset": {"name": "x.jsonl"}},
    ],
)
def test_sparse_params_complete_back_to_the_resolved_config(raw):
    from llenergymeasure.campaign import complete_config, sparse_config

    cfg = resolve_experiment(raw)
    assert complete_config(sparse_config(cfg)) == cfg
    assert "backend" not in sparse_config(cfg) and "warmup" not in sparse_config(cfg)


def test_decoder_preset_then_explicit_fields_win():
    cfg = resolve_experiment({"model_name": "m", "decoder": {"preset": "creative", "top_p": 0.5}})
    assert cfg["decoder"]["temperature"] == 0.8 and cfg["decoder"]["top_p"] == 0.5
    assert cfg["decoder"]["repetition_penalty"] == 1.1 and cfg["decoder"]["do_sample"] is True
    greedy = resolve_experiment({"model_name": "m", "decoder": {"temperature": 0}})
    assert greedy["decoder"]["do_sample"] is False


def test_orders():
    ids = ["A", "B", "C"]
    assert measurement_order(ids, 2, "interleaved", 0) == [("A", 1), ("B", 1), ("C", 1), ("A", 2), ("B", 2), ("C", 2)]
    assert measurement_order(ids, 2, "grouped", 0) == [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("C", 1), ("C", 2)]
    s0 = measurement_order(ids, 3, "shuffled", 0)
    assert s0 == measurement_order(ids, 3, "shuffled", 0)  # seeded, seed 0 included
    for c in (1, 2, 3):  # every cycle holds every experiment once
        assert sorted(e for e, cy in s0 if cy == c) == ids
    many = [str(i) for i in range(8)]
    a = measurement_order(many, 2, "shuffled", 7)
    assert [e for e, c in a if c == 1] != [e for e, c in a if c == 2]  # each cycle shuffled on its own
    assert a != measurement_order(many, 2, "shuffled", 8)


def test_plan_priorities_follow_order(tmp_path):
    c = campaign(
        tmp_path,
        grid={"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        execution={"cycles": 2, "structure": "grouped"},
    )
    p = plan(c)
    ranked = sorted(p.priority, key=lambda k: -p.priority[k])
    assert ranked == p.order
    a, b = [e.experiment_id for e in p.expansion.experiments]
    assert p.order == [(a, 1), (a, 2), (b, 1), (b, 2)]


def test_prompt_sources_checked_before_any_measurement(tmp_path):
    from llenergymeasure.prompts import check_sources, load_prompts

    base = resolve_experiment({"model_name": "lem-tiny-llama"})
    check_sources([base])  # the 100 shipped prompts
    assert len(load_prompts({"name": "builtin"}, 100)) == 100
    with pytest.raises(ConfigError, match=r"key 'num_input_prompts' = 101 is out of range; allowed: <= 100"):
        check_sources([base, {**base, "num_input_prompts": 101}])
    with pytest.raises(ConfigError, match=r"key 'dataset.name' = '.*missing.jsonl': file does not exist"):
        check_sources([{**base, "dataset": {"name": str(tmp_path / "missing.jsonl")}}])
    # hub datasets: offline (set for every test) fails at once, with the reason
    with pytest.raises(
        ConfigError, match=r"key 'dataset.name' = 'gsm8k' \(gsm8k, split train\) cannot be loaded: offline"
    ):
        check_sources([{**base, "dataset": {"name": "gsm8k"}}])


def test_local_prompt_files(tmp_path):
    from llenergymeasure.prompts import load_prompts

    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts({"name": str(tmp_path / "p.txt")}, 2) == ["first", "second"]
    (tmp_path / "p.jsonl").write_text('{"question": "q1"}\n{"question": "q2"}\n')
    assert load_prompts({"name": str(tmp_path / "p.jsonl")}, 2) == ["q1", "q2"]
    shuffled = load_prompts({"name": "builtin", "shuffle": True}, 100, seed=3)
    assert shuffled != load_prompts({"name": "builtin"}, 100) and sorted(shuffled) == sorted(
        load_prompts({"name": "builtin"}, 100)
    )


def test_describe_verbosity(tmp_path):
    import io

    from llenergymeasure.workflow import describe

    grid = {
        "backends": ["pytorch", "tensorrt"],
        "shared": {"fp_precision": "float32"},
        "backend_overrides": {"pytorch": {"batch_size": [1, 2]}},
    }
    p = plan(campaign(tmp_path, grid=grid))
    out = {}
    for level in ("quiet", "normal", "verbose"):
        buf = io.StringIO()
        describe(p, buf, level)
        out[level] = buf.getvalue()
    assert out["quiet"] == ""
    assert "2 experiments x 3 cycles" in out["normal"] and "dropped pytorch" not in out["normal"]
    assert "dropped tensorrt-lem-tiny-llama: TensorRT-LLM builds float16/bfloat16 engines" in out["normal"]
    assert all(e.experiment_id in out["verbose"] for e in p.expansion.experiments)
    assert not any(e.experiment_id in out["normal"] for e in p.expansion.experiments)


def test_missing_local_model_folder_is_a_config_error(tmp_path):
    from llenergymeasure.prompts import check_sources

    base = resolve_experiment({"model_name": str(tmp_path / "no-such-model")})
    with pytest.raises(ConfigError, match=r"key 'model_name' = '.*no-such-model': folder does not exist"):
        check_sources([base])


def test_local_hf_dataset_folder_loads_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    from llenergymeasure.prompts import load_prompts

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(f'{{"instruction": "task {i}", "other": 1}}\n' for i in range(5)))
    assert load_prompts({"name": str(folder), "column": "instruction"}, 3) == ["task 0", "task 1", "task 2"]
    assert load_prompts({"name": str(folder)}, 2) == ["task 0", "task 1"]  # column auto-detected


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("timeline.interval_ms", 50, "= 50 is out of range; allowed: >= 100"),
        ("timeline.save", "yes", "= 'yes' has the wrong type; allowed: boolean"),
        ("no_weights", 1, "= 1 has the wrong type; allowed: boolean"),
        ("energy.repeat_to_min_window", "x", "= 'x' has the wrong type; allowed: boolean"),
        (
            "energy.backend",
            "powermeter",
            "= 'powermeter' is not allowed; allowed: auto, nvml, rapl, estimate, codecarbon",
        ),
        ("energy.country_iso_code", "FR", "= 'FR' is not allowed; allowed: ISO 3166-1 alpha-3"),
        ("pytorch.num_processes", 65, "= 65 is out of range; allowed: <= 64"),
        ("warmup.window_size", 2, "= 2 is out of range; allowed: >= 3"),
        ("gpus", [0, 0], "= [0, 0] is not allowed; allowed: a list without repeated items"),
        ("gpus", [], "= [] is out of range; allowed: at least this many items: 1"),
        ("adapter", 3, "= 3 has the wrong type"),
        ("vllm.max_num_seqs", 0, "= 0 is out of range; allowed: >= 1"),
        ("vllm.seed_per_request", "yes", "= 'yes' has the wrong type; allowed: boolean"),
        ("vllm.block_size", 24, "= 24 is not allowed; allowed: null, 16, 32, 64, 128"),
        ("vllm.quantization", "marlin", "= 'marlin' is not allowed"),
        ("vllm.gpu_memory_utilization", 1.5, "= 1.5 is out of range; allowed: <= 0.99"),
        ("vllm.speculative.method", "lookahead", "= 'lookahead' is not allowed"),
        ("vllm.logit_bias", {"x": 1}, "= 'x' is not allowed; allowed: text matching ^[0-9]+$"),
        ("tensorrt.quantization", "int2", "= 'int2' is not allowed"),
        ("tensorrt.max_batch_size", 512, "= 512 is out of range; allowed: <= 256"),
        ("tensorrt.calibration.num_samples", 10, "= 10 is out of range; allowed: >= 64"),
        ("pytorch.bnb_4bit_quant_type", "int4", "= 'int4' is not allowed; allowed: nf4, fp4"),
        ("warmup.mode", "partial", "= 'partial' is not allowed; allowed: full, cv, off"),
        ("energy.cpu_attribution", "everyone", "= 'everyone' is not allowed; allowed: machine, process"),
        ("energy.cpu_part_threads", 0, "= 0 is out of range; allowed: >= 1"),
        (
            "pytorch.torch_compile",
            "fast",
            "= 'fast' is not allowed; allowed: false, true, default, reduce-overhead, max-autotune",
        ),
        (
            "pytorch.torch_compile_backend",
            "onnxrt",
            "= 'onnxrt' is not allowed; allowed: inductor, cudagraphs, aot_eager",
        ),
        ("pytorch.cache_implementation", "hybrid", "= 'hybrid' is not allowed; allowed: dynamic, static"),
        ("decoder.top_p", 0, "= 0 is out of range; allowed: > 0"),  # vLLM rejects it, TensorRT-LLM reads it as off
    ],
)
def test_bad_experiment_values_in_grid(tmp_path, key, value, expected):
    c = campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {key: [value]}})
    with pytest.raises(ConfigError) as info:
        expand(c)
    assert f"key 'grid.shared.{key}' {expected}" in str(info.value)


def test_bad_gpu_index_names_the_item(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'grid.shared.gpus\[0\]' = -1 is out of range; allowed: >= 0"):
        expand(campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {"gpus": [-1]}}))


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ({"onnx": "docker://x"}, "unknown key 'containers.onnx'"),
        ({"vllm": "docker://x y"}, "key 'containers.vllm' = 'docker://x y' is not allowed"),
        ({"vllm": ""}, "key 'containers.vllm' = ''"),
    ],
)
def test_bad_container_images_are_one_line_errors(tmp_path, containers, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        campaign(tmp_path, grid={"backends": ["pytorch"]}, containers=containers)


def test_measurement_jobs_declare_gpus_and_their_backends_image(tmp_path):
    from llenergymeasure.workflow import container, gpus

    grid = {
        "backends": ["pytorch", "vllm"],
        "shared": {"gpus": [0, 1]},
        "backend_overrides": {"vllm": {"tensor_parallel_size": 2}, "pytorch": {"num_processes": 2}},
    }
    p = plan(campaign(tmp_path, grid=grid, containers={"vllm": "docker://example.org/v:1"}))
    by_backend = {e.backend: e.experiment_id for e in p.expansion.experiments}
    assert gpus(p, by_backend["vllm"]) == 2  # vLLM with device auto: CUDA unless its CPU build is what runs
    assert gpus(p, by_backend["pytorch"]) == 2  # device auto: CUDA wherever the node has it, so its GPUs are asked for
    assert container(p, by_backend["vllm"]) == "docker://example.org/v:1"
    assert container(p, by_backend["pytorch"]) == "docker://vllm/vllm-openai:v0.32.0"  # the default


def test_pytorch_asks_for_its_gpus_unless_its_device_is_the_cpu(tmp_path):
    """``device: auto`` runs on CUDA wherever the job's node has it: its job asks for the GPUs it would measure
    there, as ``device: cuda`` does; only ``device: cpu`` asks for none."""
    from llenergymeasure.workflow import gpus

    p = plan(campaign(tmp_path, grid={"backends": ["pytorch"], "shared": {"device": ["auto", "cuda", "cpu"]}}))
    asked = {e.config["device"]: gpus(p, e.experiment_id) for e in p.expansion.experiments}
    assert asked == {"auto": 1, "cuda": 1, "cpu": 0}
    grid = {"backends": ["pytorch"], "shared": {"gpus": [2, 3]}, "backend_overrides": {"pytorch": {"num_processes": 2}}}
    p = plan(campaign(tmp_path, grid=grid))
    (two,) = p.expansion.experiments
    assert two.config["device"] == "auto" and gpus(p, two.experiment_id) == 2


def test_a_vllm_experiment_on_the_cpu_asks_for_no_gpu(tmp_path):
    from llenergymeasure.workflow import gpus

    p = plan(campaign(tmp_path, grid={"backends": ["vllm"], "shared": {"device": "cpu", "fp_precision": "float32"}}))
    (exp,) = p.expansion.experiments
    assert gpus(p, exp.experiment_id) == 0


def test_the_workflow_config_stays_as_loaded_and_gains_one_read_only_key(tmp_path):
    """load() leaves Snakemake's config as it was given and adds the jobs' runtime facts under one key, read-only
    there and a plain dict in a job (pickled), the same on a second parse in the process."""
    import pickle

    from llenergymeasure import workflow as lem

    campaign_file = {
        "campaign_name": "contract",
        "model": "lem-tiny-llama",
        "grid": {"backends": ["pytorch"]},
        "execution": {"cycles": 3},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(campaign_file))
    config = {"campaign": "c.yaml", "execution": {"config_gap_s": "7"}}
    given = copy.deepcopy(config)
    p = lem.load(config, [], workdir=tmp_path, announce=False)
    facts = config.pop(lem.RUNTIME_KEY)
    assert config == given  # nothing of the resolved campaign is written into it
    assert facts["config_gap_s"] == 7 and facts["cycles"] == 3 and facts["results_root"] == p.results_root
    with pytest.raises(TypeError, match="read-only"):
        facts["cycles"] = 1
    with pytest.raises(TypeError, match="read-only"):
        facts["notifications"]["webhook_url"] = "http://example.org"
    copied = pickle.loads(pickle.dumps(facts))
    assert type(copied) is dict and copied == facts
    config[lem.RUNTIME_KEY] = facts
    again = lem.load(config, [], workdir=tmp_path, announce=False)
    assert again.order == p.order and config[lem.RUNTIME_KEY] == facts


def test_a_list_valued_field_in_the_grid_is_one_value_unless_a_list_of_lists(tmp_path):
    one = expand(
        campaign(
            tmp_path,
            grid={
                "backends": ["vllm"],
                "shared": {"gpus": [0, 1]},
                "backend_overrides": {"vllm": {"tensor_parallel_size": 2}},
            },
        )
    )
    assert [e.config["gpus"] for e in one.experiments] == [[0, 1]]
    axis = expand(campaign(tmp_path, grid={"backends": ["vllm"], "shared": {"gpus": [[0], [1]]}}))
    assert sorted(e.config["gpus"] for e in axis.experiments) == [[0], [1]]


def test_torch_compile_true_and_default_are_one_experiment():
    from llenergymeasure.campaign import experiment_id, resolve_experiment

    on = resolve_experiment({"model_name": "m", "pytorch": {"torch_compile": True}})
    default = resolve_experiment({"model_name": "m", "pytorch": {"torch_compile": "default"}})
    assert on["pytorch"]["torch_compile"] == "default" and experiment_id(on) == experiment_id(default)
    assert experiment_id(on) != experiment_id(resolve_experiment({"model_name": "m"}))
