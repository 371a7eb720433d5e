"""One real measurement on the tiny model: raw result complete, valid and honest."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import datetime

import pytest

from conftest import tiny_experiment
from llenergymeasure.measure import run_experiment
from llenergymeasure.record import token_times
from llenergymeasure.results import validate_result
from llenergymeasure.runtime import JobContext


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def raw_path(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "cycle_1.json"
    state = tmp_path_factory.mktemp("state")
    result = run_experiment(
        tiny_experiment(), "exp-test", 1, tiny_model, str(out), JobContext(state_dir=str(state), campaign_name="t")
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return out


@pytest.fixture(scope="module")
def raw(raw_path):
    return json.loads(raw_path.read_text())


def test_raw_result_validates(raw):
    assert validate_result(raw, "raw_result") is True


def test_window_excludes_load_and_warmup(raw):
    """B5: warm-up and model load happen before the window; warm-up requests are not counted (B10)."""
    t = raw["timestamps"]
    assert ts(t["job_start"]) < ts(t["window_start"]) < ts(t["window_end"]) <= ts(t["job_end"])
    assert raw["warmup"]["iterations_completed"] >= 3
    assert raw["tokens"]["num_requests"] == 6  # the configured prompts only
    assert raw["latency"]["ttft_ms"]["n"] == 6 and raw["latency"]["warmup_excluded"] is True
    phases = raw["phases_s"]
    assert phases["window_s"] == pytest.approx(t["window_duration_s"])
    assert phases["job_total_s"] > phases["window_s"] + phases["warmup_s"] + phases["load_s"]


def test_warmup_covers_every_shape_of_the_window(raw):
    """The window meets no batch shape for the first time: each (batch size, padded prompt tokens) it ran was
    generated before, at the full output length, and the record says so."""
    w = raw["warmup"]
    assert w["mode"] == "full" and w["duration_s"] >= w["full_pass_s"] > 0
    warmed = {(s["batch_size"], s["padded_input_tokens"]): s["new_tokens"] for s in w["shapes"]}
    window = {(b["size"], b["padded_input_tokens"]) for b in raw["batches"]}
    assert window <= set(warmed) and all(warmed[k] == raw["config"]["max_output_tokens"] for k in window)
    assert w["iterations_completed"] >= 3  # then the CV loop


def test_window_quality_checks_are_recorded(raw):
    s = raw["steady_state"]
    assert s["method"] == "per_batch_step_time" and s["items"] == raw["tokens"]["num_batches"]
    assert 0.0 <= s["cold_excess_share"] <= 1.0 and s["reference_step_s"] > 0
    assert s["prefill_judged"] is True  # static batches: each batch's prefill is judged too
    assert (
        (s["cold_items"] + s["cold_prefill_items"] > 0)
        == s["cold_start_in_window"]
        == any(f["code"] == "cold_start_in_window" for f in raw["flags"])
    )
    assert raw["energy"]["cross_check"]["method"] == "unavailable"  # no GPU here: nothing to cross-check
    total, (cpu,) = raw["energy"]["total"], raw["energy"]["components"]
    assert cpu["idle_power_uncertainty_w"] >= 0
    assert cpu["gross_energy_uncertainty_j"] > 0  # the window's edges: one clock tick each
    assert total["net_energy_uncertainty_j"] == pytest.approx(
        math.hypot(
            cpu["idle_power_uncertainty_w"] * raw["timestamps"]["window_duration_s"], cpu["gross_energy_uncertainty_j"]
        )
    )
    assert raw["model"]["details"]["output_length_forcing"] == "eos_stopping_off"


def test_half_precision_on_a_cpu_is_flagged(tiny_model):
    r = run_experiment(
        tiny_experiment(fp_precision="bfloat16", warmup={"enabled": False}, num_input_prompts=2),
        "h",
        1,
        tiny_model,
        None,
    )
    assert any(f["code"] == "half_precision_on_cpu" for f in r["flags"]) and r["model"]["dtype"] == "bfloat16"


def test_tokens_and_efficiency_use_output_tokens(raw):
    """B2/B3: padding excluded; J/output-token and output tok/s have output tokens as denominator."""
    tok = raw["tokens"]
    assert tok["output_tokens"] == 6 * 8
    per_batch = raw["batches"]
    assert (
        tok["input_tokens"]
        == sum(b["input_tokens"] for b in per_batch)
        == sum(raw["latency"]["per_request"]["input_tokens"])
    )
    assert tok["padded_input_tokens"] == sum(b["padded_input_tokens"] for b in per_batch)
    assert tok["input_tokens"] <= tok["padded_input_tokens"]
    unequal = [b for b in per_batch if b["input_tokens"] != b["padded_input_tokens"]]  # prompts of different lengths
    assert unequal and tok["input_tokens"] < tok["padded_input_tokens"]  # ... whose padding is never counted
    assert tok["total_tokens"] == tok["input_tokens"] + tok["output_tokens"]
    window = raw["timestamps"]["window_duration_s"]
    gross = raw["energy"]["total"]["gross_energy_j"]
    assert raw["throughput"]["output_tokens_per_s"] == pytest.approx(48 / window)
    assert raw["efficiency"]["j_per_output_token"] == pytest.approx(gross / 48)
    # sanity identity: J/output-token = mean power / output tokens per second
    assert raw["efficiency"]["j_per_output_token"] == pytest.approx(
        raw["energy"]["total"]["mean_power_w"] / raw["throughput"]["output_tokens_per_s"], rel=1e-9
    )


def test_every_energy_value_has_a_method_and_estimates_are_labelled(raw):
    components = raw["energy"]["components"]
    assert components and all(c["method"] in ("nvml_counter", "rapl", "estimate_tdp") for c in components)
    estimated = any(c["method"] == "estimate_tdp" for c in components)
    # an estimate is labelled wherever one was used, and nowhere else
    assert raw["energy"]["total"]["includes_estimate"] is estimated
    assert any(f["code"] == "energy_estimated" for f in raw["flags"]) is estimated
    assert raw["energy"]["total"]["method"] == "+".join(f"{c['component']}:{c['method']}" for c in components)
    assert raw["energy"]["emissions"]["method"] == "unavailable" and raw["energy"]["emissions"]["co2_kg"] is None


def test_net_energy_uses_window_duration(raw):
    """The idle baseline is on (the default): every component has an idle power, and net = gross - idle x window."""
    assert raw["config"]["baseline"]["enabled"] is True
    for c in raw["energy"]["components"]:
        assert c["idle_power_w"] is not None and c["baseline"]["duration_s"] > 0
        assert c["idle_energy_j"] == pytest.approx(c["idle_power_w"] * raw["timestamps"]["window_duration_s"])
        assert c["net_energy_j"] == pytest.approx(c["gross_energy_j"] - c["idle_energy_j"])


def test_without_a_baseline_net_energy_is_missing_not_gross():
    from llenergymeasure.energy import ComponentEnergy
    from llenergymeasure.energy.accounting import energy_section

    cpu = ComponentEnergy("cpu", "cpu", "cpu-key", "estimate_tdp", 12.0, 2.0)
    row = energy_section([cpu], {}, 2.0, [])["components"][0]
    assert row["gross_energy_j"] == 12.0 and row["baseline"] is None
    assert row["idle_power_w"] is None and row["idle_energy_j"] is None and row["net_energy_j"] is None


def test_provenance(raw):
    p = raw["provenance"]
    assert len(p["config_sha256"]) == 64 and len(p["prompts_sha256"]) == 64
    assert raw["config"]["pytorch"]["batch_size"] == 2
    assert raw["environment"]["software"]["torch"]
    assert raw["memory"]["peak_rss_bytes"] > raw["memory"]["model_size_bytes"] > 0


def test_co2_from_grid_intensity(tiny_model, tmp_path):
    pytest.importorskip("codecarbon")
    cfg = tiny_experiment(energy={"country_iso_code": "FRA"}, warmup={"enabled": False}, num_input_prompts=2)
    r = run_experiment(cfg, "exp-co2", 1, tiny_model, None)
    em = r["energy"]["emissions"]
    assert em["method"] == "energy_x_grid_intensity" and em["country_iso_code"] == "FRA"
    assert em["co2_kg"] == pytest.approx(
        r["energy"]["total"]["gross_energy_j"] / 3.6e6 * em["carbon_intensity_g_per_kwh"] / 1000
    )


def test_gpu_check_script_runs_in_cpu_smoke_mode(tmp_path):
    """The GPU check must keep working between runs on GPU machines: run it on the CPU with the tiny model. Every
    cycle is its own process, everything lands in one flat folder, and each ratio is printed."""
    import subprocess
    import sys

    from conftest import REPO

    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--tiny",
            "--device",
            "cpu",
            "--cycles",
            "2",
            "--batch-sizes",
            "2",
            "--prompts",
            "4",
            "--gap",
            "0",
            "--baseline-sec",
            "1",
            "--reference-sec",
            "1",
            "--min-window",
            "0",
            "--overhead-prompts",
            "4",
            "--overhead-batch",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    out = run.stdout
    assert "idle baseline" in out and "vs reference" in out
    assert out.count("cold share") == 2 and "power integral / counter n/a" in out  # no GPU: nothing to cross-check
    assert "backend / bare generate throughput" in out and "measurement on / off time" in out
    names = sorted(p.name for p in tmp_path.glob("raw_*.json"))
    assert names == [
        "raw_bs2_cycle1.json",
        "raw_bs2_cycle1.tokens.json",
        "raw_bs2_cycle2.json",
        "raw_bs2_cycle2.tokens.json",
    ]
    assert all(p.is_file() for p in tmp_path.iterdir())  # one folder, no subfolders
    summary = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    assert summary["experiments"][0]["cycles"] == 2 and summary["overhead"]["backend_vs_bare"] > 0


def test_flops_are_analytic_per_request(raw):
    """B6: FLOPs from the architecture and each request's real token counts, prefill and decode separated."""
    from llenergymeasure.flops import request_flops

    f = raw["flops"]
    per = raw["latency"]["per_request"]
    parts = [
        request_flops(f["model_dims"], i, o) for i, o in zip(per["input_tokens"], per["output_tokens"], strict=True)
    ]
    assert f["prefill_flops"] == sum(p for p, _ in parts) and f["decode_flops"] == sum(d for _, d in parts)
    assert f["total_flops"] == f["prefill_flops"] + f["decode_flops"]
    assert f["method"] == "analytic_decoder_only" and f["confidence"] == "high"
    assert f["flops_per_s"] == pytest.approx(f["total_flops"] / raw["timestamps"]["window_duration_s"])


