"""The PyTorch backend on the real tiny model (batching, token counting without padding, native latency), and the
base class every backend derives from, with the registry's checks."""

from __future__ import annotations

import os

import pytest

from conftest import tiny_experiment
from llenergymeasure.backends.pytorch import PyTorchBackend, count_new_tokens, plan_batches


def test_static_and_sorted_static():
    lengths = [5, 1, 4, 2, 3]
    assert [b.indices for b in plan_batches(lengths, "static", 2, 100)] == [[0, 1], [2, 3], [4]]
    assert [b.indices for b in plan_batches(lengths, "sorted_static", 2, 100)] == [[1, 3], [4, 2], [0]]


def test_dynamic_respects_budget_and_batch_size():
    lengths = [10, 10, 10, 30, 5, 5, 5, 5]
    batches = plan_batches(lengths, "dynamic", 3, 40)
    for b in batches:
        assert len(b.indices) <= 3 and b.padded_tokens <= 40
    assert [i for b in batches for i in b.indices] == list(range(8))  # order kept, nothing lost or duplicated
    sorted_batches = plan_batches(lengths, "sorted_dynamic", 3, 40)
    assert sorted(i for b in sorted_batches for i in b.indices) == list(range(8))
    flat = [lengths[i] for b in sorted_batches for i in b.indices]
    assert flat == sorted(lengths)
    assert [len(b.indices) for b in sorted_batches] == [3, 3, 1, 1]  # 3 x 10 fits in 40; 2 x 30 does not


def test_count_new_tokens_stops_at_eos():
    assert count_new_tokens([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]], {2}) == [3, 5, 1]


@pytest.fixture(scope="module")
def backend(tiny_model):
    b = PyTorchBackend(tiny_experiment(), tiny_model)
    b.load()
    return b


def test_input_tokens_exclude_padding(backend):
    """B2: token counts come from the attention mask, not the padded tensor."""
    prompts = ["short", "a much longer prompt with many more words in it than the first one"]
    unpadded = [len(backend.tokenizer(p)["input_ids"]) for p in prompts]
    start, end, steps, counts, input_tokens = backend.generate_batch(backend.encode(prompts), 5, 5, 0)
    assert input_tokens == unpadded and unpadded[0] < unpadded[1]
    assert counts == [5, 5] and len(steps) == 5 and start < steps[0] <= steps[-1] <= end


def test_native_latency_at_batch_size_above_one(backend):
    """B9: every request gets TTFT, ITL and E2E from real step times, also in batched generate."""
    prompts = ["one", "two words", "three words here", "and four words here"]
    batches = plan_batches(backend.count_prompt_tokens(prompts), "static", 2, 10_000)
    out = backend.run(prompts, batches, seed=0)
    assert len(out.requests) == 4 and len(out.batches) == 2
    for r in out.requests:
        assert 0 < r.ttft_s <= r.e2e_s
        assert len(r.itl_s) == r.output_tokens - 1 == 7
        assert r.e2e_s - r.ttft_s == pytest.approx(sum(r.itl_s))
    first_batch = [r for r in out.requests if r.index in (0, 1)]
    assert first_batch[0].ttft_s == first_batch[1].ttft_s  # same step, same batch
    # each request's latencies count from its batch's submission
    starts = sorted({r.start_t for r in out.requests})
    assert starts == [b.start_t for b in out.batches] and first_batch[0].start_t == out.batches[0].start_t


def test_warmup_converges_or_stops_at_max(backend):
    cfg = {
        "enabled": True,
        "mode": "cv",
        "convergence_detection": True,
        "cv_threshold": 1.0,
        "max_prompts": 10,
        "window_size": 3,
        "min_prompts": 3,
    }
    batches = backend.plan(["a", "b"])
    w = backend.warmup(["a", "b"], batches, cfg)
    assert w["converged"] is True and w["iterations_completed"] == 3 and len(w["latencies_ms"]) == 3
    assert w["mode"] == "cv" and w["shapes"] == []
    strict = {**cfg, "cv_threshold": 1e-9, "max_prompts": 4}
    w = backend.warmup(["a", "b"], batches, strict)
    assert w["converged"] is False and w["iterations_completed"] == 4
    assert backend.warmup(["a", "b"], batches, {**cfg, "enabled": False})["iterations_completed"] == 0
    assert backend.warmup(["a", "b"], batches, {**cfg, "mode": "off"})["mode"] == "off"


