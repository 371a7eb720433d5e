"""One real measurement on the tiny model: raw result complete, valid and honest."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from conftest import tiny_experiment
from llenergymeasure.measure import run_experiment
from llenergymeasure.results import raw_result_files, validate_result


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def raw(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "cycle_1.json"
    state = tmp_path_factory.mktemp("state")
    result = run_experiment(tiny_experiment(), "exp-test", 1, tiny_model, str(out), {"state_dir": str(state), "campaign_name": "t"})
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


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


def test_tokens_and_efficiency_use_output_tokens(raw):
    """B2/B3: padding excluded; J/output-token and output tok/s have output tokens as denominator."""
    tok = raw["tokens"]
    assert tok["output_tokens"] == 6 * 8
    assert tok["input_tokens"] < tok["padded_input_tokens"] or tok["input_tokens"] == tok["padded_input_tokens"]
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
    for c in raw["energy"]["components"]:
        assert c["method"] in ("nvml_counter", "rapl", "estimate_tdp")
        if c["method"] == "estimate_tdp":
            assert raw["energy"]["total"]["includes_estimate"] is True
            assert any(f["code"] == "energy_estimated" for f in raw["flags"])
    assert raw["energy"]["emissions"]["method"] == "unavailable" and raw["energy"]["emissions"]["co2_kg"] is None


def test_net_energy_uses_window_duration(raw):
    for c in raw["energy"]["components"]:
        if c["idle_power_w"] is not None:
            assert c["idle_energy_j"] == pytest.approx(c["idle_power_w"] * raw["timestamps"]["window_duration_s"])
            assert c["net_energy_j"] == pytest.approx(c["gross_energy_j"] - c["idle_energy_j"])


def test_provenance(raw):
    p = raw["provenance"]
    assert len(p["config_sha256"]) == 64 and len(p["prompts_sha256"]) == 64
    assert raw["config"]["pytorch"]["batch_size"] == 2
    assert raw["environment"]["software"]["torch"]
    assert raw["memory"]["peak_rss_bytes"] > raw["memory"]["model_size_bytes"] > 0


def test_co2_from_grid_intensity(tiny_model, tmp_path):
    pytest.importorskip("codecarbon")
    cfg = tiny_experiment(energy={"country_iso_code": "FRA"}, warmup={"enabled": False}, num_input_prompts=2)
    r = run_experiment(cfg, "exp-co2", 1, tiny_model, None, {})
    em = r["energy"]["emissions"]
    assert em["method"] == "energy_x_grid_intensity" and em["country_iso_code"] == "FRA"
    assert em["co2_kg"] == pytest.approx(r["energy"]["total"]["gross_energy_j"] / 3.6e6 * em["carbon_intensity_g_per_kwh"] / 1000)


def test_gpu_check_script_runs_in_cpu_smoke_mode(tmp_path):
    """The GPU check must keep working between runs on GPU machines: run it on the CPU with the tiny model."""
    import subprocess
    import sys

    from conftest import REPO

    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--cycles", "2",
         "--batch-sizes", "2", "--prompts", "4", "--gap", "0", "--baseline-sec", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cpu:" in run.stdout and len(raw_result_files(tmp_path)) == 2


def test_flops_are_analytic_per_request(raw):
    """B6: FLOPs from the architecture and each request's real token counts, prefill and decode separated."""
    from llenergymeasure.flops import request_flops

    f = raw["flops"]
    per = raw["latency"]["per_request"]
    parts = [request_flops(f["model_dims"], i, o) for i, o in zip(per["input_tokens"], per["output_tokens"])]
    assert f["prefill_flops"] == sum(p for p, _ in parts) and f["decode_flops"] == sum(d for _, d in parts)
    assert f["total_flops"] == f["prefill_flops"] + f["decode_flops"]
    assert f["method"] == "analytic_decoder_only" and f["confidence"] == "high"
    assert f["flops_per_s"] == pytest.approx(f["total_flops"] / raw["timestamps"]["window_duration_s"])