def test_timeline_summary_phases_and_repeat_to_min_window(tiny_model, tmp_path):
    cfg = tiny_experiment(
        warmup={"enabled": False},
        num_input_prompts=2,
        energy={"min_window_s": 2.0, "repeat_to_min_window": True},  # several runs of 2 prompts, even on a busy machine
        timeline={"save": True},
    )
    out = tmp_path / "cycle_1.json"
    r = run_experiment(cfg, "exp-tl", 1, tiny_model, str(out))
    validate_result(r, "raw_result")
    assert r["tokens"]["workload_repetitions"] > 1 and r["timestamps"]["window_duration_s"] >= 2.0
    assert r["tokens"]["num_requests"] == 2 * r["tokens"]["workload_repetitions"]
    assert not any(f["code"] == "short_window" for f in r["flags"])
    tl = r["timeline"]
    assert tl["summary"]["samples"] >= 5 and tl["sidecar"] == "cycle_1.timeline.json"
    side = json.loads((tmp_path / "cycle_1.timeline.json").read_text())
    assert len(side["t_s"]) == tl["summary"]["samples"] and -0.1 < side["t_s"][0] < 0.1  # relative to the window start
    ph = r["energy"]["phases"]
    assert ph["component"] == r["energy"]["components"][0]["component"]
    # the split needs a power timeline: GPU board power, or CPU utilisation x the TDP of a CPU estimate
    splittable = any(c["method"] == "estimate_tdp" for c in r["energy"]["components"]) or bool(tl["summary"]["gpus"])
    assert (ph["method"] != "unavailable") is splittable
    if splittable:
        parts = ph["prefill_energy_j"] + ph["decode_energy_j"] + ph["other_energy_j"]
        assert parts == pytest.approx(r["energy"]["components"][0]["gross_energy_j"])
    else:
        assert ph["prefill_energy_j"] is None and ph["reason"]
    assert r["memory"]["window_peak_rss_bytes"] > 0
    batches = r["batches"]
    assert all(
        0 <= b["start_s"] <= b["first_token_s"] <= b["end_s"] <= r["timestamps"]["window_duration_s"] for b in batches
    )