def test_full_warmup_runs_every_window_shape_before_the_window(backend):
    """Every distinct (batch size, padded prompt length) the window will run is generated once, at the full
    output length, before the CV loop: the window meets no shape for the first time."""
    prompts = ["one", "two words", "three words here", "and four words here", "five words are in here", "six"]
    batches = backend.plan(prompts)
    calls = []
    real = backend.generate_batch

    def recording(enc, max_new, min_new, seed):
        calls.append((tuple(enc["input_ids"].shape), max_new, min_new, seed))
        return real(enc, max_new, min_new, seed)

    backend.generate_batch = recording
    try:
        cfg = {
            "enabled": True,
            "mode": "full",
            "convergence_detection": True,
            "cv_threshold": 1.0,
            "max_prompts": 3,
            "window_size": 3,
            "min_prompts": 3,
        }
        w = backend.warmup(prompts, batches, cfg)
        warm_calls = list(calls)
        calls.clear()
        out = backend.run(prompts, batches, backend.config["random_seed"])
    finally:
        del backend.generate_batch
    window_shapes = {(b.size, b.padded_input_tokens) for b in out.batches}
    assert {(s["batch_size"], s["padded_input_tokens"]) for s in w["shapes"]} == window_shapes
    assert all(s["new_tokens"] == backend.config["max_output_tokens"] for s in w["shapes"])
    assert w["mode"] == "full" and w["full_pass_s"] > 0 and w["iterations_completed"] == 3
    # the pass used the window's exact calls: tensor shapes, output lengths and per-batch seeds
    full_pass = warm_calls[: len(w["shapes"])]
    assert set(full_pass) <= set(calls) and {c[0] for c in full_pass} == {c[0] for c in calls}


def test_forced_output_length_adds_no_logits_processor(backend, monkeypatch):
    """A forced length switches EOS stopping off instead of masking EOS at every step; the way is recorded, and
    every generated token counts (EOS included, wherever it falls)."""
    from transformers.generation import logits_process

    masked = []
    original = logits_process.MinNewTokensLengthLogitsProcessor.__call__

    def spy(self, input_ids, scores):
        masked.append(input_ids.shape[1])
        return original(self, input_ids, scores)

    monkeypatch.setattr(logits_process.MinNewTokensLengthLogitsProcessor, "__call__", spy)
    enc = backend.encode(["hello", "a longer prompt here"])
    _, _, steps, counts, _ = backend.generate_batch(enc, 6, 6, 0)
    assert counts == [6, 6] and len(steps) == 6 and masked == []  # no per-step EOS mask
    assert backend.length_forcing() == "eos_stopping_off"
    backend.generate_batch(enc, 6, 2, 0)  # a minimum below the maximum needs the mask: it runs at every step
    assert len(masked) >= 2


def test_tokenisation_happens_when_planning(backend, monkeypatch):
    """Inside the window the backend only generates: prompts were tokenised and placed on the device by plan()."""
    prompts = ["alpha", "beta gamma", "delta"]
    batches = backend.plan(prompts)
    monkeypatch.setattr(backend, "tokenizer", None)  # any tokenisation now would fail
    out = backend.run(prompts, batches, 0)
    assert len(out.requests) == 3 and len(out.steps) == sum(b.steps for b in out.batches)


def test_sampling_is_reproducible_with_seed(tiny_model):
    cfg = tiny_experiment(decoder={"preset": "standard"}, min_output_tokens=0)
    b = PyTorchBackend(cfg, tiny_model)
    b.load()
    import torch

    def tokens(seed):
        torch.manual_seed(seed)
        enc = b.encode(["hello"])
        return b.model.generate(**enc, **b._generate_kwargs(6, 6)).tolist()

    assert tokens(1) == tokens(1)


