"""Serving load (``load.*``): schedules, the dispatcher, the window's load section and its rules; and a serving load
on the TensorRT-LLM backend (its fake's in-flight batching, on the tiny model). The real vLLM engine under a load is
in tests/test_vllm_engine.py, PyTorch's in tests/test_serving_pytorch.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics

import pytest
from scipy import stats

from conftest import small_experiment
from llenergymeasure.backends.base import RequestTiming
from llenergymeasure.campaign import experiment_id, resolve_experiment, semantic_problems
from llenergymeasure.errors import ConfigError
from llenergymeasure.serving import (
    Dispatcher,
    Request,
    Schedule,
    arrival_offsets,
    make_schedule,
    not_sustained,
    read_trace,
    window_section,
)
from llenergymeasure.validity import load_not_sustained

LOAD = {
    "arrival": "offline",
    "rate_per_s": None,
    "gamma_shape": None,
    "concurrency": None,
    "trace": None,
    "seed": 0,
    "slo": {"ttft_ms": None, "tpot_ms": None},
}


def load(**values) -> dict:
    return {**LOAD, **values}


def gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


# ---------------------------------------------------------------------------------------------------- schedules
def test_poisson_arrivals_are_exponential_at_the_stated_rate():
    rate = 4.0
    offsets = arrival_offsets(load(arrival="poisson", rate_per_s=rate, seed=7), 5001)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    found = stats.kstest(gaps(offsets), "expon", args=(0, 1 / rate))
    assert found.pvalue > 0.01  # exponential at 4/s ...
    assert stats.kstest(gaps(offsets), "expon", args=(0, 1 / 3.0)).pvalue < 1e-6  # ... and not at 3/s
    assert statistics.fmean(gaps(offsets)) == pytest.approx(1 / rate, rel=0.05)


def test_gamma_arrivals_keep_the_mean_and_set_the_burstiness():
    rate = 2.0
    for shape in (0.25, 4.0):
        g = gaps(arrival_offsets(load(arrival="gamma", rate_per_s=rate, gamma_shape=shape, seed=3), 5001))
        assert stats.kstest(g, "gamma", args=(shape, 0, 1 / (rate * shape))).pvalue > 0.01
        cv = statistics.stdev(g) / statistics.fmean(g)
        assert cv == pytest.approx(shape**-0.5, rel=0.1)  # < 1 burstier than Poisson (CV 1), > 1 more regular


def test_constant_arrivals_are_evenly_spaced():
    assert arrival_offsets(load(arrival="constant", rate_per_s=4.0), 5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    a = make_schedule(load(arrival="poisson", rate_per_s=2.0, seed=5), ["p"] * 20)[1]
    b = make_schedule(load(arrival="poisson", rate_per_s=2.0, seed=5), ["q"] * 20)[1]  # prompts do not move it
    c = make_schedule(load(arrival="poisson", rate_per_s=2.0, seed=6), ["p"] * 20)[1]
    assert a == b and a != c
    assert [r.prompt for r in a.requests] == list(range(20))
    # pinned: a schedule is a pure function of load.seed, the same on every machine and Python 3 release
    assert [round(r.offset_s, 6) for r in a.requests[:3]] == [0.0, 0.487625, 1.16461]


def test_offline_has_no_schedule_and_closed_has_no_planned_times():
    assert make_schedule(load(), ["a", "b"]) == (["a", "b"], None)
    prompts, closed = make_schedule(load(arrival="closed", concurrency=2), ["a", "b", "c"])
    assert prompts == ["a", "b", "c"] and closed.concurrency == 2 and not closed.open_loop
    assert [r.offset_s for r in closed.requests] == [None, None, None]


def write_trace(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_trace_is_sorted_shifted_to_zero_and_its_prompts_resolved(tmp_path):
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            {"arrival_s": 12.5, "prompt": 1, "output_tokens": 4},
            {"arrival_s": 10.0, "prompt": "a text of its own"},
            {"arrival_s": 12.5, "prompt": 0},
        ],
    )
    prompts, schedule = make_schedule(load(arrival="trace", trace=trace), ["zero", "one"])
    assert prompts == ["a text of its own", "one", "zero"]  # arrival order; ties keep the file's order
    assert [r.offset_s for r in schedule.requests] == [0.0, 2.5, 2.5]
    # the digest of the very bytes the requests came from (recorded in the raw result's load.trace)
    assert schedule.trace_sha256 == hashlib.sha256((tmp_path / "t.jsonl").read_bytes()).hexdigest()
    assert schedule.output_lengths(schedule.requests[1], 8, 0) == (4, 4)  # the trace's length, forced
    assert schedule.output_lengths(schedule.requests[0], 8, 0) == (8, 0)  # the experiment's


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"arrival_s": -1, "prompt": 0}], "arrival_s = -1"),
        ([{"arrival_s": 0, "prompt": ""}], "prompt = ''"),
        ([{"arrival_s": 0, "prompt": 0, "output_tokens": 0}], "output_tokens = 0"),
        ([{"arrival_s": 0, "prompt": 0, "tokens": 3}], "has key 'tokens'"),
        ([[0, 1]], "is not a JSON object"),
        ([], "holds no request"),
    ],
)
def test_a_bad_trace_is_refused_with_its_line(tmp_path, rows, needle):
    with pytest.raises(ConfigError, match=r"load\.trace") as err:
        read_trace(write_trace(tmp_path / "t.jsonl", rows))
    assert needle in str(err.value)


def test_a_trace_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path):
    link = tmp_path / "zero.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="a device, not a regular file"):
        read_trace(str(link))
    with pytest.raises(ConfigError, match="does not exist"):
        read_trace(str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------------------- dispatcher
def test_an_open_loop_submits_what_has_arrived():
    schedule = Schedule("constant", tuple(Request(i, i * 1.0) for i in range(4)))
    d = Dispatcher(schedule, start=100.0)
    assert [(r.prompt, t) for r, t in d.due(100.0, 0)] == [(0, 100.0)]
    assert d.due(100.9, 5) == []  # open loop: what is in flight does not matter
    assert [(r.prompt, t) for r, t in d.due(102.5, 5)] == [(1, 101.0), (2, 102.0)]
    assert d.next_arrival() == 103.0 and d.remaining == 1


def test_a_closed_loop_fills_free_slots_in_order():
    d = Dispatcher(Schedule("closed", tuple(Request(i, None) for i in range(5)), concurrency=2), start=0.0)
    assert [r.prompt for r, _ in d.due(0.0, 0)] == [0, 1]
    assert d.due(0.5, 2) == []
    assert [(r.prompt, t) for r, t in d.due(0.7, 1)] == [(2, 0.7)]  # planned: when the slot was found free
    assert d.next_arrival() is None and d.remaining == 2


# ---------------------------------------------------------------------------------------------------- the window
def timing(prompt: int, planned: float, submitted: float, ttft: float, e2e: float, out: int = 5) -> RequestTiming:
    return RequestTiming(prompt, 10, out, ttft, e2e, [], planned_t=planned, submitted_t=submitted)


def test_the_window_section_from_request_times():
    # two requests 4 s apart, each 1 s long: busy 2 s of a 5 s window
    schedule = Schedule("constant", (Request(0, 0.0), Request(1, 4.0)))
    reqs = [timing(0, 10.0, 10.0, 0.2, 1.0), timing(1, 14.0, 14.1, 0.3, 1.0)]
    slo = {"ttft_ms": 250, "tpot_ms": 500}
    section = window_section(
        load(arrival="constant", rate_per_s=0.25, slo=slo), schedule, reqs, (10.0, 15.0), 50.0, "nvml_counter"
    )
    assert section["offered_rate_per_s"] == pytest.approx(0.25) and section["achieved_rate_per_s"] == pytest.approx(
        0.25
    )
    assert section["achieved_to_offered"] == pytest.approx(1.0)
    assert section["idle_share"] == pytest.approx(1 - 1.9 / 5)  # the second one was in flight from its submission
    assert section["mean_in_flight"] == pytest.approx(1.9 / 5)
    assert section["queueing_delay_ms"]["max"] == pytest.approx(100.0)
    assert section["per_request"]["planned_s"] == [0.0, 4.0] and section["per_request"]["end_s"] == [1.0, 5.0]
    good = section["slo"]
    assert good["requests_met"] == 1 and good["attainment"] == 0.5  # the second's TTFT is 300 ms
    assert good["goodput_requests_per_s"] == pytest.approx(0.2) and good["j_per_good_request"] == 50.0
    assert good["energy_method"] == "nvml_counter"  # the method beside the energy figure
    assert not_sustained(section) is None and load_not_sustained(section) == []


def test_a_load_the_engine_cannot_keep_up_with_is_flagged():
    # offered 10/s over 0.3 s; completions spread over 1.5 s: the queue grew
    schedule = Schedule("constant", tuple(Request(i, i * 0.1) for i in range(4)))
    reqs = [timing(i, i * 0.1, i * 0.1, 0.1, 0.5 + i * 0.4) for i in range(4)]
    section = window_section(load(arrival="constant", rate_per_s=10.0), schedule, reqs, (0.0, 2.0), None)
    achieved, offered, short = not_sustained(section)
    assert offered == pytest.approx(10.0) and achieved == pytest.approx(2.0) and short == pytest.approx(0.8)
    ((code, message),) = load_not_sustained(section)
    assert code == "load_not_sustained" and "80% short" in message and section["slo"] is None


# ---------------------------------------------------------------------------------------------------- rules
def experiment(**load_values) -> dict:
    return resolve_experiment({"model_name": "lem-tiny-llama", "device": "cpu", "backend": "vllm", "load": load_values})


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"arrival": "poisson"}, "load.arrival = poisson needs load.rate_per_s"),
        ({"arrival": "gamma", "rate_per_s": 1}, "load.arrival = gamma needs load.gamma_shape"),
        ({"arrival": "closed"}, "load.arrival = closed needs load.concurrency"),
        ({"arrival": "trace"}, "load.arrival = trace needs load.trace"),
        ({"rate_per_s": 2}, "load.rate_per_s = 2 applies to load.arrival poisson | constant | gamma"),
        ({"arrival": "closed", "concurrency": 2, "rate_per_s": 2}, "but load.arrival = closed"),
        ({"arrival": "poisson", "rate_per_s": 1, "gamma_shape": 2}, "load.gamma_shape = 2 applies to"),
        ({"arrival": "constant", "rate_per_s": 1, "seed": 3}, "load.seed = 3 draws a random schedule"),
        ({"slo": {"ttft_ms": 100}}, "load.slo.ttft_ms = 100 judges requests under a serving load"),
        ({"arrival": "trace", "trace": "/nonexistent/t.jsonl"}, "does not exist"),
    ],
)
def test_a_load_setting_that_would_change_nothing_or_cannot_run_is_refused(values, needle):
    found = semantic_problems(experiment(**values))
    assert any(needle in p for p in found), found


def test_a_trace_is_checked_against_the_prompts_and_the_output_cap_before_any_job(tmp_path):
    trace = write_trace(tmp_path / "t.jsonl", [{"arrival_s": 0, "prompt": 100000}])
    found = semantic_problems(experiment(arrival="trace", trace=trace))
    assert any("names prompt 100000; allowed: an index below num_input_prompts" in p for p in found), found
    trace = write_trace(tmp_path / "u.jsonl", [{"arrival_s": 0, "prompt": 1, "output_tokens": 999}])
    found = semantic_problems(experiment(arrival="trace", trace=trace))
    assert any("asks for 999 output tokens; allowed: at most max_output_tokens" in p for p in found), found


@pytest.mark.parametrize(
    "values, needle",
    [
        (
            {"arrival": "burst"},
            "key 'load.arrival' = 'burst' is not allowed; allowed: offline, poisson, constant, gamma",
        ),
        ({"arrival": "poisson", "rate_per_s": 0}, "key 'load.rate_per_s' = 0"),
        ({"arrival": "gamma", "rate_per_s": 1, "gamma_shape": -1}, "key 'load.gamma_shape' = -1"),
        ({"arrival": "closed", "concurrency": 0}, "key 'load.concurrency' = 0"),
        ({"seed": -1}, "key 'load.seed' = -1"),
        ({"slo": {"ttft_ms": 0}}, "key 'load.slo.ttft_ms' = 0"),
        ({"slo": {"p99_ms": 5}}, "p99_ms"),
    ],
)
def test_a_bad_load_value_is_one_line_naming_key_and_value(values, needle):
    from llenergymeasure.config import schema_problems

    raw = {"model_name": "lem-tiny-llama", "backend": "vllm", "load": values}
    found = schema_problems(raw, "campaign", ref="experiment")
    assert any(needle in p for p in found), found
    assert all("\n" not in p for p in found)


def test_repeating_the_workload_is_refused_under_a_load():
    config = experiment(arrival="constant", rate_per_s=2)
    config["energy"]["repeat_to_min_window"] = True
    assert any("repeat_to_min_window" in p for p in semantic_problems(config))


def test_valid_loads_pass_on_vllm():
    for values in (
        {"arrival": "poisson", "rate_per_s": 2, "seed": 4, "slo": {"ttft_ms": 200, "tpot_ms": 50}},
        {"arrival": "gamma", "rate_per_s": 2, "gamma_shape": 0.5},
        {"arrival": "constant", "rate_per_s": 2},
        {"arrival": "closed", "concurrency": 4},
    ):
        assert semantic_problems(experiment(**values)) == [], values


def test_the_default_load_keeps_experiment_ids():
    bare = resolve_experiment({"model_name": "lem-tiny-llama", "device": "cpu"})
    offline = resolve_experiment({"model_name": "lem-tiny-llama", "device": "cpu", "load": {"arrival": "offline"}})
    assert experiment_id(bare) == experiment_id(offline)
    rated = resolve_experiment(
        {"model_name": "lem-tiny-llama", "backend": "vllm", "load": {"arrival": "constant", "rate_per_s": 1}}
    )
    assert experiment_id(rated) != experiment_id(
        resolve_experiment({"model_name": "lem-tiny-llama", "backend": "vllm"})
    )


# ---------------------------------------------------------------------------------------------------- TensorRT-LLM
def trt_serving(tmp_path, **load_values) -> dict:
    return small_experiment(
        {
            "model_name": "lem-tiny-llama",
            "backend": "tensorrt",
            "fp_precision": "float16",
            "max_input_tokens": 32,
            "max_output_tokens": 4,
            "min_output_tokens": 4,
            "num_input_prompts": 6,
            "tensorrt": {"max_batch_size": 4, "engine_cache_dir": str(tmp_path / "engines")},
        },
        {"load": load_values},
    )


def in_flight_at_submissions(requests) -> list[int]:
    ends = [r.planned_t + r.e2e_s for r in requests]
    return [
        sum(1 for o, end in zip(requests, ends, strict=True) if o.submitted_t <= r.submitted_t < end) for r in requests
    ]


def test_tensorrt_closed_loop_keeps_its_concurrency(fake_trt, tiny_model, tmp_path):
    from llenergymeasure.backends.tensorrt import TensorRTBackend

    config = trt_serving(tmp_path, arrival="closed", concurrency=2)
    backend = TensorRTBackend(config, tiny_model)
    try:
        backend.load()
        prompts, schedule = make_schedule(config["load"], [f"prompt {i} of a few words" for i in range(6)])
        out = backend.run(prompts, backend.plan(prompts), 0, schedule=schedule)
        reqs = sorted(out.requests, key=lambda r: r.submitted_t)
        assert [r.index for r in reqs] == list(range(6))  # in order
        assert max(in_flight_at_submissions(reqs)) == 2  # filled, never exceeded
        assert backend.llm._executor.max_in_flight == 2
        assert all(r.output_tokens == 4 and r.planned_t <= r.submitted_t for r in reqs)
    finally:
        backend.close()


def test_tensorrt_open_loop_submits_at_each_arrival(fake_trt, tiny_model, tmp_path):
    from llenergymeasure.backends.tensorrt import TensorRTBackend

    config = trt_serving(tmp_path, arrival="constant", rate_per_s=5)
    backend = TensorRTBackend(config, tiny_model)
    try:
        backend.load()
        prompts, schedule = make_schedule(config["load"], [f"prompt {i} of a few words" for i in range(6)])
        out = backend.run(prompts, backend.plan(prompts), 0, schedule=schedule)
        start = out.batches[0].start_t
        for r in sorted(out.requests, key=lambda r: r.index):
            assert r.planned_t - start == pytest.approx(r.index * 0.2, abs=1e-9)
            assert 0 <= r.submitted_t - r.planned_t < 0.05  # the loop was free: submitted when it came
            assert 0 < r.ttft_s <= r.e2e_s  # from the planned arrival
    finally:
        backend.close()


def test_a_tensorrt_window_under_a_load_is_recorded(fake_trt, tiny_model, tmp_path):
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.results import validate_result
    from llenergymeasure.runtime import JobContext

    config = trt_serving(tmp_path, arrival="poisson", rate_per_s=4, seed=2, slo={"ttft_ms": 10000})
    out = tmp_path / "raw" / "cycle_1.json"
    result = run_experiment(config, "trt-load", 1, tiny_model, str(out), JobContext(state_dir=str(tmp_path / "s")))
    assert validate_result(result, "raw_result") is True
    section = result["load"]
    planned = [r.offset_s for r in make_schedule(config["load"], ["p"] * 6)[1].requests]
    assert section["per_request"]["planned_s"] == pytest.approx(planned, abs=0.01)  # the window opens at arrival 0
    assert result["timestamps"]["window_duration_s"] >= max(section["per_request"]["end_s"]) >= planned[-1]
    assert section["arrival"] == "poisson" and section["num_requests"] == 6
    assert section["slo"]["requests_met"] == 6 and section["slo"]["attainment"] == 1.0
    assert result["latency"]["request_start"] == "the request's planned arrival (serving load)"
    assert "batch_not_saturated" not in [f["code"] for f in result["flags"]]  # a partial batch is the load's doing