def test_timeline_can_be_switched_off(tiny_model):
    r = run_experiment(
        tiny_experiment(warmup={"enabled": False}, num_input_prompts=2, timeline={"enabled": False}),
        "x",
        1,
        tiny_model,
        None,
    )
    assert r["timeline"] == {"enabled": False, "summary": None, "sidecar": None}
    assert r["energy"]["phases"]["method"] == "unavailable"


def test_itl_percentiles_are_derived_again_from_the_token_times_file(raw, raw_path):
    """Each request's token arrivals are kept beside the raw result: the ITL distribution derived from the file is
    the raw result's, exactly; each request's TTFT and E2E agree with its first and last arrival, and its tokens
    with its count; each request starts in the window at its batch's submission."""
    lat = raw["latency"]
    assert lat["token_times_file"] == "cycle_1.tokens.json"
    side_path = raw_path.with_name("cycle_1.tokens.json")
    text = side_path.read_text()
    assert text == json.dumps(json.loads(text), separators=(",", ":")) + "\n"  # compact: no indentation, no spaces
    side = token_times.read(side_path)
    assert (side["experiment_id"], side["cycle"], side["num_requests"]) == ("exp-test", 1, 6)
    assert side["window_start"] == raw["timestamps"]["window_start"] and "microseconds" in side["times"]
    assert side["request_start"] == lat["request_start"]
    assert token_times.itl_distribution(side_path) == lat["itl_ms"]  # exactly: the same arrivals, the same sums
    assert lat["itl_ms"]["n"] == 6 * 7 and {"mean", "p50", "p90", "p95", "p99"} <= set(lat["itl_ms"])
    cols = side["requests"]
    per = lat["per_request"]
    assert set(cols) == {"prompt_index", "start_us", "token_us"}  # no serving load: no planned or submitted times
    for tokens, ttft, e2e, n in zip(cols["token_us"], per["ttft_ms"], per["e2e_ms"], per["output_tokens"], strict=True):
        assert len(tokens) == n == 8 and tokens == sorted(tokens)
        # whole microseconds against 0.1 microsecond: both rounded, each by at most half its step
        assert abs(tokens[0] / 1000 - ttft) <= 0.00055 and abs(tokens[-1] / 1000 - e2e) <= 0.00055
    assert sorted(cols["prompt_index"]) == list(range(6))
    starts = {round(b["start_s"] * 1e6) for b in raw["batches"]}
    assert set(cols["start_us"]) == starts  # the requests of one batch start together, at its submission
    window_us = raw["timestamps"]["window_duration_s"] * 1e6
    assert all(0 <= s + t[-1] <= window_us + 1 for s, t in zip(cols["start_us"], cols["token_us"], strict=True))
    # derived again by hand, from the file's integers alone
    gaps = [(b - a) / 1000 for t in cols["token_us"] for a, b in itertools.pairwise(t)]
    assert sorted(gaps) == sorted(token_times.itl_ms(cols["token_us"])) and min(gaps) >= 0