def test_data_parallel_shards_prompts_across_processes(tiny_model, tmp_path):
    """Two real processes on the CPU: each generates its own half of the prompts (none twice), one raw result
    pools both parts, and the energy is one reading for the window (not one per process)."""
    from conftest import tiny_experiment
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.runtime import JobContext

    config = tiny_experiment(num_input_prompts=6, pytorch={"batch_size": 2, "num_processes": 2})
    result = run_experiment(
        config, "dp", 1, tiny_model, str(tmp_path / "raw.json"), JobContext(state_dir=str(tmp_path / "s"))
    )
    assert result["num_processes"] == 2
    parts = result["processes"]
    assert [p["process_index"] for p in parts] == [0, 1]
    assert [p["num_requests"] for p in parts] == [3, 3]
    assert result["tokens"]["num_requests"] == 6  # sharded, not duplicated
    assert sum(p["output_tokens"] for p in parts) == result["tokens"]["output_tokens"] == 6 * 8
    assert len(result["latency"]["per_request"]["ttft_ms"]) == 6  # latencies pooled from both processes
    assert {b["process_index"] for b in result["batches"]} == {0, 1}
    cpu = [c for c in result["energy"]["components"] if c["component"] == "cpu"]
    assert len(cpu) >= 1 and len({c["device"] for c in cpu}) == len(cpu)  # each device read once
    w0, w1 = 0.0, result["timestamps"]["window_duration_s"]
    for b in result["batches"]:  # both processes' batches lie inside the one energy window
        assert w0 <= b["start_s"] <= b["end_s"] <= w1 + 1e-6
    assert result["model"]["details"]["data_parallel"]["num_processes"] == 2
    for p in parts:  # each process's span, in seconds since the window opened
        assert w0 <= p["start_s"] <= p["end_s"] <= w1 + 1e-6


def test_torch_compile_compiles_the_forward_and_records_it(tiny_model):
    """pytorch.torch_compile reaches torch.compile (aot_eager here: no code generation on the CPU test machine),
    the compiled model generates the same tokens as the eager one, and the raw result's model details say so."""
    eager = PyTorchBackend(tiny_experiment(), tiny_model)
    eager.load()
    compiled = PyTorchBackend(
        tiny_experiment(pytorch={"batch_size": 2, "torch_compile": True, "torch_compile_backend": "aot_eager"}),
        tiny_model,
    )
    info = compiled.load()
    assert info["torch_compile"] == {
        "mode": "default",
        "backend": "aot_eager",
        "target": "model.forward",
        "compiled_during": "warm-up",
    }
    assert eager.load()["torch_compile"] is None
    assert hasattr(compiled.model.forward, "_torchdynamo_orig_callable") and not hasattr(
        eager.model.forward, "_torchdynamo_orig_callable"
    )
    prompts = ["hello there", "a longer prompt here"]
    assert (
        compiled.model.generate(**compiled.encode(prompts), **compiled._generate_kwargs(4, 4)).tolist()
        == eager.model.generate(**eager.encode(prompts), **eager._generate_kwargs(4, 4)).tolist()
    )


def test_static_cache_reaches_generate(tiny_model, monkeypatch):
    b = PyTorchBackend(tiny_experiment(pytorch={"batch_size": 2, "cache_implementation": "static"}), tiny_model)
    info = b.load()
    seen = {}
    real = b.model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "generate", spy)
    _, _, _steps, counts, _ = b.generate_batch(b.encode(["one", "two words"]), 5, 5, 0)
    assert seen["cache_implementation"] == "static" and seen["disable_compile"] is True and counts == [5, 5]
    assert info["cache_implementation"] == "static"
    if hasattr(b.model.generation_config, "max_cache_len"):  # one cache size for every batch of the experiment
        assert seen["max_cache_len"] == b.config["max_input_tokens"] + b.config["max_output_tokens"]
    dynamic = PyTorchBackend(tiny_experiment(), tiny_model)
    dynamic.load()
    assert dynamic._generate_kwargs(5, 5)["cache_implementation"] == "dynamic"


