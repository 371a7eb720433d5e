"""The vLLM backend against a stand-in of vLLM 0.11.0's offline API on GPUs (tests/fakes/engines/vllm), for what no
CPU here can show: tensor and pipeline parallelism, GPU quantisation kernels, CUDA attention backends, CUDA memory,
the 0.11.0 release facts (its CPU build does not install here), and the backend's arithmetic on the engine's
records. The step loop, tokens, latencies, warm-up and sampling run against the real engine (vLLM's CPU build) in
tests/test_vllm_engine.py. Release facts of 0.32.0 that a CPU cannot show are checked here on the rules alone."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ENGINE_PROMPTS, TINY_WORKLOAD, forget_engine, small_experiment
from llenergymeasure.backends import vllm as backend_module
from llenergymeasure.backends.vllm import VllmBackend, engine_environment, engine_kwargs, problems
from llenergymeasure.campaign import semantic_problem
from llenergymeasure.errors import MeasurementError
from llenergymeasure.flops import analytic_parameters
from llenergymeasure.runtime import JobContext

LATENCY_METHOD = "engine_step_token_arrival"
#: the release the stand-in mirrors
FAKE_RELEASE = "0.11.0"


def vllm_experiment(**overrides) -> dict:
    """A resolved vLLM experiment small enough for 2 CPU cores."""
    return small_experiment({**TINY_WORKLOAD, "backend": "vllm"}, overrides)


def _forget_engine() -> None:
    forget_engine("vllm")


@pytest.fixture
def loaded(fake_vllm, tiny_model):
    """Build and load a backend; closes every backend it built."""
    built = []

    def make(**overrides):
        b = VllmBackend(vllm_experiment(**overrides), tiny_model)
        built.append(b)
        b.load()
        return b, fake_vllm.LLM.instances[-1]

    yield make
    for b in built:
        b.close()


PROMPTS = ENGINE_PROMPTS


# ---------------------------------------------------------------------------------------------- engine arguments
def test_default_engine_arguments(loaded, tiny_model):
    _backend, llm = loaded()
    assert llm.given == {
        "model": tiny_model,
        "tokenizer": tiny_model,
        "dtype": "float32",
        "seed": 42,
        "max_num_seqs": 256,
        "gpu_memory_utilization": 0.9,
        "cpu_offload_gb": 0,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_prefix_caching": False,
        "max_model_len": 64 + 8,  # null -> max_input_tokens + max_output_tokens
        "enforce_eager": False,
        "load_format": "auto",
        "kv_cache_dtype": "auto",
        "disable_sliding_window": False,
        "enable_lora": False,
    }
    # null in the schema: left to the engine (max_num_batched_tokens, quantization, speculative_config), and the
    # executor is vLLM's own single-GPU choice
    assert llm.engine_args["max_num_batched_tokens"] is None and llm.engine_args["quantization"] is None
    assert (
        llm.engine_args["speculative_config"] is None
        and llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend == "uni"
    )
    assert llm.environment == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_ATTENTION_BACKEND": None,
        "VLLM_FLASH_ATTN_VERSION": None,
        "TORCH_COMPILE_DISABLE": None,
        "NCCL_P2P_DISABLE": None,
    }


def test_every_engine_field_reaches_the_engine(loaded, tiny_model):
    overrides = {
        "fp_precision": "float16",
        "gpus": [0, 1, 2, 3],
        "adapter": "/adapters/my-lora",
        "vllm": {
            "max_num_seqs": 4,
            "max_num_batched_tokens": 512,
            "gpu_memory_utilization": 0.5,
            "cpu_offload_gb": 1.5,
            "tensor_parallel_size": 2,
            "pipeline_parallel_size": 2,
            "distributed_backend": "ray",
            "disable_custom_all_reduce": True,
            "enable_prefix_caching": True,
            "block_size": 32,
            "max_model_len": 100,
            "enforce_eager": True,
            "quantization": "fp8",
            "load_format": "safetensors",
            "kv_cache_dtype": "fp8",
            "attention": {"backend": "FLASH_ATTN", "flash_version": 3, "disable_sliding_window": True},
            "speculative": {"method": "eagle", "model": "org/eagle-head", "num_tokens": 3},
            "lora": {"enabled": True, "max_loras": 2, "max_rank": 32, "extra_vocab_size": 512},
            "extra": {"max_logprobs": 30, "swap_space": 3},
        },
    }
    assert semantic_problem(vllm_experiment(**overrides)) is None
    backend, llm = loaded(**overrides)
    assert llm.given == {
        "model": tiny_model,
        "tokenizer": tiny_model,
        "dtype": "float16",
        "seed": 42,
        "max_num_seqs": 4,
        "max_num_batched_tokens": 512,
        "gpu_memory_utilization": 0.5,
        "swap_space": 3,  # extra is merged last
        "cpu_offload_gb": 1.5,
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
        "disable_custom_all_reduce": True,
        "enable_prefix_caching": True,
        "block_size": 32,
        "max_model_len": 100,
        "enforce_eager": True,
        "quantization": "fp8",
        "load_format": "safetensors",
        "kv_cache_dtype": "fp8",
        "disable_sliding_window": True,
        "speculative_config": {"method": "eagle", "model": "org/eagle-head", "num_speculative_tokens": 3},
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 32,
        "lora_extra_vocab_size": 512,
        "max_logprobs": 30,
    }
    # attention is chosen through the environment in 0.11.0 (no engine argument); speculative decoding keeps the
    # engine core in its own process (the in-process core of 0.11.0 drops drafts)
    assert llm.environment == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": None,
        "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
        "VLLM_FLASH_ATTN_VERSION": "3",
        "TORCH_COMPILE_DISABLE": "1",
        "NCCL_P2P_DISABLE": None,
    }
    assert backend.gpu_count() == 4


def test_other_attention_and_speculative_choices(loaded):
    _, llm = loaded(
        vllm={
            "attention": {"backend": "FLASHINFER"},
            "speculative": {"method": "ngram", "num_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
        }
    )
    assert (
        llm.environment["VLLM_ATTENTION_BACKEND"] == "FLASHINFER" and llm.environment["VLLM_FLASH_ATTN_VERSION"] is None
    )
    assert llm.given["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 5,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 4,
    }
    assert "distributed_executor_backend" not in llm.given  # one GPU: vLLM's in-process executor


def test_user_environment_is_kept_and_restored(fake_vllm, tiny_model, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "TRITON_ATTN")
    b = VllmBackend(vllm_experiment(vllm={"attention": {"backend": "FLASHINFER"}}), tiny_model)
    info = b.load()
    llm = fake_vllm.LLM.instances[-1]
    assert llm.environment["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # the user's choice
    assert llm.environment["VLLM_ATTENTION_BACKEND"] == "FLASHINFER"  # the experiment names it explicitly
    assert info["environment_set"] == ["VLLM_ATTENTION_BACKEND"]
    assert info["parameters_method"].startswith("analytic_from_hf_config")  # engine core in another process
    b.close()
    import os

    assert os.environ["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_load_record(fake_vllm, tiny_model):
    b = VllmBackend(vllm_experiment(), tiny_model)
    record = b.load()
    try:
        assert record["device"] == "cuda" and record["dtype"] == "float32" and record["architecture"] == "llama"
        assert record["parameters"] == 2940672 and record["parameters_method"] == "engine_model_numel"
        assert record["model_size_bytes"] == 2940672 * 4  # the stand-in computes in float32
        assert analytic_parameters(b.model_config()) == 2940672  # the count used when the model is out of reach
        assert record["vllm_version"] == FAKE_RELEASE == record["release_facts"] and record["weights"] == "checkpoint"
        assert (
            record["engine_effective"]["chunked_prefill"] is True and record["engine_effective"]["max_model_len"] == 72
        )
        assert record["environment_set"] == ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        json.dumps(record)
        assert VllmBackend.version()["vllm"] == FAKE_RELEASE
    finally:
        b.close()


# ---------------------------------------------------------------------------------------------- requests
def test_lora_adapter_goes_with_every_request(loaded):
    """0.11.0's LoRARequest on every request (0.32.0 runs an adapter for real in tests/test_vllm_engine.py)."""
    backend, llm = loaded(adapter="/adapters/my-lora", vllm={"lora": {"enabled": True}})
    backend.run(PROMPTS[:3], backend.plan(PROMPTS[:3]), seed=0)
    loras = [lora for _, _, _, lora in llm.llm_engine.requests]
    assert all(lr is loras[0] for lr in loras) and len(loras) == 3
    assert (loras[0].lora_path, loras[0].lora_int_id, loras[0].lora_name) == ("/adapters/my-lora", 1, "my-lora")