def test_throughput_is_over_the_window_wall_clock(raw):
    """B4: time is the window's wall clock, never a sum of per-batch (or per-process) times."""
    window = raw["timestamps"]["window_duration_s"]
    assert raw["throughput"]["generate_time_s"] <= window
    assert raw["throughput"]["output_tokens_per_s"] == pytest.approx(raw["tokens"]["output_tokens"] / window)


def test_unfilled_batches_are_flagged(tiny_model, raw):
    assert not any(f["code"] == "batch_not_saturated" for f in raw["flags"])  # 6 prompts in batches of 2
    r = run_experiment(
        tiny_experiment(warmup={"enabled": False}, num_input_prompts=3, pytorch={"batch_size": 4}),
        "x",
        1,
        tiny_model,
        None,
    )
    assert any(f["code"] == "batch_not_saturated" for f in r["flags"])


def test_progress_is_logged(tiny_model, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="llenergymeasure.progress")
    cfg = tiny_experiment(warmup={"enabled": False}, num_input_prompts=4, pytorch={"batch_size": 2})
    run_experiment(cfg, "p", 1, tiny_model, None, JobContext(progress_every_s=0))
    lines = [r.getMessage() for r in caplog.records if r.name == "llenergymeasure.progress"]
    window = [x for x in lines if "/4 prompts" in x]
    assert window[0].startswith("p cycle 1: 2/4 prompts") and window[-1].startswith("p cycle 1: 4/4 prompts")
    assert "ETA" in window[0]


