"""The PyTorch backend under a serving load: requests go through transformers' continuous batching at their arrival
times, on the embedded model on the CPU; and what it cannot honour under a load is refused before any job."""

from __future__ import annotations

import time

import pytest

from conftest import TINY_WORKLOAD, small_experiment
from llenergymeasure.backends.pytorch import RULES, PyTorchBackend
from llenergymeasure.record.layout import Layout
from llenergymeasure.serving import Request, Schedule, make_schedule

PROMPTS = ["hello world", "the quick brown fox", "add 17 and 25", "x y z", "tell me why the sky is blue"]
CLOSED = {"arrival": "closed", "concurrency": 2}


def experiment(load=None, **overrides) -> dict:
    base = {
        **TINY_WORKLOAD,
        "device": "cpu",
        "max_output_tokens": 4,
        "min_output_tokens": 4,
        "num_input_prompts": len(PROMPTS),
        "pytorch": {"batch_size": 2},
        "load": load or CLOSED,
    }
    return small_experiment(base, overrides)


@pytest.fixture(scope="module")
def served(tiny_model):
    backend = PyTorchBackend(experiment(), tiny_model)
    backend.load()
    backend.plan(PROMPTS)
    yield backend
    backend.close()


def completions(out):
    return [(r.submitted_t, r.planned_t + r.e2e_s) for r in out.requests]


def test_closed_loop_never_exceeds_concurrency(served):
    _, schedule = make_schedule(CLOSED, PROMPTS)
    out = served.run(PROMPTS, [], 0, schedule=schedule)
    assert out.scheduling == "continuous" and len(out.requests) == len(PROMPTS)
    spans = completions(out)
    for submitted, _ in spans:
        in_flight = sum(1 for s, e in spans if s <= submitted < e)
        assert in_flight <= 2
    for r in out.requests:  # closed loop: latencies from submission
        assert r.submitted_t >= r.planned_t and r.submitted_t - r.planned_t < 0.05
        assert 0 < r.ttft_s <= r.e2e_s
    (batch,) = out.batches
    assert batch.size == len(PROMPTS) and batch.steps >= 4 and batch.end_t >= batch.start_t
    assert 1 <= batch.peak_decoding_seqs <= 2
    assert out.steps and all(s.end >= s.start for s in out.steps) and any(s.prefill for s in out.steps)


def test_open_loop_submits_each_request_at_its_time(served):
    load = {"arrival": "constant", "rate_per_s": 10.0, "seed": 0}
    _, schedule = make_schedule(load, PROMPTS[:4])
    t0 = time.perf_counter()
    out = served.run(PROMPTS[:4], [], 0, schedule=schedule)
    start = out.batches[0].start_t
    assert start >= t0
    for k, r in enumerate(sorted(out.requests, key=lambda r: r.planned_t)):
        assert r.planned_t == pytest.approx(start + k * 0.1)
        delay = r.submitted_t - r.planned_t
        assert 0 <= delay < 0.05, delay  # the queueing delay: non-negative, small
        # latencies from the planned arrival: first token and completion after it, ITL gaps add up
        assert r.ttft_s > 0 and r.e2e_s >= r.ttft_s
        assert sum(r.itl_s) == pytest.approx(r.e2e_s - r.ttft_s, abs=1e-9)
        assert r.start_t == r.planned_t
        assert r.output_tokens == 4 and len(r.itl_s) == 3  # forced length: EOS never ends a request early
    assert out.batches[0].end_t - start >= 0.3
    # a running batch below batch_size is the load's doing, not a setting that did not take
    assert served.validity_flags(out.batches) == []


def test_a_trace_length_per_request_is_honoured(served):
    schedule = Schedule("trace", (Request(0, 0.0, 2), Request(1, 0.0, 3), Request(2, 0.05, None)))
    out = served.run(PROMPTS[:3], [], 0, schedule=schedule)
    assert [r.output_tokens for r in out.requests] == [2, 3, 4]


def test_warmup_runs_continuous_batching_outside_the_window(served):
    cfg = {**served.config["warmup"], "mode": "full"}
    record = served.warmup(PROMPTS, served.plan(PROMPTS), cfg)
    assert record["shapes"][0]["batch_size"] == len(PROMPTS)
    assert record["iterations_completed"] >= 3 and record["batch_size"] == 2


