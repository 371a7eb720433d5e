"""Precision-targeted campaigns in real Snakemake runs on the tiny model (CPU): the minimum plan, the unchanged
workflow without a target, cycles decided by measured noise, and resume after kill -9."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_workflow import job_counts, snakemake

pytestmark = pytest.mark.workflow

SHARED = {
    "fp_precision": "float32",
    "device": "cpu",
    "max_input_tokens": 32,
    "max_output_tokens": 8,
    "min_output_tokens": 8,
    "decoder.preset": "deterministic",
    "baseline.duration_sec": 1,
    "warmup.max_prompts": 3,
    "warmup.min_prompts": 3,
    "warmup.window_size": 3,
}


def campaign(name: str, execution: dict, batch_sizes=(2, 4), **shared) -> dict:
    return {
        "campaign_name": name,
        "model": "lem-tiny-llama",
        "num_samples": 4,
        "grid": {"backends": ["pytorch"], "shared": {**SHARED, **shared}, "backend_overrides": {"pytorch": {"batch_size": list(batch_sizes)}}},
        "execution": execution,
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------- dry runs

KEYS = ("input", "output", "log", "benchmark", "wildcards", "priority", "threads")


def dry_run_jobs(text: str) -> list[dict]:
    """Every job of a dry run: its rule and the lines that define it (not ids, times or reasons), sorted."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", text)[1:]:
        lines = block.splitlines()
        job = {"rule": lines[0].strip().rstrip(":")}
        for line in lines[1:]:
            m = re.match(r"^    (\w+): (.*)$", line)
            if not m:
                break
            if m.group(1) in KEYS:
                job[m.group(1)] = m.group(2)
        jobs.append(job)
    return sorted(jobs, key=lambda j: json.dumps(j, sort_keys=True))


def test_without_a_target_the_workflow_is_unchanged(workflow_dir):
    """A campaign with a fixed number of cycles plans the jobs (rules, files, wildcards, priorities) and params
    recorded in tests/data/fixed_cycles_plan.json, which were recorded from the workflow as it was before precision
    targets: without a target, the workflow must go on planning exactly these."""
    import llenergymeasure.workflow as lem

    recorded = json.loads((REPO / "tests" / "data" / "fixed_cycles_plan.json").read_text())
    (workflow_dir / "fixed.yaml").write_text(recorded["campaign"])
    dry = snakemake(workflow_dir, "-n", "--configfile", "fixed.yaml")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry_run_jobs(dry.stdout + dry.stderr) == recorded["jobs"]
    config = {"campaign": "fixed.yaml"}
    p = lem.load(config, [], workdir=workflow_dir, announce=False)
    params = {"measure": {e.experiment_id: lem.experiment_config(p, e.experiment_id) for e in p.expansion.experiments},
              "aggregate": {"names": lem.config_names(p), "analysis": config["analysis"]},
              "report_plots": {"aggregated": lem.aggregated(p), "raw": lem.all_raw(p)}}  # fmt: skip
    assert json.loads(json.dumps(params)) == recorded["params"]
    assert "decide" not in dry.stdout + dry.stderr and "settle" not in dry.stdout + dry.stderr


def test_a_dry_run_shows_the_minimum_plan(workflow_dir):
    cfg = write(workflow_dir / "p.yaml", campaign("pt", {"structure": "grouped", "precision_target": {
        "relative_half_width": 0.05, "metric": "energy_j", "min_cycles": 4, "max_cycles": 9}}))  # fmt: skip
    dry = snakemake(workflow_dir, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0, dry.stderr[-2000:]
    out = dry.stdout + dry.stderr
    counts = job_counts(out)
    assert (counts["measure"], counts["decide"], counts["settle"], counts["aggregate"]) == (8, 2, 2, 1), counts
    assert "Campaign 'pt': 2 experiments x 4-9 cycles, grouped order" in out
    assert ("precision target: cycles continue until the 95% Student-t interval of the mean energy_j is within ±5 % "
            "of it, 4 to 9 cycles. Scheduled now: the first 4 cycles of every experiment (8 measurements); after each "
            "further cycle a decision adds one more to the experiments not yet that precise, so more cycles may follow.") in out
    assert "DAG of jobs will be updated after completion" in out  # Snakemake's own word on its checkpoints
    decisions = re.findall(r"output: results/pt/decisions/([^/\s]+)/after_cycle_(\d+)\.json", out)
    assert sorted(n for _, n in decisions) == ["4", "4"]
    assert not list((workflow_dir / "results").glob("pt/*"))  # a dry run writes nothing


def test_a_bad_value_stops_the_run_before_any_job(workflow_dir):
    existing = workflow_dir / "results" / "pt" / "raw" / "keep" / "cycle_1.json"
    existing.parent.mkdir(parents=True)
    existing.write_text('{"precious": true}')
    cfg = write(workflow_dir / "bad.yaml", campaign("pt", {"precision_target": {"relative_half_width": 0.05, "min_cycles": 6, "max_cycles": 4}}))
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    err = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("Using workflow specific profile")]
    assert run.returncode == 1 and err == [
        f"Configuration error: {cfg}: key 'execution.precision_target.max_cycles' = 4 is smaller than "
        "execution.precision_target.min_cycles = 6; allowed: >= 6"], run.stderr  # fmt: skip
    assert existing.read_text() == '{"precious": true}'
    assert [p.name for p in (workflow_dir / "results").rglob("*") if p.is_file()] == ["cycle_1.json"]
