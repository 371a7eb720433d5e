"""Real Snakemake runs in a temporary directory, on the tiny model, CPU only."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    SMALL,
    job_counts,
    sha,
    snakemake,
    snakemake_in_background,
    utc,
    wait_while_running,
    write_campaign,
)
from llenergymeasure.aggregate import read_summary
from llenergymeasure.record import token_times
from llenergymeasure.record.layout import Layout, token_times_of
from llenergymeasure.results import read_result

pytestmark = pytest.mark.workflow


def test_full_run_then_edit_one_value(workflow_dir):
    from conftest import Hook

    hook = Hook()
    try:
        cfg = write_campaign(
            workflow_dir / "wf.yaml", notifications={"webhook_url": hook.url, "on_complete": True, "on_failure": True}
        )
        # a host whose last measurement window is this campaign's first (the host's state lives in the cache folder)
        host = {**os.environ, "LLM_ENERGY_CACHE_DIR": str(workflow_dir / "fresh-cache")}
        run = snakemake(workflow_dir, "--configfile", str(cfg), env=host)
        assert run.returncode == 0, run.stderr[-3000:]
        root = workflow_dir / "results" / "wf"
        assert not (workflow_dir / "results" / "default").exists()  # nothing of the default campaign leaked in

        raws = Layout(root).raw_files()
        assert len(raws) == 4
        results = [read_result(p, "raw_result") for p in raws]
        for p in raws:
            assert (p.stat().st_mode & 0o222) == 0, f"{p} is not write-protected"
        for p, r in zip(raws, results, strict=True):  # every window's token times lie beside its raw result
            side = Layout(root).token_times(r["experiment_id"], r["cycle"])
            assert str(p.with_name(r["latency"]["token_times_file"])) == side
            assert token_times.itl_distribution(side) == r["latency"]["itl_ms"]
        ids = sorted({r["experiment_id"] for r in results})
        for exp_id in ids:
            read_result(root / "aggregated" / f"{exp_id}.json", "aggregated_result")
        rows = read_summary(str(root / "summary.csv"))
        assert sorted(r["experiment_id"] for r in rows) == ids and all(r["cycles"] == 2 for r in rows)

        # interleaved: A1 B1 A2 B2, and every window kept its gap
        windows = sorted(results, key=lambda r: r["timestamps"]["window_start"])
        order = [(r["config"]["pytorch"]["batch_size"], r["cycle"]) for r in windows]
        assert order == [(1, 1), (2, 1), (1, 2), (2, 2)]
        for prev, cur in itertools.pairwise(windows):
            gap = (utc(cur["timestamps"]["window_start"]) - utc(prev["timestamps"]["window_end"])).total_seconds()
            assert gap >= cur["thermal"]["gap_required_s"] - 0.05
        assert [w["thermal"]["gap_kind"] for w in windows] == ["first", "config", "cycle", "config"]
        log = next((root / "logs" / "measure").glob("*/cycle_1.log")).read_text()
        assert "prompts" in log and "ETA" in log  # progress in the job's log
        assert "4/4 prompts" in run.stderr  # ... and on the console
        # the run ends by saying where the summary and the report are, and how the energy was obtained
        kinds = {"estimated" if r["includes_estimate"] else "measured" for r in rows}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        methods = ", ".join({r["energy_method"] for r in rows})
        tail = run.stderr.splitlines()[-5:]
        summary_at = next(i for i, line in enumerate(tail) if line.startswith("Summary: "))
        assert tail[summary_at] == (
            "Summary: results/wf/summary.csv (lem results); report: results/wf/report/ "
            "(HTML: snakemake --report report.html)"
        ), tail
        energy = tail[summary_at + 1]
        assert energy.startswith(f"Energy: {kind}") and all(m in energy for m in methods.split(", ")), tail
        assert all(line.startswith(("Complete log", "Elapsed time")) for line in tail[summary_at + 2 :]), tail
        audit = json.loads((root / "thermal_gaps.json").read_text())
        assert audit["ok"] is True and len(audit["windows"]) == 4

        # webhooks: each measurement, then the campaign's end
        events = [b["event_type"] for b in hook.received]
        assert events.count("complete") == 4 and events[-1] == "campaign_complete"
        assert json.loads((root / "notifications" / "campaign_complete.json").read_text())["delivery"]["sent"] is True

        # the report: plots exist, captions carry methods and flags, the HTML renders
        for name in ("efficiency", "drift", "latency", "timeline", "load"):
            assert (root / "report" / f"{name}.svg").stat().st_size > 1000
        caption = (root / "report" / "efficiency.rst").read_text()
        assert "Student-t" in caption and ("energy cpu:" in caption or "energy gpu:" in caption)
        rep = snakemake(workflow_dir, "--configfile", str(cfg), "--report", "report.html")
        assert rep.returncode == 0, rep.stderr[-2000:]
        html = (workflow_dir / "report.html").read_text()
        assert "Pareto front" in html and "Energy per cycle" in html

        again = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
        assert "Nothing to be done" in again.stdout + again.stderr
        # updating the workflow's code never re-measures a finished experiment (workflow profile's rerun triggers)
        os.utime(workflow_dir / "scripts" / "measure.py")
        again = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
        assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]

        # Editing one value: only the new experiment is measured, then aggregation downstream.
        before = {p: (sha(p), p.stat().st_mtime) for p in raws}
        edited = json.loads(json.dumps(SMALL))
        edited["grid"]["backend_overrides"]["pytorch"]["batch_size"] = [1, 3]
        write_campaign(cfg, grid=edited["grid"])
        dry = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
        assert dry.returncode == 0, dry.stderr[-2000:]
        counts = job_counts(dry.stdout + dry.stderr)
        assert counts.get("measure") == 2 and counts.get("aggregate") == 1, counts
        scheduled = re.findall(r"wildcards: experiment=([^,\s]+), cycle=(\d+)", dry.stdout + dry.stderr)
        assert len(scheduled) == 2 and all("-bs3-" in e for e, _ in scheduled), scheduled
        # asking for the summary alone must see the change too (the aggregation job's own provenance)
        only = snakemake(workflow_dir, "results/wf/summary.csv", "-n", "--configfile", str(cfg))
        counts = job_counts(only.stdout + only.stderr)
        assert counts.get("measure") == 2 and counts.get("aggregate") == 1, only.stdout + only.stderr
        assert {p: (sha(p), p.stat().st_mtime) for p in raws} == before
    finally:
        hook.close()


def test_grouped_order_is_followed(workflow_dir):
    cfg = write_campaign(
        workflow_dir / "g.yaml",
        campaign_name="grouped",
        execution={"cycles": 2, "structure": "grouped", "config_gap_s": 0, "cycle_gap_s": 0},
    )
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    results = [read_result(p, "raw_result") for p in Layout(workflow_dir / "results" / "grouped").raw_files()]
    windows = sorted(results, key=lambda r: r["timestamps"]["window_start"])
    assert [(r["config"]["pytorch"]["batch_size"], r["cycle"]) for r in windows] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_a_raw_result_edited_by_hand_and_cycles_left_out_are_flagged(workflow_dir):
    """Fixed cycles: a raw result edited by hand after its aggregation (the file made writable, a number changed) is
    flagged raw_result_changed by the aggregation that follows, naming the cycle; fewer execution.cycles than the
    raw results on disk leave the last ones out, listed and flagged cycles_not_aggregated, never silently."""
    grid = json.loads(json.dumps(SMALL["grid"]))
    grid["backend_overrides"]["pytorch"]["batch_size"] = [1]
    execution = {"cycles": 2, "structure": "interleaved", "config_gap_s": 0, "cycle_gap_s": 0}
    cfg = write_campaign(workflow_dir / "e.yaml", campaign_name="edits", grid=grid, execution=execution)
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    root = workflow_dir / "results" / "edits"
    (first, second) = Layout(root).raw_files()
    (aggregated,) = (root / "aggregated").glob("*.json")
    agg = read_result(aggregated, "aggregated_result")
    assert [c["raw_sha256"] for c in agg["per_cycle"]] == [sha(first), sha(second)]
    assert not {"raw_result_changed", "cycles_not_aggregated"} & set(agg["flags"])

    measured = sha(first)
    first.chmod(0o644)
    data = json.loads(first.read_text())
    data["energy"]["total"]["gross_energy_j"] *= 0.5
    first.write_text(json.dumps(data, indent=1) + "\n")
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    assert job_counts(run.stdout + run.stderr).get("measure") is None
    agg = read_result(aggregated, "aggregated_result")
    assert agg["flags"]["raw_result_changed"] == 1
    assert (agg["per_cycle"][0]["raw_sha256_recorded"], agg["per_cycle"][0]["raw_sha256"]) == (measured, sha(first))
    assert "raw_sha256_recorded" not in agg["per_cycle"][1]
    assert f"raw_result_changed: {aggregated.stem} cycle 1: its raw result is not the bytes" in run.stderr
    assert read_summary(str(root / "summary.csv"))[0]["flags"].split(";").count("raw_result_changed") == 1

    write_campaign(cfg, campaign_name="edits", grid=grid, execution={**execution, "cycles": 1})
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["cycle_numbers"] == [1] and agg["flags"]["raw_result_changed"] == 1
    assert agg["cycles_not_aggregated"] == [{"cycle": 2, "reason": "beyond execution.cycles = 1"}]
    assert agg["flags"]["cycles_not_aggregated"] == 1

    # a third cycle, measured by a later run: the cycles pool two campaign runs, flagged and said which
    runs = {json.loads(p.read_text())["run_id"] for p in (first, second)}
    assert len(runs) == 1 and None not in runs  # one snakemake invocation: one run id in all its jobs
    write_campaign(cfg, campaign_name="edits", grid=grid, execution={**execution, "cycles": 3})
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["cycle_numbers"] == [1, 2, 3] and agg["flags"]["cycles_span_runs"] == 2
    assert [g["cycles"] for g in agg["measured_in"]] == [[1, 2], [3]]
    assert agg["measured_in"][0]["run_id"] == runs.pop() != agg["measured_in"][1]["run_id"]


@pytest.mark.parametrize("victim", ["process group", "snakemake only"])
def test_kill_and_resume(workflow_dir, victim):
    """A crash kills everything at once; a kill -9 of Snakemake alone leaves its running measurement orphaned,
    which must then stop without writing anything."""
    cfg = write_campaign(workflow_dir / "k.yaml", campaign_name="kill")
    raw_dir = workflow_dir / "results" / "kill" / "raw"
    proc = snakemake_in_background(workflow_dir, cfg)
    logs = workflow_dir / "results" / "kill" / "logs" / "measure"

    def second_started() -> bool:  # one measurement finished and the next one started
        started = list(logs.glob("*/cycle_*.log")) if logs.exists() else []
        return len(Layout(raw_dir.parent).raw_files()) == 1 and len(started) == 2

    try:
        wait_while_running(
            proc, second_started, 300, "it could be killed", "the campaign never reached its second measurement"
        )
    finally:
        if victim == "process group":
            os.killpg(proc.pid, signal.SIGKILL)  # like a crash: snakemake and its jobs die at once
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    if victim == "snakemake only":
        time.sleep(8)  # the orphan would have finished its small window by now
        with pytest.raises(ProcessLookupError):  # ... but it ended with its parent: nothing is left in the group
            os.killpg(proc.pid, 0)
    finished = Layout(raw_dir.parent).raw_files()
    assert len(finished) == 1
    kept = finished[0]
    kept_state = (sha(kept), kept.stat().st_mtime)
    beside = {Path(token_times_of(kept))}  # the finished result's token times, written before it
    assert not [
        p for p in raw_dir.rglob("*") if p.is_file() and p not in finished and p not in beside
    ]  # nothing partial

    assert snakemake(workflow_dir, "--configfile", str(cfg), "--unlock").returncode == 0
    resumed = snakemake(workflow_dir, "--configfile", str(cfg), "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = job_counts(resumed.stdout + resumed.stderr)
    assert counts.get("measure") == 3, counts  # only what was missing
    assert (sha(kept), kept.stat().st_mtime) == kept_state
    assert len(Layout(raw_dir.parent).raw_files()) == 4


def test_ctrl_c_in_a_measurement_is_one_line(workflow_dir):
    """Ctrl-C (SIGINT to the foreground process group) during a measurement: the job says in one line what stopped,
    with no traceback of wherever the interrupt landed; nothing partial is kept."""
    cfg = write_campaign(workflow_dir / "c.yaml", campaign_name="ctrlc")
    logs = workflow_dir / "results" / "ctrlc" / "logs" / "measure"
    out = workflow_dir / "console.txt"
    with out.open("w") as console:
        proc = snakemake_in_background(workflow_dir, cfg, console)

        def window_open() -> bool:
            started = list(logs.glob("*/cycle_*.log")) if logs.exists() else []
            return bool(started) and "window open" in started[0].read_text()

        try:
            wait_while_running(proc, window_open, 300, "it could be interrupted", "the campaign never opened a window")
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
    text = out.read_text()
    (line,) = [x for x in text.splitlines() if "interrupted (Ctrl-C)" in x]
    assert line.endswith("cycle 1: interrupted (Ctrl-C); nothing of it is kept, a rerun does it again"), line
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert not list(Layout(workflow_dir / "results" / "ctrlc").raw_files())


def test_a_long_thermal_gap_is_not_silent(workflow_dir):
    """A measurement job waiting out a thermal gap longer than the heartbeat's quiet span says so on the console
    while it waits (no line of the job otherwise between announcing the gap and the warm-up)."""
    cfg = write_campaign(
        workflow_dir / "g.yaml",
        campaign_name="gap",
        execution={"cycles": 1, "structure": "interleaved", "config_gap_s": 20, "cycle_gap_s": 0},
    )
    host = {**os.environ, "LLM_ENERGY_CACHE_DIR": str(workflow_dir / "fresh-cache")}  # no earlier window here
    run = snakemake(workflow_dir, "--configfile", str(cfg), env=host)
    assert run.returncode == 0, run.stderr[-3000:]
    console = run.stdout + run.stderr
    announced = [x for x in console.splitlines() if re.search(r"cycle 1: thermal gap: waiting [\d.]+ s before", x)]
    beats = [x for x in console.splitlines() if re.search(r"cycle 1: thermal gap, \d+ s so far of \d+ s$", x)]
    assert len(announced) == 1 and beats, console[-3000:]
    waited = float(re.search(r"waiting ([\d.]+) s", announced[0]).group(1))
    assert waited > 8, announced  # longer than the quiet span: the heartbeat had to speak
    assert beats[0].split(":")[0] == announced[0].split(":")[0]  # the same job
    # every line of a measurement job names it, those of the shared warm-up and idle-baseline code included
    shared = [x for x in console.splitlines() if x.split(": ", 1)[-1].startswith(("warm-up", "idle baseline"))]
    assert len(shared) >= 6 and all(re.match(r"pytorch-\S+ cycle 1: ", x) for x in shared), shared


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"execution": {"cycles": 0}}, "key 'execution.cycles' = 0 is out of range; allowed: >= 1"),
        (
            {"execution": {"structure": "random"}},
            "key 'execution.structure' = 'random' is not allowed; allowed: interleaved, shuffled, grouped",
        ),
        (
            {"grid": {"backends": ["pytorch"], "shared": {"pytorch.batch_size": ["big"]}}},
            "key 'grid.shared.pytorch.batch_size' = 'big' has the wrong type; allowed: integer",
        ),
        (
            {"execution": {"cycels": 2}},
            "unknown key 'execution.cycels' (value 2); allowed keys here: config_gap_s, cycle_gap_s, "
            "cycles, precision_target, seed, structure (did you mean 'cycles'?)",
        ),
    ],
)
def test_malformed_campaign_fails_before_any_job(workflow_dir, patch, expected):
    existing = workflow_dir / "results" / "wf" / "raw" / "keep" / "cycle_1.json"
    existing.parent.mkdir(parents=True)
    existing.write_text('{"precious": true}')
    cfg = write_campaign(workflow_dir / "bad.yaml", **patch)
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 1
    # Snakemake announces the workflow profile first; the error itself is one line
    err_lines = [
        line
        for line in run.stderr.splitlines()
        if line.strip() and not line.startswith("Using workflow specific profile")
    ]
    assert err_lines == [f"Configuration error: {cfg}: {expected}"], run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert existing.read_text() == '{"precious": true}'
    assert sorted(p.name for p in (workflow_dir / "results" / "wf").rglob("*") if p.is_file()) == ["cycle_1.json"]


def test_configfile_runs_exactly_that_campaign(workflow_dir):
    other = {
        "campaign_name": "other",
        "model": "lem-tiny-llama",
        "grid": {"backends": ["pytorch"], "shared": {"pytorch.batch_size": 4}},
        "execution": {"cycles": 1},
    }
    path = workflow_dir / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    dry = snakemake(workflow_dir, "--configfile", str(path), "-n")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert job_counts(out)["measure"] == 1
    assert "Campaign 'other': 1 experiments x 1 cycles" in out
    assert "results/default" not in out and "bs8" not in out and "bs1-" not in out


def test_default_campaign_dry_run(workflow_dir):
    dry = snakemake(workflow_dir, "-n")
    assert dry.returncode == 0, dry.stderr
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["measure"] >= 4 and counts["aggregate"] == 1  # >= 2 configurations x >= 2 cycles, one aggregation
    # a measurement takes every core, so nothing else runs beside its window
    two = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "-n"], cwd=workflow_dir, capture_output=True, text=True
    )
    measure_blocks = [b for b in (two.stdout + two.stderr).split("rule ")[1:] if b.startswith("measure:")]
    assert measure_blocks and all("threads: 2" in b for b in measure_blocks)


def test_device_auto_jobs_declare_their_gpu_and_still_run_on_a_host_without_one(workflow_dir):
    """A ``device: auto`` measurement declares the GPU it would use on CUDA (``gpu=1``, Slurm's ``--gpus``); a local
    Snakemake holds jobs back for a resource only when ``--resources`` sets its limit, so ``snakemake --cores 1`` runs
    them here, where the experiment falls back to the CPU and its result says so."""
    import torch

    shared = {**SMALL["grid"]["shared"], "device": "auto"}
    grid = {"backends": ["pytorch"], "shared": shared, "backend_overrides": {"pytorch": {"batch_size": 2}}}
    cfg = write_campaign(
        workflow_dir / "wf.yaml", grid=grid, execution={"cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0}
    )
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    measure_blocks = [b for b in out.split("rule ")[1:] if b.startswith("measure:")]
    assert len(measure_blocks) == 1 and "gpu=1" in measure_blocks[0]
    (raw,) = Layout(workflow_dir / "results" / "wf").raw_files()
    result = read_result(raw, "raw_result")
    assert result["config"]["device"] == "auto"
    assert result["model"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_lint_and_format():
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], cwd=REPO, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_python_lint_and_format():
    """ruff, with the settings of pyproject.toml, over every Python file of the repository: its lint rules, and its
    formatter's layout."""
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_scripts_do_nothing_when_an_engine_reimports_them(script):
    """mpi4py (TensorRT-LLM's MPI workers) and multiprocessing's spawn re-run the parent's main file under another
    name, without Snakemake's preamble: every workflow script must then do nothing (and not fail)."""
    code = f"import runpy; g = runpy.run_path({str(REPO / 'scripts' / script)!r}, run_name='__worker__'); print(sorted(k for k in g if not k.startswith('__')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"  # not even an import happened