def test_settings_reach_continuous_batching(served, tiny_model):
    resolved = served._cb.continuous_batching_config
    assert resolved.max_requests_per_batch == 2  # pytorch.batch_size: the most requests in one engine step
    assert resolved.max_batch_tokens == 2 * TINY_WORKLOAD["max_input_tokens"]  # static: batch_size x max_input
    assert resolved.auto_switch_to_flash is False and resolved.drop_unsupported_processors is False
    assert served.model.config._attn_implementation == "sdpa"
    dynamic = PyTorchBackend(
        experiment(pytorch={"batch_size": 3, "batching_strategy": "dynamic", "max_tokens_per_batch": 96}), tiny_model
    )
    assert dynamic.cb_config_kwargs()["max_batch_tokens"] == 96
    assert dynamic.cb_config_kwargs()["max_requests_per_batch"] == 3
    compiled = PyTorchBackend(
        experiment(pytorch={"batch_size": 2, "torch_compile": True, "torch_compile_backend": "aot_eager"}), tiny_model
    )
    kwargs = compiled.cb_config_kwargs()
    for path in ("varlen_compile_config", "decode_compile_config"):
        assert kwargs[path].backend == "aot_eager" and kwargs[path].fullgraph is False
    assert compiled._serving_compile()["target"].startswith("continuous batching")
    sampling = PyTorchBackend(
        experiment(
            decoder={"preset": None, "do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
            pytorch={"batch_size": 2, "min_p": 0.05},
        ),
        tiny_model,
    )
    gen = sampling.cb_generation_kwargs()
    assert (gen["do_sample"], gen["temperature"], gen["top_k"], gen["top_p"], gen["min_p"]) == (True, 0.7, 5, 0.9, 0.05)
    assert sampling.cb_config_kwargs()["seed"] == sampling.config["random_seed"]


def test_eager_attention_reaches_continuous_batching_as_paged_eager(tiny_model):
    backend = PyTorchBackend(experiment(pytorch={"batch_size": 1, "attn_implementation": "eager"}), tiny_model)
    info = backend.load()
    try:
        assert info["continuous_batching"]["attn_implementation"] == "paged|eager"
        assert info["cache_implementation"] == "paged (continuous batching)"
    finally:
        backend.close()


def problems(**overrides) -> list[str]:
    load = overrides.pop("load", CLOSED)
    base = {**TINY_WORKLOAD, "device": "cpu", "pytorch": {"batch_size": 2}, "load": load}
    from conftest import QUICK_MEASUREMENT
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.config import deep_merge

    config = deep_merge(deep_merge(QUICK_MEASUREMENT, base), overrides)
    try:
        resolved = resolve_experiment(config)
    except Exception as exc:  # noqa: BLE001 - expansion refuses it itself
        return [str(exc)]
    return RULES.problems(resolved)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"pytorch": {"num_processes": 2}}, "pytorch.num_processes = 2"),
        ({"pytorch": {"batching_strategy": "sorted_static"}}, "pytorch.batching_strategy = sorted_static"),
        ({"pytorch": {"use_cache": False}}, "pytorch.use_cache = false"),
        ({"pytorch": {"cache_implementation": "static"}}, "pytorch.cache_implementation = static"),
        ({"min_output_tokens": 2}, "min_output_tokens = 2"),
        (
            {"decoder": {"preset": None, "do_sample": True, "repetition_penalty": 1.1}},
            "decoder.repetition_penalty = 1.1",
        ),
        ({"pytorch": {"no_repeat_ngram_size": 3}}, "pytorch.no_repeat_ngram_size = 3"),
        ({"pytorch": {"extra": {"typical_p": 0.9}}}, "pytorch.extra.typical_p = 0.9"),
    ],
)
def test_what_continuous_batching_cannot_honour_is_refused(overrides, needle):
    found = problems(**overrides)
    assert any(needle in p and "load.arrival = closed" in p for p in found), found
    assert not any(needle in p for p in problems(load={"arrival": "offline"}, **overrides) if "load.arrival" in p)


def test_a_load_is_accepted_with_the_defaults():
    assert problems() == []


def test_an_unchecked_transformers_release_is_refused(monkeypatch):
    from llenergymeasure.backends import pytorch

    monkeypatch.setattr(pytorch, "transformers_release", lambda: (4, 56, 0))
    assert any("transformers >= 5.19" in p and "4.56.0" in p for p in problems())
    monkeypatch.setattr(pytorch, "transformers_release", lambda: None)
    assert any("not installed" in p for p in problems())


