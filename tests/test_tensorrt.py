"""TensorRT-LLM backend against the fake of TensorRT-LLM 1.0.0 (tests/fakes/engines/tensorrt_llm): every
``tensorrt`` field reaches the engine API as the pinned release names it, the engine cache is keyed and reused
correctly, and one real measurement cycle runs through the fake's in-flight batching on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKES, REPO, SAMPLING_DECODER, forget_engine, small_experiment
from llenergymeasure.backends import create
from llenergymeasure.backends import tensorrt as trt_backend
from llenergymeasure.backends.base import Batch, BatchRecord
from llenergymeasure.backends.tensorrt import (
    TensorRTBackend,
    engine_cache_key,
    engine_key_fields,
)
from llenergymeasure.campaign import semantic_problem, semantic_problems
from llenergymeasure.config import load_schema
from llenergymeasure.errors import MeasurementError
from llenergymeasure.runtime import JobContext


def _drop_engine_modules() -> None:
    forget_engine("tensorrt_llm")


@pytest.fixture
def no_trt(monkeypatch):
    """No tensorrt_llm, whatever the machine has installed (None in sys.modules makes every import of it fail)."""
    _drop_engine_modules()
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)


def trt_experiment(tmp_path=None, **overrides) -> dict:
    """A resolved tensorrt experiment small enough for 2 CPU cores (device stays "auto", as vllm/tensorrt need)."""
    base = {
        "model_name": "lem-tiny-llama",
        "backend": "tensorrt",
        "fp_precision": "float16",
        "max_input_tokens": 48,
        "max_output_tokens": 6,
        "min_output_tokens": 6,
        "num_input_prompts": 5,
        "tensorrt": {"max_batch_size": 2},
    }
    if tmp_path is not None:
        base["tensorrt"]["engine_cache_dir"] = str(tmp_path / "engines")
    return small_experiment(base, overrides)


def loaded(config: dict, model: str) -> TensorRTBackend:
    backend = TensorRTBackend(config, model)
    backend.info = backend.load()
    return backend


def builds(fake):
    from tensorrt_llm.llmapi import llm as fake_llm

    return fake_llm.BUILDS


# ---------------------------------------------------------------------------------------------------- not importable
def test_missing_engine_says_which_and_where_to_run(no_trt, tiny_model):
    backend = create(trt_experiment(), tiny_model)
    for call in (backend.resolve_device, backend.load):
        with pytest.raises(MeasurementError) as err:
            call()
        text = str(err.value)
        assert "tensorrt_llm is not importable" in text
        assert "snakemake --sdm apptainer" in text and "nvcr.io/nvidia/tensorrt-llm/release:1.0.0" in text
    backend.close()  # nothing loaded: closing is a no-op


def test_module_imports_without_the_engine(no_trt):
    assert TensorRTBackend.version()["tensorrt_llm"] is None
    assert trt_backend.PINNED_VERSION == "1.0.0"


# ---------------------------------------------------------------------------------------------------- build wiring
def test_defaults_reach_the_engine(fake_trt, tiny_model, tmp_path):
    from tensorrt_llm.bindings import KVCacheType
    from tensorrt_llm.llmapi import KvCacheConfig

    backend = loaded(trt_experiment(tmp_path, tensorrt={"max_batch_size": 8}), tiny_model)
    try:
        (build,) = builds(fake_trt)
        bc = build["build_config"]
        assert bc.max_batch_size == 8
        assert bc.max_input_len == 48  # null -> max_input_tokens
        assert bc.max_seq_len == 48 + 6  # null max_output_len -> max_output_tokens, on top of the input
        assert bc.max_num_tokens == 8192  # null: the release's BuildConfig default
        assert bc.strongly_typed is True
        assert bc.kv_cache_type == KVCacheType.PAGED
        assert bc.plugin_config.multiple_profiles is False
        assert bc.plugin_config.use_paged_context_fmha is True and bc.plugin_config.paged_kv_cache is True
        assert build["dtype"] == "float16" and build["checkpoint"] == tiny_model
        assert build["quant_config"].quant_algo is None and build["calib_config"] is None
        kw = backend.llm.init_kwargs
        assert kw["model"] == tiny_model and kw["tokenizer"] == tiny_model and kw["dtype"] == "float16"
        assert kw["tensor_parallel_size"] == 1 and kw["pipeline_parallel_size"] == 1
        assert kw["kv_cache_config"] == KvCacheConfig(free_gpu_memory_fraction=0.9, enable_block_reuse=False)
        assert kw["enable_chunked_prefill"] is True
        assert "quant_config" not in kw and "calib_config" not in kw and "speculative_config" not in kw
        assert backend.info["engine_source"] == "built" and backend.info["build_s"] > 0
    finally:
        backend.close()


def test_non_default_build_and_runtime_fields_reach_the_engine(fake_trt, tiny_model, tmp_path):
    from tensorrt_llm.bindings import KVCacheType
    from tensorrt_llm.llmapi import KvCacheConfig

    cfg = trt_experiment(
        tmp_path,
        fp_precision="bfloat16",
        tensorrt={
            "max_batch_size": 3,
            "max_num_tokens": 512,
            "max_input_len": 100,
            "max_output_len": 20,
            "strongly_typed": False,
            "multiple_profiles": True,
            "kv_cache_type": "continuous",
            "enable_chunked_context": False,
            "enable_kv_cache_reuse": False,
            "gpu_memory_utilization": 0.55,
            "tp_size": 2,
            "pp_size": 2,
            "extra_build_args": {"opt_batch_size": 2, "plugin_config": {"multi_block_mode": True}},
            "extra_runtime_args": {"enable_tqdm": True, "max_num_tokens": 256},
        },
    )
    backend = loaded(cfg, tiny_model)
    try:
        (build,) = builds(fake_trt)
        bc = build["build_config"]
        assert (bc.max_batch_size, bc.max_num_tokens, bc.max_input_len, bc.max_seq_len) == (3, 512, 100, 120)
        assert bc.strongly_typed is False and bc.kv_cache_type == KVCacheType.CONTINUOUS
        assert bc.plugin_config.multiple_profiles is True and bc.plugin_config.paged_kv_cache is False
        assert bc.opt_batch_size == 2 and bc.plugin_config.multi_block_mode is True  # extra_build_args merged
        assert build["dtype"] == "bfloat16"
        assert (build["tensor_parallel_size"], build["pipeline_parallel_size"]) == (2, 2)
        kw = backend.llm.init_kwargs
        assert kw["kv_cache_config"] == KvCacheConfig(free_gpu_memory_fraction=0.55, enable_block_reuse=False)
        assert kw["enable_chunked_prefill"] is False
        assert kw["enable_tqdm"] is True and kw["max_num_tokens"] == 256  # extra_runtime_args merged last
        assert backend.llm.runtime_limits["max_num_tokens"] == 256
        assert backend.gpu_count() == 4
    finally:
        backend.close()


def test_kv_reuse_and_chunked_context_are_runtime_switches(fake_trt, tiny_model, tmp_path):
    cfg = trt_experiment(
        tmp_path, warmup={"mode": "off"}, tensorrt={"enable_kv_cache_reuse": True, "enable_chunked_context": True}
    )
    backend = loaded(cfg, tiny_model)
    try:
        assert backend.llm.init_kwargs["kv_cache_config"].enable_block_reuse is True
        assert backend.llm.init_kwargs["enable_chunked_prefill"] is True
    finally:
        backend.close()


def calibration_folder(tmp_path, column: str = "text") -> str:
    """A local calibration set as TensorRT-LLM 1.0.0 reads one: a dataset folder with a train split."""
    folder = tmp_path / "calib"
    folder.mkdir(exist_ok=True)
    rows = [{column: f"calibration sentence number {i} about engines and energy"} for i in range(8)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


@pytest.mark.parametrize(
    "mode, algo, kv_algo, calibrated",
    [
        ("fp8", "FP8", "FP8", True),
        ("int8_sq", "W8A8_SQ_PER_CHANNEL", None, True),
        ("int8_weight_only", "W8A16", None, False),
        ("int4_awq", "W4A16_AWQ", None, True),
    ],
)
def test_quantization_and_calibration(fake_trt, tiny_model, tmp_path, mode, algo, kv_algo, calibrated):
    from tensorrt_llm.llmapi import CalibConfig, QuantAlgo, QuantConfig

    data = calibration_folder(tmp_path)
    awq = mode == "int4_awq"  # calibrates on 32 samples whatever it is given: the setting is refused there
    cal = {"dataset": data, "max_length": 4096, **({} if awq else {"num_samples": 128})} if calibrated else {}
    backend = loaded(trt_experiment(tmp_path, tensorrt={"quantization": mode, "calibration": cal}), tiny_model)
    try:
        kw = backend.llm.init_kwargs
        assert kw["quant_config"] == QuantConfig(
            quant_algo=QuantAlgo[algo], kv_cache_quant_algo=QuantAlgo[kv_algo] if kv_algo else None
        )
        if calibrated:
            assert kw["calib_config"] == CalibConfig(
                calib_dataset=data,
                calib_batches=32 if awq else 128,
                calib_max_seq_length=4096,
                tokenizer_max_seq_length=4096,
            )
            assert builds(fake_trt)[0]["calib_config"] is kw["calib_config"]
        else:
            assert "calib_config" not in kw
        assert mode in backend.info["weights"]
    finally:
        backend.close()


def test_default_calibration_values(fake_trt, tiny_model, tmp_path):
    from tensorrt_llm.llmapi import CalibConfig

    data = calibration_folder(tmp_path)
    backend = loaded(
        trt_experiment(tmp_path, tensorrt={"quantization": "fp8", "calibration": {"dataset": data}}), tiny_model
    )
    try:
        assert backend.llm.init_kwargs["calib_config"] == CalibConfig(
            calib_dataset=data, calib_batches=512, calib_max_seq_length=2048, tokenizer_max_seq_length=2048
        )
    finally:
        backend.close()


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"calibration": {"split": "validation"}, "quantization": "fp8"}, "calibration.split = validation"),
        ({"builder_opt_level": 5}, "builder_opt_level = 5"),
        ({"kv_cache_type": "continuous"}, "need a paged KV cache"),
        (
            {"draft_model": "/models/draft", "num_draft_tokens": 7},
            "draft-target speculative decoding on its PyTorch flow only",
        ),
        ({"extra_build_args": {"no_such_field": 1}}, "extra_build_args"),
        ({"extra_runtime_args": {"no_such_arg": 1}}, "got invalid argument: no_such_arg"),
    ],
)
def test_settings_the_pinned_engine_flow_cannot_take_are_refused(fake_trt, tiny_model, tmp_path, section, needle):
    backend = TensorRTBackend(trt_experiment(tmp_path, tensorrt=section), tiny_model)
    with pytest.raises(MeasurementError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        backend.load()
    backend.close()
    assert not builds(fake_trt)


def test_split_and_opt_level_defaults_pass(fake_trt, tiny_model, tmp_path):
    cal = {"dataset": calibration_folder(tmp_path), "split": "train"}
    backend = loaded(
        trt_experiment(tmp_path, tensorrt={"quantization": "fp8", "builder_opt_level": 3, "calibration": cal}),
        tiny_model,
    )
    backend.close()
    assert len(builds(fake_trt)) == 1


# ---------------------------------------------------------------------------------------------------- sampling and prompts
def test_greedy_sampling_params(fake_trt, tiny_model, tmp_path):
    backend = loaded(trt_experiment(tmp_path, random_seed=7, decoder={"repetition_penalty": 1.2}), tiny_model)
    try:
        sp = backend.sampling_params(6, 6, 7)
        tok = backend.tokenizer
        assert (sp.max_tokens, sp.min_tokens, sp.seed, sp.repetition_penalty) == (6, 6, 7, 1.2)
        assert (sp.top_k, sp.top_p, sp.temperature) == (1, None, None) and sp._greedy_decoding
        assert sp.ignore_eos is True and sp.detokenize is False
        assert sp.end_id == tok.eos_token_id and sp.pad_id == (
            tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        )
    finally:
        backend.close()


def test_sampling_params_when_sampling(fake_trt, tiny_model, tmp_path):
    cfg = trt_experiment(
        tmp_path,
        min_output_tokens=2,
        random_seed=None,
        decoder=SAMPLING_DECODER,
    )
    backend = loaded(cfg, tiny_model)
    try:
        sp = backend.sampling_params(cfg["max_output_tokens"], cfg["min_output_tokens"], cfg["random_seed"])
        assert (sp.temperature, sp.top_k, sp.top_p, sp.repetition_penalty) == (0.7, 0, 0.9, 1.1)
        assert (sp.max_tokens, sp.min_tokens, sp.seed, sp.ignore_eos) == (6, 2, None, False)
        assert not sp._greedy_decoding
        out = backend.run(["a short prompt"] * 3, backend.plan(["a short prompt"] * 3), None)
        assert all(2 <= r.output_tokens <= 6 for r in out.requests)
    finally:
        backend.close()


def test_prompts_are_submitted_as_truncated_token_ids(fake_trt, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    cfg = trt_experiment(tmp_path, max_input_tokens=8)
    backend = loaded(cfg, tiny_model)
    submitted = []
    real = backend.llm.generate_async

    def spy(inputs, sampling_params=None, **kwargs):
        submitted.append((list(inputs), sampling_params, kwargs))
        return real(inputs, sampling_params=sampling_params, **kwargs)

    backend.llm.generate_async = spy
    try:
        prompts = ["one two three four five six seven eight nine ten eleven twelve", "short"]
        batches = backend.plan(prompts)
        assert len(batches) == 1 and batches[0].indices == [0, 1]
        expected = AutoTokenizer.from_pretrained(tiny_model)(prompts, truncation=True, max_length=8)["input_ids"]
        assert batches[0].prompt_tokens == [len(x) for x in expected] and batches[0].prompt_tokens[0] == 8
        out = backend.run(prompts, batches, 42)
        assert [s[0] for s in submitted] == [list(x) for x in expected]
        assert all(s[2] == {"streaming": True} for s in submitted)
        assert submitted[0][1].seed == 42 and submitted[0][1].max_tokens == cfg["max_output_tokens"]
        assert [r.input_tokens for r in out.requests] == [len(x) for x in expected]
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------------- engine cache
def test_cache_key_covers_engine_fields_only():
    cfg = trt_experiment()
    base = engine_key_fields(cfg, "/m", "sm_90", "1.0.0")
    key = engine_cache_key(base)
    assert len(key) == 16 and int(key, 16) >= 0
    assert engine_cache_key(dict(base)) == key  # canonical JSON: order-independent
    keyed = {
        "max_batch_size": 4,
        "max_num_tokens": 1024,
        "max_input_len": 60,
        "max_output_len": 12,
        "tp_size": 2,
        "pp_size": 2,
        "quantization": "fp8",
        "builder_opt_level": 4,
        "strongly_typed": False,
        "multiple_profiles": True,
        "kv_cache_type": "continuous",
        "extra_build_args": {"opt_batch_size": 2},
    }
    for name, value in keyed.items():
        changed = trt_experiment(tensorrt={name: value})
        assert engine_cache_key(engine_key_fields(changed, "/m", "sm_90", "1.0.0")) != key, name
    for other in (
        engine_key_fields(cfg, "/other", "sm_90", "1.0.0"),
        engine_key_fields(cfg, "/m", "sm_80", "1.0.0"),
        engine_key_fields(cfg, "/m", "sm_90", "1.0.1"),
        engine_key_fields(trt_experiment(fp_precision="bfloat16"), "/m", "sm_90", "1.0.0"),
        engine_key_fields(trt_experiment(max_input_tokens=32), "/m", "sm_90", "1.0.0"),  # max_input_len null follows it
        engine_key_fields(trt_experiment(max_output_tokens=9, min_output_tokens=0), "/m", "sm_90", "1.0.0"),
    ):
        assert engine_cache_key(other) != key
    fp8 = trt_experiment(tensorrt={"quantization": "fp8"})
    fp8_cal = trt_experiment(tensorrt={"quantization": "fp8", "calibration": {"num_samples": 64}})
    assert engine_cache_key(engine_key_fields(fp8, "/m", "a", "v")) != engine_cache_key(
        engine_key_fields(fp8_cal, "/m", "a", "v")
    )
    runtime_only = {
        "gpu_memory_utilization": 0.5,
        "enable_kv_cache_reuse": True,
        "enable_chunked_context": False,
        "extra_runtime_args": {"enable_tqdm": True},
        "force_rebuild": True,
        "engine_cache_dir": "/elsewhere",
        "calibration": {"num_samples": 64},  # calibration is not used without a calibrating quantization
    }
    for name, value in runtime_only.items():
        same = trt_experiment(tensorrt={name: value})
        assert engine_cache_key(engine_key_fields(same, "/m", "sm_90", "1.0.0")) == key, name
    decoding = trt_experiment(random_seed=3, num_input_prompts=50, decoder={"preset": "creative"})
    assert engine_cache_key(engine_key_fields(decoding, "/m", "sm_90", "1.0.0")) == key


def test_second_load_reuses_the_cached_engine(fake_trt, tiny_model, tmp_path):
    cfg = trt_experiment(tmp_path)
    first = loaded(cfg, tiny_model)
    first.close()
    folder = Path(first.info["engine_dir"])
    assert folder == tmp_path / "engines" / first.info["engine_cache_key"]
    marker = json.loads((folder / "lem-engine.json").read_text())
    assert marker["key"] == folder.name and marker["fields"]["max_batch_size"] == 2 and marker["build_s"] > 0
    assert (folder / "rank0.engine").is_file() and not [p for p in folder.parent.iterdir() if p.name.startswith(".")]

    second = loaded(cfg, tiny_model)
    try:
        assert len(builds(fake_trt)) == 1
        assert second.info["engine_source"] == "cache_hit" and second.info["build_s"] is None
        assert second.info["engine_cache_key"] == first.info["engine_cache_key"]
        assert second.llm.init_kwargs["model"] == str(folder) and second.llm.init_kwargs["tokenizer"] == tiny_model
        assert "build_config" not in second.llm.init_kwargs
        out = second.run(["hello there"], second.plan(["hello there"]), 1)
        assert out.requests[0].output_tokens == cfg["max_output_tokens"]
    finally:
        second.close()


def test_force_rebuild_builds_again(fake_trt, tiny_model, tmp_path):
    loaded(trt_experiment(tmp_path), tiny_model).close()
    again = loaded(trt_experiment(tmp_path, tensorrt={"force_rebuild": True}), tiny_model)
    again.close()
    assert len(builds(fake_trt)) == 2 and again.info["engine_source"] == "rebuilt"
    folder = Path(again.info["engine_dir"])
    assert trt_backend.is_complete_engine(folder)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # nothing left beside it


def test_interrupted_build_leaves_no_engine(fake_trt, tiny_model, tmp_path, monkeypatch):
    from tensorrt_llm.llmapi.llm import _TrtLLM

    def broken_save(self, engine_dir):
        Path(engine_dir, "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(_TrtLLM, "save", broken_save)
    backend = TensorRTBackend(trt_experiment(tmp_path), tiny_model)
    with pytest.raises(OSError, match="disk full"):
        backend.load()
    backend.close()
    root = tmp_path / "engines"
    assert list(root.iterdir()) == []  # neither the key folder nor a partial one


def test_engine_path_skips_building(fake_trt, tiny_model, tmp_path):
    built = loaded(trt_experiment(tmp_path), tiny_model)
    built.close()
    engine = built.info["engine_dir"]
    cfg = trt_experiment(tensorrt={"engine_path": engine, "gpu_memory_utilization": 0.6})
    backend = loaded(cfg, tiny_model)
    try:
        assert len(builds(fake_trt)) == 1
        assert backend.info["engine_source"] == "engine_path" and backend.info["engine_cache_key"] is None
        assert backend.llm.init_kwargs["model"] == engine
        assert backend.llm.init_kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.6
        assert backend.info["model_config_source"].startswith("checkpoint")
    finally:
        backend.close()


def test_engine_path_alone_reads_the_engine_config(fake_trt, tiny_model, tmp_path):
    built = loaded(trt_experiment(tmp_path), tiny_model)
    built.close()
    engine = built.info["engine_dir"]
    no_checkpoint = tmp_path / "elsewhere"
    no_checkpoint.mkdir()
    backend = loaded(trt_experiment(tensorrt={"engine_path": engine}), str(no_checkpoint))
    try:
        cfg = backend.model_config()
        assert isinstance(cfg, dict) and cfg["model_type"] == "llama"
        hf = json.loads((Path(tiny_model) / "config.json").read_text())
        assert cfg["hidden_size"] == hf["hidden_size"] and cfg["num_hidden_layers"] == hf["num_hidden_layers"]
        assert "engine config.json" in backend.info["model_config_source"]
        # the engine's config does not say whether the output layer shares the embedding table: counted as separate
        assert backend.info["parameters"] == built.info["parameters"] + hf["vocab_size"] * hf["hidden_size"]
    finally:
        backend.close()


def test_missing_engine_path_is_reported(fake_trt, tiny_model, tmp_path):
    backend = TensorRTBackend(trt_experiment(tensorrt={"engine_path": str(tmp_path / "nothing")}), tiny_model)
    with pytest.raises(MeasurementError, match="no engine there"):
        backend.load()


def test_default_cache_folder_is_under_the_cache_dir(fake_trt, tiny_model, isolated_cache):
    backend = loaded(trt_experiment(), tiny_model)
    backend.close()
    assert Path(backend.info["engine_dir"]) == isolated_cache / "tensorrt-engines" / backend.info["engine_cache_key"]


# ---------------------------------------------------------------------------------------------------- contract
def test_contract_facts(fake_trt, tiny_model, tmp_path):
    import torch
    import transformers

    backend = loaded(trt_experiment(tmp_path), tiny_model)
    try:
        assert backend.resolve_device() == "cuda" and backend.gpu_count() == 1
        v = backend.version()
        assert (
            v["tensorrt_llm"] == "1.0.0"
            and v["torch"] == torch.__version__
            and v["transformers"] == transformers.__version__
        )
        assert "tensorrt" in v
        info = backend.info
        assert info["device"] == "cuda" and info["dtype"] == "float16" and info["architecture"] == "llama"
        meta = json.loads((Path(tiny_model) / "lem_model.json").read_text())
        assert info["parameters"] == meta["parameters"]  # the analytic count from the config is exact here
        assert info["parameters_source"].startswith("analytic_from_model_config")
        assert info["model_size_bytes"] == (Path(info["engine_dir"]) / "rank0.engine").stat().st_size
        assert info["load_s"] > 0 and "parameters_source" in info
        mem = backend.peak_memory()
        assert mem["cuda_peak_allocated_bytes"] is None and mem["cuda_peak_reserved_bytes"] is None

        def batch(size):
            return BatchRecord(
                size=size,
                input_tokens=size,
                padded_input_tokens=size,
                output_tokens=size,
                steps=1,
                latency_s=1.0,
                start_t=0.0,
                first_token_t=0.5,
                end_t=1.0,
            )

        assert backend.validity_flags([batch(5)]) == []
        assert backend.validity_flags([batch(1)])[0][0] == "batch_not_saturated"
    finally:
        backend.close()
    assert backend.llm is None
    backend.close()


def test_inflight_batching_is_capped_and_every_request_finishes(fake_trt, tiny_model, tmp_path):
    backend = loaded(trt_experiment(tmp_path), tiny_model)  # max_batch_size 2
    try:
        prompts = [f"prompt number {i} with a few words" for i in range(6)]
        seen = []
        out = backend.run(prompts, backend.plan(prompts), 0, progress=lambda d, t: seen.append((d, t)))
        assert backend.llm._executor.max_in_flight == 2
        assert sorted(r.index for r in out.requests) == list(range(6))
        assert all(r.output_tokens == 6 and len(r.itl_s) == 5 for r in out.requests)
        assert seen == [(i, 6) for i in range(1, 7)]
        # requests admitted later wait for a slot: the last ones' first token comes after the first ones' last
        by_index = sorted(out.requests, key=lambda r: r.index)
        assert by_index[-1].ttft_s > by_index[0].e2e_s
        (b,) = out.batches
        assert b.size == 6 and b.padded_input_tokens == b.input_tokens and b.output_tokens == 36
        assert b.steps == 36 and b.start_t <= b.first_token_t <= b.end_t
        assert out.scheduling == "continuous" and out.latency_method == "engine_stream_token_arrival"
    finally:
        backend.close()


def test_latency_from_arrivals_splits_multi_token_responses():
    stream = {
        "index": 3,
        "input_tokens": 10,
        "output_tokens": 5,
        "submitted": 1.0,
        "end": 2.0,
        "arrivals": [(1.25, 2), (1.5, 1), (1.75, 2)],
        "chunks": 3,
    }
    t = TensorRTBackend.timing(stream)
    assert (t.index, t.input_tokens, t.output_tokens) == (3, 10, 5)
    assert t.ttft_s == pytest.approx(0.25) and t.e2e_s == pytest.approx(0.75)
    assert t.itl_s == pytest.approx([0.0, 0.25, 0.25, 0.0])  # n - 1 gaps; tokens that arrived together get 0
    assert t.start_t == 1.0 and t.planned_t is None  # the instant TTFT and E2E count from: the submission


def test_warmup_contract(fake_trt, tiny_model, tmp_path):
    backend = loaded(trt_experiment(tmp_path), tiny_model)
    try:
        prompts = ["a", "b c", "d e f", "g"]
        batches = [Batch([0, 1, 2, 3], [2, 3, 4, 2])]
        cfg = {
            "enabled": True,
            "mode": "full",
            "convergence_detection": True,
            "cv_threshold": 1.0,
            "max_prompts": 4,
            "window_size": 3,
            "min_prompts": 3,
        }
        w = backend.warmup(prompts, batches, cfg)
        assert w["enabled"] and w["converged"] is True and w["iterations_completed"] == 3
        assert w["batch_size"] == 2 and w["max_new_tokens"] == 6 and len(w["latencies_ms"]) == 3
        assert set(w) >= {"final_cv", "target_cv", "max_prompts", "duration_s", "shapes", "full_pass_s"}
        (whole,) = w["shapes"]  # the whole workload, submitted at once as the window submits it
        assert whole["batch_size"] == 4 and whole["new_tokens"] == 6
        off = backend.warmup(prompts, batches, {"enabled": False})
        assert off["enabled"] is False and off["iterations_completed"] == 0 and off["shapes"] == []
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------------- one real cycle
def _check_cycle(result: dict, cfg: dict) -> None:
    n = cfg["num_input_prompts"]
    tokens = result["tokens"]
    assert result["backend"] == "tensorrt" and tokens["scheduling"] == "continuous"
    assert tokens["num_requests"] == n and tokens["num_batches"] == 1
    assert tokens["output_tokens"] == n * cfg["max_output_tokens"] > 0
    assert tokens["padded_input_tokens"] == tokens["input_tokens"] > 0
    lat = result["latency"]
    assert lat["method"] == "engine_stream_token_arrival"
    for name in ("ttft_ms", "e2e_ms", "itl_ms", "tpot_ms"):
        assert lat[name] is not None and lat[name]["p50"] is not None, name
    per = lat["per_request"]
    assert all(0 < t < e for t, e in zip(per["ttft_ms"], per["e2e_ms"], strict=True))
    assert result["backend_version"]["tensorrt_llm"] == "1.0.0"
    assert result["model"]["details"]["engine_source"] == "built"
    energy = result["energy"]
    assert energy["window_duration_s"] > 0 and energy["total"]["method"]
    assert any(u["component"] == "gpu" for u in energy["unavailable"])  # no NVML here: flagged, not invented
    assert energy["phases"]["method"] == "unavailable"
    assert result["memory"]["cuda_peak_allocated_bytes"] is None
    assert result["warmup"]["enabled"] and result["flops"]["total_flops"] > 0


def test_run_experiment_one_cycle(fake_trt, tiny_model, tmp_path):
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.runtime import JobContext

    cfg = trt_experiment(tmp_path)
    result = run_experiment(cfg, "trt-test", 1, tiny_model, None, JobContext(state_dir=str(tmp_path / "state")))
    _check_cycle(result, cfg)
    from tensorrt_llm.llmapi.llm import INSTANCES

    assert INSTANCES and all(llm._executor is None for llm in INSTANCES)  # run_experiment closed the engine


def _schema_lacks_stream_method() -> bool:
    raw = load_schema("raw_result")
    return "engine_stream_token_arrival" not in raw["properties"]["latency"]["properties"]["method"]["enum"]


@pytest.mark.xfail(
    _schema_lacks_stream_method(),
    reason="raw_result.schema.json latency.method does not list engine_stream_token_arrival yet",
    strict=True,
)
def test_run_experiment_writes_a_valid_raw_result(fake_trt, tiny_model, tmp_path):
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.results import validate_result

    cfg = trt_experiment(tmp_path)
    out = tmp_path / "raw" / "cycle_1.json"
    result = run_experiment(cfg, "trt-test", 1, tiny_model, str(out), JobContext(state_dir=str(tmp_path / "state")))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert validate_result(result, "raw_result") is True
    _check_cycle(result, cfg)


# ---------------------------------------------------------------------------------------------------- worker processes
def _as_snakemake_runs(script: Path, tmp_path: Path, config: dict, model: str) -> subprocess.CompletedProcess:
    """Run a workflow script as Snakemake does: a temporary file with a preamble that defines ``snakemake`` and sets
    ``__file__`` to the script's own path (snakemake/script/__init__.py, PythonScript.get_preamble), followed by the
    script's text, executed as ``python <file>``."""
    from llenergymeasure.campaign import sparse_config

    raw = tmp_path / "raw.json"
    preamble = f"""
import types
__real_file__ = __file__; __file__ = {str(script)!r}
snakemake = types.SimpleNamespace(
    params=types.SimpleNamespace(experiment={sparse_config(config)!r}),
    wildcards=types.SimpleNamespace(experiment="trt-exp", cycle="1"),
    input={{"model": {model!r}}}, output=types.SimpleNamespace(raw={str(raw)!r}), log=[{str(tmp_path / "m.log")!r}],
    config={{"_lem": {{"results_root": {str(tmp_path)!r}}}}},
)
"""
    wrapper = tmp_path / "tmp_snakemake_script.py"
    wrapper.write_text(preamble + script.read_text())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]),
        "LLM_ENERGY_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("TLLM_WORKER_USE_SINGLE_PROCESS", None)
    return subprocess.run(
        [sys.executable, str(wrapper)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_measure_script_survives_tensorrt_llms_spawned_worker(tiny_model, tmp_path):
    """With its MPI worker (tensorrt.single_process = false), TensorRT-LLM 1.0.0 makes mpi4py re-run the job's main
    file in the worker; the measurement script must do nothing there, or the worker dies (no ``snakemake`` in it)
    and the engine never starts."""
    cfg = trt_experiment(tmp_path, tensorrt={"single_process": False})
    run = _as_snakemake_runs(REPO / "scripts" / "measure.py", tmp_path, cfg, tiny_model)
    log = (tmp_path / "m.log").read_text() if (tmp_path / "m.log").exists() else ""
    assert run.returncode == 0, (run.stderr + log)[-4000:]
    result = json.loads((tmp_path / "raw.json").read_text())
    assert result["model"]["details"]["environment_set"] == {"TLLM_WORKER_USE_SINGLE_PROCESS": "0"}
    assert result["tokens"]["output_tokens"] > 0


def test_an_unguarded_script_fails_like_the_real_worker(tiny_model, tmp_path):
    """The fake re-runs the main file as mpi4py does: a script that works at import time fails the engine's start."""
    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(
        "from llenergymeasure.jobs import measure\n\nmeasure(config=snakemake.params.experiment, experiment_id='x',"
        " cycle=1, model_path=snakemake.input['model'], output=snakemake.output.raw,"
        " log_path=snakemake.log[0], runtime=snakemake.config['_lem'])\n"
    )
    run = _as_snakemake_runs(
        unguarded, tmp_path, trt_experiment(tmp_path, tensorrt={"single_process": False}), tiny_model
    )
    log = (tmp_path / "m.log").read_text()
    assert run.returncode != 0 and "NameError: name 'snakemake' is not defined" in log
    assert "MPI worker aborted while mpi4py re-ran the main module" in log


def test_one_gpu_engines_run_their_executor_in_process_by_default(fake_trt, tiny_model, tmp_path):
    from tensorrt_llm.llmapi import mpi_session

    backend = loaded(trt_experiment(tmp_path), tiny_model)
    try:
        assert backend.llm.executor_process == "single_process" and mpi_session.STARTS == []
        assert backend.info["environment_set"] == {"TLLM_WORKER_USE_SINGLE_PROCESS": "1"}
        assert os.environ["TLLM_WORKER_USE_SINGLE_PROCESS"] == "1"
    finally:
        backend.close()
    assert "TLLM_WORKER_USE_SINGLE_PROCESS" not in os.environ  # put back as it was
    several = loaded(trt_experiment(tmp_path, gpus=[0, 1], tensorrt={"tp_size": 2}), tiny_model)
    try:  # several ranks: always MPI workers, whatever the switch says
        assert several.llm.executor_process == "mpi_worker" and several.info["environment_set"] == {}
        assert mpi_session.STARTS[-1]["n_workers"] == 2
    finally:
        several.close()


# ---------------------------------------------------------------------------------------------------- release facts
def _checkpoint_with(tiny_model, tmp_path, quant: dict) -> str:
    import shutil

    folder = tmp_path / f"{quant['quant_method']}-checkpoint"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_int4_gptq_is_refused_and_the_release_cannot_build_it(fake_trt, tiny_model, tmp_path):
    """W4A16_GPTQ counts as calibrated but is no ModelOpt recipe, so 1.0.0's build takes the SmoothQuant path and
    asserts: refused at expansion, naming the release; the fake fails the same way when asked anyway."""
    from tensorrt_llm._tensorrt_engine import LLM
    from tensorrt_llm.llmapi import QuantAlgo, QuantConfig

    from llenergymeasure.campaign import semantic_problem

    problem = semantic_problem(trt_experiment(tmp_path, tensorrt={"quantization": "int4_gptq"}))
    assert problem.startswith("tensorrt.quantization = int4_gptq: TensorRT-LLM 1.0.0 cannot build it")
    with pytest.raises(AssertionError, match="Call from_hugging_face when there is no quantization"):
        LLM(model=tiny_model, quant_config=QuantConfig(quant_algo=QuantAlgo.W4A16_GPTQ))


@pytest.mark.parametrize(
    "quant", [{"quant_method": "gptq", "bits": 4}, {"quant_method": "awq", "bits": 4}, {"quant_method": "bitsandbytes"}]
)
def test_a_prequantised_checkpoint_is_refused(fake_trt, tiny_model, tmp_path, quant):
    from tensorrt_llm._tensorrt_engine import LLM

    from llenergymeasure.campaign import semantic_problem

    model = _checkpoint_with(tiny_model, tmp_path, quant)
    problem = semantic_problem(trt_experiment(tmp_path, model_name=model))
    assert f"carries a quantization_config (quant_method = {quant['quant_method']})" in problem and "1.0.0" in problem
    with pytest.raises(NotImplementedError, match="Unsupported quantization_config"):  # the release's loader
        LLM(model=model)


@pytest.mark.parametrize(
    ("dataset", "env", "needle"),
    [
        ("wikitext", {}, "calibrates text models from cnn_dailymail, pileval or a local dataset folder"),
        ("scienceqa", {}, "calibrates a ScienceQA set as image questions"),
        ("derek-thomas/science_qa", {}, "which a text model's tokenizer lacks"),
        (
            "cnn_dailymail",
            {"HF_DATASETS_OFFLINE": "1"},
            "is downloaded while the engine builds, but HF_DATASETS_OFFLINE is set",
        ),
        ("pileval", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ],
)
def test_calibration_sets_the_release_cannot_read_are_refused(dataset, env, needle):
    from llenergymeasure.backends.tensorrt import calibration_dataset_problem

    problem = calibration_dataset_problem(dataset, env)
    assert problem is not None and needle in problem


def test_calibration_sets_the_release_reads_pass(tmp_path):
    from llenergymeasure.backends.tensorrt import calibration_dataset_problem

    for name in ("cnn_dailymail", "abisee/cnn_dailymail", "pileval"):
        assert calibration_dataset_problem(name, {}) is None, name
    assert calibration_dataset_problem(calibration_folder(tmp_path), {"HF_HUB_OFFLINE": "1"}) is None
    no_text = tmp_path / "no-text"
    no_text.mkdir()
    (no_text / "train.jsonl").write_text(json.dumps({"article": "x"}) + "\n")
    assert "has no 'text' column" in calibration_dataset_problem(str(no_text), {})


def test_the_fake_builds_only_from_calibration_sets_the_release_reads(fake_trt, tiny_model, tmp_path):
    from tensorrt_llm._tensorrt_engine import LLM
    from tensorrt_llm.llmapi import CalibConfig, KvCacheConfig, QuantAlgo, QuantConfig

    fp8 = QuantConfig(quant_algo=QuantAlgo.FP8)
    with pytest.raises(NotImplementedError, match="Unsupported dataset name or local repo directory: wikitext"):
        LLM(model=tiny_model, quant_config=fp8, calib_config=CalibConfig(calib_dataset="wikitext"))
    with pytest.raises(ConnectionError):  # cnn_dailymail comes from the hub while building
        LLM(model=tiny_model, quant_config=fp8, calib_config=CalibConfig(calib_dataset="cnn_dailymail"))
    llm = LLM(
        model=tiny_model,
        quant_config=fp8,
        calib_config=CalibConfig(calib_dataset=calibration_folder(tmp_path)),
        kv_cache_config=KvCacheConfig(enable_block_reuse=False),
    )
    llm.shutdown()


def test_kv_reuse_after_a_warm_up_of_the_same_prompts_is_refused():
    """The warm-up runs the window's prompts first; TensorRT-LLM keeps their blocks for reuse, and its LLM API cannot
    empty them, so the window's prefills would be served from cache."""
    problem = semantic_problem(trt_experiment(tensorrt={"enable_kv_cache_reuse": True}))
    assert "enable_kv_cache_reuse = true with warmup.mode = full" in problem and "warmup.mode: off" in problem
    off = semantic_problems(trt_experiment(warmup={"mode": "off"}, tensorrt={"enable_kv_cache_reuse": True}))
    assert not any("enable_kv_cache_reuse" in p for p in off)


def test_a_minimum_length_is_refused_where_only_end_id_would_be_held_back(tiny_model, tmp_path):
    """vLLM holds back every EOS id below min_tokens, TensorRT-LLM only its end id: with a second EOS in the
    generation config, 0 < min_output_tokens < max_output_tokens would end requests differently."""
    import shutil

    two = tmp_path / "two-eos"
    shutil.copytree(tiny_model, two)
    gen = json.loads((two / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, 7]
    (two / "generation_config.json").write_text(json.dumps(gen))
    problem = semantic_problem(trt_experiment(model_name=str(two), min_output_tokens=2))
    assert "min_output_tokens = 2" in problem and "[2, 7]" in problem and "stopCriteriaKernels.cu" in problem
    for low in (0, 6):  # no minimum, or a forced length (every stop token ignored): nothing to disagree on
        assert semantic_problem(trt_experiment(model_name=str(two), min_output_tokens=low)) is None
    assert semantic_problem(trt_experiment(model_name=tiny_model, min_output_tokens=2)) is None  # one EOS


def test_int4_awq_calibrates_on_32_samples_and_says_so():
    """TensorRT-LLM 1.0.0 replaces an AWQ calibration size above 32 by 32 (quantize_and_export): another value is
    refused, and the build and the engine cache key get what is used."""
    problem = semantic_problem(
        trt_experiment(tensorrt={"quantization": "int4_awq", "calibration": {"num_samples": 128}})
    )
    assert "num_samples = 128 with int4_awq" in problem and "at most 32 samples" in problem
    fields = engine_key_fields(trt_experiment(tensorrt={"quantization": "int4_awq"}), "/m", "sm_90", "1.0.0")
    assert fields["calibration"]["num_samples"] == 32
    fp8 = engine_key_fields(trt_experiment(tensorrt={"quantization": "fp8"}), "/m", "sm_90", "1.0.0")
    assert fp8["calibration"]["num_samples"] == 512  # the other calibrating modes use what they are given