def test_every_phase_of_a_job_says_what_it_is_doing(tiny_model, caplog, tmp_path, monkeypatch):
    """Idle baseline (with its duration as ETA), model load, thermal gap, warm-up and window each announce
    themselves, in that order, so a job is never silent for long."""
    import logging
    import time

    from llenergymeasure.thermal import record_window

    monkeypatch.setenv("LLM_ENERGY_CACHE_DIR", str(tmp_path / "cache"))  # no cached baseline: it is measured now
    state = tmp_path / "state"
    record_window(state, {"experiment_id": "other", "cycle": 1, "window_end": "x", "window_end_epoch_s": time.time()})
    caplog.set_level(logging.INFO, logger="llenergymeasure.progress")
    cfg = tiny_experiment(num_input_prompts=4, pytorch={"batch_size": 2})
    run_experiment(cfg, "p", 1, tiny_model, None, JobContext(state_dir=str(state), config_gap_s=3.0))
    lines = [r.getMessage() for r in caplog.records if r.name == "llenergymeasure.progress"]
    expected = [
        "measuring the idle baseline",
        "idle baseline",
        "loading prompts and model",
        "model loaded",
        "thermal gap: waiting",
        "warm-up: one untimed pass",
        "warm-up: repeating",
        "warm-up done",
        "measuring (window open)",
    ]
    positions = [next(i for i, x in enumerate(lines) if e in x) for e in expected]
    assert positions == sorted(positions), lines
    assert "ETA 1 s" in lines[positions[0]]


def test_gpus_select_the_jobs_cuda_devices():
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.process import select_gpus

    env: dict = {}
    config = resolve_experiment(
        {"model_name": "m", "backend": "vllm", "gpus": [2, 3], "vllm": {"tensor_parallel_size": 2}}
    )
    assert select_gpus(config, env) == "CUDA_VISIBLE_DEVICES=2,3 (CUDA_DEVICE_ORDER=PCI_BUS_ID)"
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    slurm = {"SLURM_JOB_GPUS": "5,6", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert select_gpus(config, slurm).startswith("assigned by Slurm") and slurm["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert slurm["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # Slurm's indices are PCI-ordered too: CUDA must agree
    cpu: dict = {}
    assert select_gpus(resolve_experiment({"model_name": "m", "device": "cpu"}), cpu) is None and cpu == {}


def test_lem_run_gives_the_experiment_its_gpus_in_pci_order(monkeypatch, tmp_path, tiny_model):
    """``lem run`` (no Snakemake) selects the experiment's GPUs the way a workflow job does."""
    from llenergymeasure import measure, run

    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.setenv(name, "")  # recorded, so that the test's own setting is undone afterwards
        monkeypatch.delenv(name)
    seen = {}

    def fake_run(config, exp_id, cycle, model_path, output, context):
        import os

        seen.update({k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")})
        raise measure.MeasurementError("stop here")

    monkeypatch.setattr(measure, "run_experiment", fake_run)
    code = run.main(["--set", f"model_name={tiny_model}", "--set", "device=cuda", "--set", "gpus=[1]", "--quiet"])
    assert code == 1 and seen == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


@pytest.mark.parametrize("quiet", [False, True])
def test_lem_run_has_the_heartbeat_of_a_workflow_job(monkeypatch, tiny_model, caplog, quiet):
    """``lem run`` says what a long phase is doing, as a workflow job does, unless --quiet."""
    import logging
    import time

    from llenergymeasure import heartbeat, measure, run

    monkeypatch.setattr(heartbeat, "QUIET_S", 0.1)

    def fake_run(config, exp_id, cycle, model_path, output, context):
        heartbeat.phase("a long phase")
        time.sleep(1.0)
        raise measure.MeasurementError("stop here")

    monkeypatch.setattr(measure, "run_experiment", fake_run)
    caplog.set_level(logging.INFO, logger="llenergymeasure.progress")
    args = ["--set", f"model_name={tiny_model}", "--set", "device=cpu", "--cycle", "3"] + (["--quiet"] if quiet else [])
    assert run.main(args) == 1
    beats = [r.getMessage() for r in caplog.records if ": a long phase, " in r.getMessage()]
    assert bool(beats) != quiet, beats
    assert all(re.fullmatch(r"pytorch-\S+ cycle 3: a long phase, \d+ s so far", b) for b in beats), beats
    assert heartbeat._active is None