@pytest.mark.workflow
def test_a_pytorch_campaign_under_a_load_runs_through_snakemake(workflow_dir):
    """A closed loop and a constant rate, two cycles each, through Snakemake on the tiny model: every cycle plays
    the schedule its load makes, the closed loop never has more than its concurrency in flight, and the summary
    says which load each row is."""
    import json

    import yaml

    from conftest import SMALL, snakemake
    from llenergymeasure.aggregate import read_summary
    from llenergymeasure.results import read_result

    campaign = json.loads(json.dumps(SMALL))
    campaign.update(campaign_name="pt-load", num_samples=5)
    campaign["grid"]["backend_overrides"] = {"pytorch": {"batch_size": 2}}
    campaign["grid"]["shared"].update({"load.arrival": "constant", "load.rate_per_s": [4, 400]})
    cfg = workflow_dir / "load.yaml"
    cfg.write_text(yaml.safe_dump(campaign, sort_keys=False))
    closed = json.loads(json.dumps(campaign))
    closed.update(campaign_name="pt-closed")
    closed["grid"]["shared"].pop("load.rate_per_s")
    closed["grid"]["shared"].update({"load.arrival": "closed", "load.concurrency": 2})
    cfg_closed = workflow_dir / "closed.yaml"
    cfg_closed.write_text(yaml.safe_dump(closed, sort_keys=False))
    for path in (cfg, cfg_closed):
        run = snakemake(workflow_dir, "--configfile", str(path), timeout=900)
        assert run.returncode == 0, run.stderr[-4000:]

    rated = [read_result(p, "raw_result") for p in Layout(workflow_dir / "results" / "pt-load").raw_files()]
    assert len(rated) == 4
    for result in rated:
        load = result["load"]
        rate = result["config"]["load"]["rate_per_s"]
        assert load["per_request"]["planned_s"] == pytest.approx([i / rate for i in range(5)], abs=0.005)
        assert load["queueing_delay_ms"]["min"] >= 0
        assert result["tokens"]["scheduling"] == "continuous" and result["tokens"]["output_tokens"] == 5 * 6
        if rate == 4:
            assert load["idle_share"] > 0.2 and "load_not_sustained" not in [f["code"] for f in result["flags"]]
    rows = {row["load"]: row for row in read_summary(str(workflow_dir / "results" / "pt-load" / "summary.csv"))}
    assert sorted(rows) == ["constant 4/s", "constant 400/s"]

    for path in Layout(workflow_dir / "results" / "pt-closed").raw_files():
        load = read_result(path, "raw_result")["load"]
        starts, ends = load["per_request"]["submitted_s"], load["per_request"]["end_s"]
        in_flight = [sum(1 for s, e in zip(starts, ends, strict=True) if s <= t < e) for t in starts]
        assert max(in_flight) == 2 and load["offered_rate_per_s"] is None
        assert load["latency_from"] == "submission (when a slot freed)"


def test_the_token_times_file_keeps_each_requests_planned_and_submitted_times(tiny_model, tmp_path):
    """Under a serving load the token times sidecar also holds each request's planned arrival and submission (the
    raw result's load.per_request, to the microsecond); a request starts at its planned arrival; the ITL
    distribution derived from the file is the raw result's."""
    import json

    from llenergymeasure.measure import run_experiment
    from llenergymeasure.record import token_times

    load = {"arrival": "constant", "rate_per_s": 20.0, "seed": 0}
    out = tmp_path / "cycle_1.json"
    r = run_experiment(experiment(load, warmup={"enabled": False}), "exp-load", 1, tiny_model, str(out))
    side = token_times.read(tmp_path / r["latency"]["token_times_file"])
    assert (
        json.loads(out.read_text())["latency"]["itl_ms"] == token_times.itl_distribution(side) == r["latency"]["itl_ms"]
    )
    cols, per = side["requests"], r["load"]["per_request"]
    assert cols["start_us"] == cols["planned_us"] and cols["prompt_index"] == per["prompt"]
    assert [p * 1e6 for p in per["planned_s"]] == pytest.approx(cols["planned_us"], abs=1)
    assert [s * 1e6 for s in per["submitted_s"]] == pytest.approx(cols["submitted_us"], abs=1)
    for start, tokens, first, end in zip(
        cols["start_us"], cols["token_us"], per["first_token_s"], per["end_s"], strict=True
    ):
        assert len(tokens) == 4 and (start + tokens[0]) / 1e6 == pytest.approx(first, abs=2e-6)
        assert (start + tokens[-1]) / 1e6 == pytest.approx(end, abs=2e-6)