def test_timeline_summary_phases_and_repeat_to_min_window(tiny_model, tmp_path):
    cfg = tiny_experiment(
        warmup={"enabled": False},
        num_input_prompts=2,
        energy={"min_window_sec": 0.8, "repeat_to_min_window": True},
        timeline={"save": True},
    )
    out = tmp_path / "cycle_1.json"
    r = run_experiment(cfg, "exp-tl", 1, tiny_model, str(out), {})
    validate_result(r, "raw_result")
    assert r["tokens"]["workload_repetitions"] > 1 and r["timestamps"]["window_duration_s"] >= 0.8
    assert r["tokens"]["num_requests"] == 2 * r["tokens"]["workload_repetitions"]
    assert not any(f["code"] == "short_window" for f in r["flags"])
    tl = r["timeline"]
    assert tl["summary"]["samples"] >= 5 and tl["sidecar"] == "cycle_1.timeline.json"
    side = json.loads((tmp_path / "cycle_1.timeline.json").read_text())
    assert len(side["t_s"]) == tl["summary"]["samples"] and -0.1 < side["t_s"][0] < 0.1  # relative to the window start
    ph = r["energy"]["phases"]
    assert ph["component"] == r["energy"]["components"][0]["component"]
    if ph["method"] != "unavailable":
        parts = ph["prefill_energy_j"] + ph["decode_energy_j"] + ph["other_energy_j"]
        assert parts == pytest.approx(r["energy"]["components"][0]["gross_energy_j"])
    assert r["memory"]["window_peak_rss_bytes"] > 0
    batches = r["batches"]
    assert all(0 <= b["start_s"] <= b["first_token_s"] <= b["end_s"] <= r["timestamps"]["window_duration_s"] for b in batches)


def test_timeline_can_be_switched_off(tiny_model):
    r = run_experiment(tiny_experiment(warmup={"enabled": False}, num_input_prompts=2, timeline={"enabled": False}), "x", 1, tiny_model, None, {})
    assert r["timeline"] == {"enabled": False, "summary": None, "sidecar": None}
    assert r["energy"]["phases"]["method"] == "unavailable"


def test_throughput_is_over_the_window_wall_clock(raw):
    """B4: time is the window's wall clock, never a sum of per-batch (or per-process) times."""
    window = raw["timestamps"]["window_duration_s"]
    assert raw["throughput"]["generate_time_s"] <= window
    assert raw["throughput"]["output_tokens_per_s"] == pytest.approx(raw["tokens"]["output_tokens"] / window)


def test_unfilled_batches_are_flagged(tiny_model, raw):
    assert not any(f["code"] == "batch_not_saturated" for f in raw["flags"])  # 6 prompts in batches of 2
    r = run_experiment(tiny_experiment(warmup={"enabled": False}, num_input_prompts=3, pytorch={"batch_size": 4}), "x", 1, tiny_model, None, {})
    assert any(f["code"] == "batch_not_saturated" for f in r["flags"])


def test_progress_is_logged(tiny_model, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="llenergymeasure.progress")
    cfg = tiny_experiment(warmup={"enabled": False}, num_input_prompts=4, pytorch={"batch_size": 2})
    run_experiment(cfg, "p", 1, tiny_model, None, {"progress_every_s": 0})
    lines = [r.getMessage() for r in caplog.records if r.name == "llenergymeasure.progress"]
    assert lines[0].startswith("p cycle 1: 2/4 prompts") and lines[-1].startswith("p cycle 1: 4/4 prompts")
    assert "ETA" in lines[0]


def test_gpus_select_the_jobs_cuda_devices():
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.jobs import select_gpus

    env: dict = {}
    config = resolve_experiment({"model_name": "m", "backend": "vllm", "gpus": [2, 3], "vllm": {"tensor_parallel_size": 2}})
    assert select_gpus(config, env) == "CUDA_VISIBLE_DEVICES=2,3 (CUDA_DEVICE_ORDER=PCI_BUS_ID)"
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    slurm = {"SLURM_JOB_GPUS": "5,6", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert select_gpus(config, slurm).startswith("assigned by Slurm") and slurm["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert slurm["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # Slurm's indices are PCI-ordered too: CUDA must agree
    cpu: dict = {}
    assert select_gpus(resolve_experiment({"model_name": "m", "device": "cpu"}), cpu) is None and cpu == {}


def test_lem_run_gives_the_experiment_its_gpus_in_pci_order(monkeypatch, tmp_path):
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
    code = run.main(["--set", "model_name=some/model", "--set", "device=cuda", "--set", "gpus=[1]", "--quiet"])
    assert code == 1 and seen == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