def test_cuda_graph_compile_modes_are_refused_on_the_cpu(tiny_model):
    import torch

    from llenergymeasure.errors import MeasurementError

    if torch.cuda.is_available():
        pytest.skip("device auto resolves to CUDA here")

    cfg = tiny_experiment()
    cfg["device"] = "auto"  # resolved to the CPU at load: refused then, with the reason
    cfg["pytorch"]["torch_compile"] = "reduce-overhead"
    with pytest.raises(MeasurementError, match="records CUDA graphs, but the experiment runs on the CPU"):
        PyTorchBackend(cfg, tiny_model).load()


def test_four_bit_weights_are_counted_from_the_model_config(tiny_model):
    """BitsAndBytes stores two 4-bit weights per uint8 element: numel() would count half of them."""
    from transformers import AutoConfig

    from llenergymeasure.backends.pytorch import count_parameters
    from llenergymeasure.flops import analytic_parameters

    hf = AutoConfig.from_pretrained(tiny_model)
    four = tiny_experiment(device="cuda", pytorch={"load_in_4bit": True})
    params, method = count_parameters(four, 1_000, hf)
    assert params == analytic_parameters(hf) and method.startswith("analytic_from_hf_config")
    assert count_parameters(tiny_experiment(), 1_000, hf) == (1_000, "numel")
    assert count_parameters(tiny_experiment(device="cuda", pytorch={"load_in_8bit": True}), 1_000, hf) == (
        1_000,
        "numel",
    )


def test_load_refuses_what_expansion_refuses(tiny_model):
    """A config that did not come through campaign expansion meets the same rules when the backend loads."""
    from llenergymeasure.errors import MeasurementError

    backend = PyTorchBackend(tiny_experiment(pytorch={"batch_size": 2, "batching_strategy": "dynamic"}), tiny_model)
    with pytest.raises(MeasurementError, match=r"set pytorch\.max_tokens_per_batch"):
        backend.load()
    assert backend.model is None


# ---------------------------------------------------------------------------------------------------- base class
def _minimal_config(backend: str, **extra) -> dict:
    return {"backend": backend, "pytorch": {"num_processes": 1}, "device": "cpu", **extra}


@pytest.mark.parametrize(
    ("backend", "num_processes", "expected"),
    [
        ("pytorch", 1, "PyTorchBackend"),
        ("pytorch", 2, "DataParallelPyTorch"),
        ("vllm", 1, "VllmBackend"),
        ("tensorrt", 1, "TensorRTBackend"),
    ],
)
def test_every_registered_backend_is_a_backend_subclass(backend, num_processes, expected):
    from llenergymeasure.backends import implementation
    from llenergymeasure.backends.base import Backend

    config = {**_minimal_config(backend), "pytorch": {"num_processes": num_processes}}
    cls = implementation(config)
    assert issubclass(cls, Backend) and cls.__name__ == expected and cls.name == backend
    assert cls.token_counting  # recorded beside the token counts of every result


def test_registry_refuses_a_class_that_is_not_a_backend(monkeypatch):
    import dataclasses

    from llenergymeasure.backends import create, pytorch, rules

    monkeypatch.setattr(
        pytorch, "RULES", dataclasses.replace(pytorch.RULES, implementation=lambda c: "json:JSONDecoder")
    )
    with pytest.raises(TypeError, match=r"backend 'pytorch': json:JSONDecoder must be a subclass of .*Backend"):
        create(_minimal_config("pytorch"), "model")
    monkeypatch.setattr(pytorch, "RULES", dataclasses.replace(pytorch.RULES, implementation=lambda c: "json:Nothing"))
    with pytest.raises(TypeError, match=r"json:Nothing must be a subclass .*\(found nothing\)"):
        create(_minimal_config("pytorch"), "model")
    monkeypatch.setattr(pytorch, "RULES", {"name": "pytorch"})
    with pytest.raises(
        TypeError, match=r"llenergymeasure.backends.pytorch.RULES must be a BackendRules named 'pytorch'"
    ):
        rules("pytorch")


