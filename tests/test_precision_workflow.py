"""Precision-targeted campaigns in Snakemake runs on the tiny model (CPU). Without a target, the workflow of a
campaign stays what it is."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO
from test_workflow import snakemake

pytestmark = pytest.mark.workflow


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