# ---------------------------------------------------------------------------------------------- 0.11.0's engine core
def test_speculation_is_inert_with_an_in_process_core(fake_vllm, tiny_model, monkeypatch):
    """Why the backend leaves multiprocessing on for speculative decoding: vLLM 0.11.0 (and the stand-in) never
    uses drafts when the engine core runs in-process."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    spec = {"method": "ngram", "num_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 2}
    b = VllmBackend(vllm_experiment(max_output_tokens=16, min_output_tokens=16, vllm={"speculative": spec}), tiny_model)
    b.load()
    try:
        out = b.run(PROMPTS[:1], b.plan(PROMPTS[:1]), seed=0)
        assert out.batches[0].steps == 16 and not fake_vllm.LLM.instances[-1].llm_engine.drafts_used
    finally:
        b.close()


def test_validity_flags(loaded):
    backend, _ = loaded(vllm={"max_num_seqs": 8})
    out = backend.run(PROMPTS, backend.plan(PROMPTS), seed=0)
    codes = dict(backend.validity_flags(out.batches))
    assert "batch_not_saturated" in codes and "at most 6 sequences" in codes["batch_not_saturated"]
    backend, _ = loaded(vllm={"max_num_seqs": 2})
    out = backend.run(PROMPTS, backend.plan(PROMPTS), seed=0)
    assert backend.validity_flags(out.batches) == []


def test_memory_and_close(fake_vllm, tiny_model):
    import os

    b = VllmBackend(vllm_experiment(), tiny_model)
    b.load()
    llm = fake_vllm.LLM.instances[-1]
    b.reset_peak_memory()
    assert b.peak_memory() == {
        "cuda_peak_allocated_bytes": None,
        "cuda_peak_reserved_bytes": None,
        "gpu_memory_used_bytes": None,
        "kv_cache_capacity_tokens": None,
    }
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    b.close()
    from vllm.distributed import parallel_state

    assert llm.llm_engine.engine_core.is_shut_down and parallel_state.calls == [False]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ and b.llm is None
    b.close()  # twice is harmless (run_experiment closes also after a failed load)


# ---------------------------------------------------------------------------------------------- one measurement
def test_one_measured_cycle(fake_vllm, tiny_model, tmp_path):
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.results import validate_result
    from llenergymeasure.runtime import JobContext

    cfg = vllm_experiment(vllm={"max_num_seqs": 4})
    assert semantic_problem(cfg) is None
    out = tmp_path / "cycle_1.json"
    result = run_experiment(cfg, "vllm-exp", 1, tiny_model, str(out), JobContext(state_dir=str(tmp_path / "state")))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert validate_result(result, "raw_result") is True
    assert result["backend"] == "vllm" and result["backend_version"]["vllm"] == FAKE_RELEASE
    tok = result["tokens"]
    assert tok["output_tokens"] == 6 * 8 and tok["num_requests"] == 6 and tok["scheduling"] == "continuous"
    assert tok["input_tokens"] == tok["padded_input_tokens"] > 0 and tok["num_batches"] == 1
    lat = result["latency"]
    assert lat["method"] == LATENCY_METHOD
    assert lat["ttft_ms"]["n"] == 6 and lat["itl_ms"]["n"] == 6 * 7 and lat["tpot_ms"]["n"] == 6
    assert 0 < lat["ttft_ms"]["p50"] <= lat["e2e_ms"]["p50"]
    energy = result["energy"]
    assert energy["phases"]["method"] == "unavailable"  # continuous batching: no prefill/decode time split
    assert any(u["component"] == "gpu" for u in energy["unavailable"])  # no NVML on this machine
    assert result["model"]["details"]["release_facts"] == FAKE_RELEASE
    assert result["memory"]["cuda_peak_allocated_bytes"] is None and result["warmup"]["iterations_completed"] >= 3
    assert result["batches"][0]["steps"] > 0 and "start_s" in result["batches"][0]
    llm = fake_vllm.LLM.instances[-1]
    assert llm.llm_engine.engine_core.is_shut_down  # run_experiment closed the engine


# ---------------------------------------------------------------------------------------------- errors
def test_missing_engine_is_a_clear_error(monkeypatch, tiny_model, tmp_path):
    _forget_engine()
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as where it is not installed
    b = VllmBackend(vllm_experiment(), tiny_model)
    for call in (b.resolve_device, b.load):
        with pytest.raises(MeasurementError) as err:
            call()
        text = str(err.value)
        assert "vllm is not importable here" in text and "snakemake --sdm apptainer" in text
    from llenergymeasure.measure import run_experiment

    with pytest.raises(MeasurementError, match="run vLLM experiments in their container"):
        run_experiment(vllm_experiment(), "x", 1, tiny_model, None, JobContext(state_dir=str(tmp_path)))
    assert VllmBackend.version()["vllm"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vllm": {"speculative": {"model": "org/draft"}}}, "method = draft_model is not supported"),
        ({"vllm": {"speculative": {"method": "draft_model", "model": "org/draft"}}}, "draft_model is not supported"),
        ({"vllm": {"speculative": {"method": "mlp", "model": "org/mlp"}}}, "mlp is not supported"),
        ({"adapter": "/a", "vllm": {"lora": {"enabled": True, "max_rank": 12}}}, "max_rank = 12"),
        ({"adapter": "/a", "vllm": {"lora": {"enabled": True, "extra_vocab_size": 100}}}, "extra_vocab_size = 100"),
        ({"vllm": {"max_num_batched_tokens": 128}}, "smaller than vllm.max_num_seqs = 256"),
    ],
)
def test_settings_the_pinned_release_cannot_run(fake_vllm, tiny_model, overrides, message):
    b = VllmBackend(vllm_experiment(**overrides), tiny_model)
    with pytest.raises(MeasurementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        b.load()
    assert fake_vllm.LLM.instances == []  # rejected before the engine was built
    b.close()


def test_device_and_gpu_count(fake_vllm, tiny_model):
    b = VllmBackend(
        vllm_experiment(gpus=[0, 1, 2, 3, 4, 5], vllm={"tensor_parallel_size": 3, "pipeline_parallel_size": 2}),
        tiny_model,
    )
    assert b.resolve_device() == "cuda" and b.gpu_count() == 6
    cpu = VllmBackend({**vllm_experiment(), "device": "cpu"}, tiny_model)
    with pytest.raises(MeasurementError, match=r"device = cpu needs vLLM's CPU build .* is a CUDA build"):
        cpu.resolve_device()
    assert "vLLM 0.11.0 is installed" in semantic_problem({**vllm_experiment(), "device": "cpu"})  # before any job


def test_module_imports_without_the_engine():
    import subprocess

    code = (
        "import sys; from llenergymeasure.campaign import resolve_experiment; import llenergymeasure.backends.vllm as m; "
        "m.problems(resolve_experiment({'backend': 'vllm', 'model_name': 'org/model', 'fp_precision': 'float16'})); "
        "assert 'vllm' not in sys.modules; print(m.NEWEST)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == backend_module.NEWEST == "0.32.0"
    assert f"docker://vllm/vllm-openai:v{backend_module.NEWEST}" == backend_module.PINNED_IMAGE


# ---------------------------------------------------------------------------------------------- release facts
def _quantised_copy(tiny_model, tmp_path, quant: dict) -> str:
    """The tiny model's folder with a quantization_config, as a pre-quantised checkpoint carries one (the stand-in
    runs the weights unquantised; what it checks is what the engine is told and picks)."""
    import shutil

    folder = tmp_path / f"{quant['quant_method']}-model"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@pytest.mark.parametrize(
    ("requested", "group_size", "kernels"),
    [(None, 128, "awq_marlin"), ("awq", 128, "awq_marlin"), ("awq", 256, "awq")],
    ids=["open", "named", "named-no-marlin-group"],
)
def test_awq_kernels_are_vllms_choice_and_recorded(fake_vllm, tiny_model, tmp_path, requested, group_size, kernels):
    """Naming quantization=awq makes vLLM 0.11.0 keep the legacy AWQ kernels ("forcing awq"), and naming awq_marlin
    crashes at load where Marlin cannot serve the checkpoint (a group size it lacks, a GPU before sm80). So 0.11.0 is
    given no method: it picks Marlin where it can and the legacy kernels elsewhere, and the choice is recorded."""
    model = _quantised_copy(tiny_model, tmp_path, {**AWQ, "group_size": group_size})
    cfg = vllm_experiment(model_name=model, fp_precision="float16", vllm={"quantization": requested})
    assert semantic_problem(cfg) is None
    b = VllmBackend(cfg, model)
    info = b.load()
    try:
        llm = fake_vllm.LLM.instances[-1]
        assert "quantization" not in llm.given
        assert info["quantization"] == {"requested": requested, "given": None, "effective": kernels}
        assert not any("forcing awq" in m for m in llm.llm_engine.log_messages)
        assert info["weights"] == f"checkpoint, {kernels} quantisation"
        # int4 weights are packed eight to an int32: the count comes from the model config, not from numel()
        assert info["parameters"] == analytic_parameters(b.model_config())
        assert info["parameters_method"].startswith("analytic_from_hf_config (quantised weights")
    finally:
        b.close()


def test_a_checkpoint_of_another_method_found_only_at_load_is_refused_before_the_window(
    fake_vllm, tiny_model, tmp_path
):
    """Where the checkpoint could not be read before the engine loaded it (a hub id not cached yet), the method the
    engine chose is checked against the one asked for."""
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
    model = _quantised_copy(tiny_model, tmp_path, gptq)
    b = VllmBackend(
        vllm_experiment(model_name="org/not-cached", fp_precision="float16", vllm={"quantization": "awq"}), model
    )
    with pytest.raises(
        MeasurementError, match=r"vllm.quantization = awq, but the engine loaded org/not-cached with gptq_marlin"
    ):
        b.load()
    b.close()


def test_the_stand_in_keeps_legacy_kernels_when_awq_is_named(fake_vllm, tiny_model, tmp_path):
    """What the backend avoids, as 0.11.0 does it (model_executor/layers/quantization/awq_marlin.py:122-127)."""
    from vllm import LLM

    model = _quantised_copy(tiny_model, tmp_path, AWQ)
    llm = LLM(model=model, quantization="awq")
    assert llm.llm_engine.vllm_config.model_config.quantization == "awq"
    assert any("so forcing awq" in m for m in llm.llm_engine.log_messages)


def test_a_checkpoint_contradicting_the_quantization_is_refused(tiny_model, tmp_path):
    model = _quantised_copy(tiny_model, tmp_path, AWQ)
    problem = semantic_problem(vllm_experiment(model_name=model, fp_precision="float16", vllm={"quantization": "gptq"}))
    assert "vllm.quantization = gptq, but" in problem and "quantised with awq" in problem
    plain = semantic_problem(
        vllm_experiment(model_name=tiny_model, fp_precision="float16", vllm={"quantization": "awq"})
    )
    assert "needs a checkpoint quantised with AWQ" in plain


def test_bitsandbytes_loads_with_its_own_loader(fake_vllm, tiny_model):
    """vLLM 0.11.0 forces load_format=bitsandbytes for BitsAndBytes (engine/arg_utils.py:1058-1059): recorded as
    effective, and an explicit load_format beside it is refused as having no effect."""
    b = VllmBackend(vllm_experiment(fp_precision="float16", vllm={"quantization": "bitsandbytes"}), tiny_model)
    info = b.load()
    try:
        assert (
            info["engine_effective"]["load_format"] == "bitsandbytes" and info["engine_args"]["load_format"] == "auto"
        )
    finally:
        b.close()
    refused = semantic_problem(vllm_experiment(vllm={"quantization": "bitsandbytes", "load_format": "safetensors"}))
    assert "vllm.load_format = safetensors" in refused and "bitsandbytes loader" in refused


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"swap_space": 8}, "allocates no CPU swap blocks (v1/engine/core.py:204)"),
        ({"enable_chunked_prefill": False}, "engine/arg_utils.py:1547-1548"),
        (
            {"speculative": {"method": "eagle", "model": "org/eagle", "draft_tp_size": 2}},
            "config/speculative.py:466-490",
        ),
        ({"min_p": 0.1}, "resets min_p for greedy requests"),
    ],
)
def test_settings_vllm_0_11_0_ignores_are_refused_naming_the_release(fake_vllm, section, needle):
    problem = semantic_problem(vllm_experiment(vllm=section))
    assert problem is not None and needle in problem and "vLLM 0.11.0" in problem


# ---------------------------------------------------------------------------------------------- 0.32.0 on GPUs
# What 0.32.0 does differently on GPUs, on the rules and engine inputs alone (its CPU build runs the rest for real,
# tests/test_vllm_engine.py). The release is given explicitly: nothing here depends on what is installed.
NEW = "0.32.0"


def gpu_experiment(**overrides) -> dict:
    return vllm_experiment(device="cuda", fp_precision="float16", **overrides)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"swap_space": 8}, "vLLM 0.32.0 has no swap space"),
        ({"speculative": {"method": "mlp", "model": "org/mlp"}}, "mlp is not supported by vLLM 0.32.0"),
        (
            {"speculative": {"method": "draft_model", "model": "org/draft", "draft_tp_size": 2}},
            "v1/spec_decode/draft_model.py:71-78",
        ),
        ({"quantization": "bitsandbytes"}, "vLLM 0.32.0 has no BitsAndBytes method"),
        (
            {"lora": {"enabled": True, "extra_vocab_size": 512}},
            "extra_vocab_size = 512: vLLM 0.32.0 has no such argument",
        ),
    ],
)
def test_what_0_32_0_lacks_is_refused_naming_the_release(section, needle):
    config = gpu_experiment(adapter="/adapters/a" if "lora" in section else None, vllm=section)
    assert any(needle in p for p in problems(config, NEW)), problems(config, NEW)


def test_what_0_32_0_runs_that_0_11_0_refused():
    chunked = gpu_experiment(vllm={"enable_chunked_prefill": False})
    draft = gpu_experiment(vllm={"speculative": {"method": "draft_model", "model": "org/draft"}})
    rank_one = gpu_experiment(adapter="/adapters/a", vllm={"lora": {"enabled": True, "max_rank": 1}})
    for config in (chunked, draft, rank_one):
        assert problems(config, NEW) == [] and problems(config, FAKE_RELEASE) != []
    rel = backend_module.RELEASES[NEW]
    assert engine_kwargs(chunked, "m", rel, "cuda")["enable_chunked_prefill"] is False  # honoured: given to it
    assert engine_kwargs(draft, "m", rel, "cuda")["speculative_config"]["draft_tensor_parallel_size"] == 1
    assert "lora_extra_vocab_size" not in engine_kwargs(rank_one, "m", rel, "cuda")  # a TypeError in 0.32.0


def test_0_32_0_takes_attention_as_an_engine_argument_and_quantisation_names_as_they_are():
    rel = backend_module.RELEASES[NEW]
    config = gpu_experiment(
        vllm={"attention": {"backend": "FLASH_ATTN", "flash_version": 3}, "quantization": "awq"},
        model_name="org/awq-model",
    )
    kwargs = engine_kwargs(config, "m", rel, "cuda")
    assert kwargs["attention_config"] == {"backend": "FLASH_ATTN", "flash_attn_version": 3}
    assert kwargs["quantization"] == "awq"  # 0.32.0 picks Marlin itself where the GPU and checkpoint allow
    assert engine_environment(config, {}, rel) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # no attention variables
    old = engine_kwargs(config, "m", backend_module.RELEASES[FAKE_RELEASE], "cuda")
    assert "attention_config" not in old and "quantization" not in old  # 0.11.0 picks the kernels itself


def test_0_32_0_keeps_speculation_in_process():
    """0.32.0's in-process core hands the drafts to the scheduler (v1/engine/core.py:693-696), so the step loop
    stays in this process with speculation too; 0.11.0's would drop them."""
    config = gpu_experiment(vllm={"speculative": {"method": "ngram", "prompt_lookup_max": 4}})
    assert engine_environment(config, {}, backend_module.RELEASES[NEW]) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert engine_environment(config, {}, backend_module.RELEASES[FAKE_RELEASE]) == {}


def test_the_release_is_read_from_the_installed_distribution(fake_vllm):
    assert backend_module.installed() == backend_module.Installed("0.11.0", False)  # the stand-in's record
    assert backend_module.engine_release().version == FAKE_RELEASE
    assert backend_module.release("0.32.0+cpu").version == NEW and backend_module.release("0.20.1") is None
    assert backend_module.engine_release("0.20.1").version == NEW  # an unknown release: the newest facts