def test_registry_refuses_a_backend_class_registered_under_another_name(monkeypatch):
    import dataclasses

    from llenergymeasure.backends import implementation, vllm

    monkeypatch.setattr(
        vllm,
        "RULES",
        dataclasses.replace(vllm.RULES, implementation=lambda c: "llenergymeasure.backends.pytorch:PyTorchBackend"),
    )
    with pytest.raises(TypeError, match=r"backend 'vllm': .*PyTorchBackend is named 'pytorch'"):
        implementation(_minimal_config("vllm"))


def _env_backend(wanted: dict):
    from llenergymeasure.backends.base import Backend

    class EnvBackend(Backend):
        name = "pytorch"
        token_counting = "test"

        def engine_environment(self) -> dict[str, str]:
            return dict(wanted)

    return EnvBackend(_minimal_config("pytorch"), "model")


def test_environment_is_set_for_the_engine_and_put_back_on_close(monkeypatch, caplog):
    monkeypatch.delenv("LEM_TEST_UNSET", raising=False)
    monkeypatch.setenv("LEM_TEST_USER", "user")
    monkeypatch.setenv("LEM_TEST_SAME", "1")
    b = _env_backend({"LEM_TEST_UNSET": "a", "LEM_TEST_USER": "experiment", "LEM_TEST_SAME": "1"})
    with caplog.at_level("WARNING", logger="llenergymeasure.backends.base"):
        assert b.set_environment() == {"LEM_TEST_UNSET": "a", "LEM_TEST_USER": "experiment", "LEM_TEST_SAME": "1"}
    assert os.environ["LEM_TEST_UNSET"] == "a" and os.environ["LEM_TEST_USER"] == "experiment"
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["LEM_TEST_USER=user from the environment replaced by experiment (the experiment's setting)"]
    b.set_environment()  # a second call keeps the first saved values
    b.close()
    assert "LEM_TEST_UNSET" not in os.environ
    assert os.environ["LEM_TEST_USER"] == "user" and os.environ["LEM_TEST_SAME"] == "1"
    b.close()  # nothing left to put back
    assert os.environ["LEM_TEST_USER"] == "user"


def test_base_memory_report_and_versions(monkeypatch):
    from llenergymeasure.backends.base import Backend
    from llenergymeasure.energy import nvml

    b = _env_backend({})
    b.device = "cpu"
    b.reset_peak_memory()
    assert b.peak_memory() == {
        "cuda_peak_allocated_bytes": None,
        "cuda_peak_reserved_bytes": None,
        "gpu_memory_used_bytes": None,
    }
    asked = []
    monkeypatch.setattr(nvml, "memory_used_bytes", lambda n: asked.append(n) or 123)
    b.device = b.config["device"] = "cuda"
    assert b.peak_memory()["gpu_memory_used_bytes"] == 123 and asked == [1]  # the rules' GPU count

    class Versions(Backend):
        version_modules = ("json", "llenergymeasure_no_such_module")

    assert Versions.version() == {"json": __import__("json").__version__, "llenergymeasure_no_such_module": None}


def test_warmup_repeats_one_engine_batch_of_the_window_lengths():
    from llenergymeasure.backends.base import Batch
    from llenergymeasure.backends.vllm import VllmBackend

    config = {
        **_minimal_config("vllm"),
        "vllm": {"max_num_seqs": 3},
        "max_output_tokens": 7,
        "min_output_tokens": 2,
    }
    b = VllmBackend(config, "model")
    assert b.output_lengths() == (7, 2)
    assert b.warmup_indices([Batch(list(range(5)), [1] * 5)]) == [0, 1, 2]
    assert b.warmup_indices([Batch([4, 1], [1, 1])]) == [4, 1]
