"""Precision-targeted campaigns in real Snakemake runs on the tiny model (CPU): the minimum plan, the unchanged
workflow without a target, cycles decided by measured noise, and resume after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, job_counts, sha, snakemake, snakemake_in_background, wait_while_running
from llenergymeasure.aggregate import read_summary
from llenergymeasure.record.layout import Layout
from llenergymeasure.results import read_result

pytestmark = pytest.mark.workflow

SHARED = {
    "fp_precision": "float32",
    "device": "cpu",
    "max_input_tokens": 32,
    "max_output_tokens": 8,
    "min_output_tokens": 8,
    "decoder.preset": "deterministic",
    "baseline.duration_s": 1,
    "warmup.max_prompts": 3,
    "warmup.min_prompts": 3,
    "warmup.window_size": 3,
}


def campaign(name: str, execution: dict, batch_sizes=(2, 4), **shared) -> dict:
    return {
        "campaign_name": name,
        "model": "lem-tiny-llama",
        "num_samples": 4,
        "grid": {
            "backends": ["pytorch"],
            "shared": {**SHARED, **shared},
            "backend_overrides": {"pytorch": {"batch_size": list(batch_sizes)}},
        },
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
    targets: without a target, the workflow must go on planning exactly these (the report_plots job has since
    declared its captions, the aggregated directory and the load line)."""
    import llenergymeasure.workflow as lem

    recorded = json.loads((REPO / "tests" / "data" / "fixed_cycles_plan.json").read_text())
    (workflow_dir / "fixed.yaml").write_text(recorded["campaign"])
    dry = snakemake(workflow_dir, "-n", "--configfile", "fixed.yaml")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry_run_jobs(dry.stdout + dry.stderr) == recorded["jobs"]
    config = {"campaign": "fixed.yaml"}
    p = lem.load(config, [], workdir=workflow_dir, announce=False)
    params = {
        "measure": {e.experiment_id: lem.experiment_config(p, e.experiment_id) for e in p.expansion.experiments},
        "aggregate": {"names": lem.config_names(p), "analysis": lem.analysis(p)},
        "report_plots": {"aggregated": lem.aggregated(p), "raw": lem.all_raw(p)},
    }
    assert json.loads(json.dumps(params)) == recorded["params"]
    assert "decide" not in dry.stdout + dry.stderr


def test_a_dry_run_shows_the_minimum_plan(workflow_dir):
    cfg = write(
        workflow_dir / "p.yaml",
        campaign(
            "pt",
            {
                "structure": "grouped",
                "precision_target": {
                    "relative_half_width": 0.05,
                    "metric": "energy_j",
                    "min_cycles": 4,
                    "max_cycles": 9,
                },
            },
        ),
    )
    dry = snakemake(workflow_dir, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0, dry.stderr[-2000:]
    out = dry.stdout + dry.stderr
    counts = job_counts(out)
    assert (counts["measure"], counts["decide"], counts["aggregate"]) == (8, 2, 1), counts
    assert set(counts) == {
        "measure",
        "decide",
        "aggregate",
        "build_model",
        "thermal_gaps",
        "notify_campaign",
        "report_plots",
        "all",
    }, counts
    assert "Campaign 'pt': 2 experiments x 4-9 cycles, grouped order" in out
    assert (
        "precision target: cycles continue until the 95% Student-t interval of the mean energy_j, judged with the "
        "90% upper bound of the spread, is within ±5 % of it, 4 to 9 cycles. Scheduled now: the first 4 cycles of every experiment (8 measurements); after each "
        "further cycle a decision adds one more to the experiments not yet that precise, so more cycles may follow."
    ) in out
    assert "DAG of jobs will be updated after completion" in out  # Snakemake's own word on its checkpoints
    decisions = re.findall(r"output: results/pt/decisions/([^/\s]+)/after_cycle_(\d+)\.json", out)
    assert sorted(n for _, n in decisions) == ["4", "4"]
    assert not list((workflow_dir / "results").glob("pt/*"))  # a dry run writes nothing


def test_a_bad_value_stops_the_run_before_any_job(workflow_dir):
    existing = workflow_dir / "results" / "pt" / "raw" / "keep" / "cycle_1.json"
    existing.parent.mkdir(parents=True)
    existing.write_text('{"precious": true}')
    cfg = write(
        workflow_dir / "bad.yaml",
        campaign("pt", {"precision_target": {"relative_half_width": 0.05, "min_cycles": 6, "max_cycles": 4}}),
    )
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    err = [
        line
        for line in run.stderr.splitlines()
        if line.strip() and not line.startswith("Using workflow specific profile")
    ]
    assert run.returncode == 1 and err == [
        f"Configuration error: {cfg}: key 'execution.precision_target.max_cycles' = 4 is smaller than "
        "execution.precision_target.min_cycles = 6; allowed: >= 6"
    ], run.stderr
    assert existing.read_text() == '{"precious": true}'
    assert [p.name for p in (workflow_dir / "results").rglob("*") if p.is_file()] == ["cycle_1.json"]


# ---------------------------------------------------------------------------------------------- real runs


class HostLoad:
    """A deliberately varied load on the host: four busy loops per CPU while the measurement window of one
    experiment's even-numbered cycles is open (from the job's "window open" line to its raw result), nothing
    otherwise. The measurement itself is untouched: its
    window really is slower, and the CPUs really are busier (the CPU energy estimate, and RAPL where readable, count
    every process), so that experiment's throughput and energy jump from cycle to cycle while the other's do not."""

    def __init__(self, root: Path, experiment_id: str, max_cycles: int):
        self.root, self.experiment_id, self.max_cycles = root, experiment_id, max_cycles
        self.procs: list[subprocess.Popen] = []
        self.loaded: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._off()

    def _on(self):
        if not self.procs:
            self.procs = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4 * (os.cpu_count() or 1))
            ]

    def _off(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []

    def _window_open(self, cycle: int) -> bool:
        log = self.root / "logs" / "measure" / self.experiment_id / f"cycle_{cycle}.log"
        raw = self.root / "raw" / self.experiment_id / f"cycle_{cycle}.json"
        try:
            return "measuring (window open)" in log.read_text() and not raw.exists()
        except OSError:
            return False

    def _watch(self):
        while not self.stop.is_set():
            running = [n for n in range(2, self.max_cycles + 1, 2) if self._window_open(n)]
            if running:
                self.loaded.update(running)
                self._on()
            else:
                self._off()
            time.sleep(0.05)


def expected_id(workflow_dir: Path, cfg: Path, batch_size: int) -> str:
    from llenergymeasure.campaign import load_campaign, plan

    p = plan(load_campaign(cfg, workflow_dir))
    return next(e.experiment_id for e in p.expansion.experiments if e.config["pytorch"]["batch_size"] == batch_size)


def windows_in_time_order(root: Path) -> list[dict]:
    results = [read_result(p, "raw_result") for p in Layout(root).raw_files()]
    return sorted(results, key=lambda r: r["timestamps"]["window_start"])


def test_measured_noise_decides_how_many_cycles_run(workflow_dir):
    """Two experiments, one under a deliberately varied host load: the steady one meets an easy target with its
    minimum cycles, the other gets more (up to max_cycles, flagged when it stops there unmet). Grouped order: the cycles
    added to the first experiment run before the second one starts; every window keeps its thermal gap."""
    # the 95 % interval of the mean throughput within ±100 % of the mean: after 4 cycles, met by any experiment whose
    # cycles' CV is below 63 % (a steady one, even on a host shared with other work), not by one whose throughput
    # drops several fold in every other cycle
    target = {"relative_half_width": 1.0, "metric": "output_tokens_per_s", "min_cycles": 4, "max_cycles": 6}
    cfg = write(
        workflow_dir / "noise.yaml",
        campaign(
            "noise",
            {"structure": "grouped", "config_gap_s": 1, "cycle_gap_s": 1, "precision_target": target},
            **{"energy.min_window_s": 1.0, "energy.repeat_to_min_window": True},
        ),
    )
    root = workflow_dir / "results" / "noise"
    noisy, steady = expected_id(workflow_dir, cfg, 2), expected_id(workflow_dir, cfg, 4)
    with HostLoad(root, noisy, target["max_cycles"]) as load:
        run = snakemake(workflow_dir, "--configfile", str(cfg), timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load.loaded, "the load never ran"

    rows = {r["experiment_id"]: r for r in read_summary(str(root / "summary.csv"))}
    aggs = {e: read_result(root / "aggregated" / f"{e}.json", "aggregated_result") for e in (noisy, steady)}
    s, n = aggs[steady]["precision"], aggs[noisy]["precision"]
    values = {e: aggs[e]["metrics"]["output_tokens_per_s"]["values"] for e in aggs}
    assert s["status"] == "target_met" and s["cycles_run"] == 4 == rows[steady]["cycles"], values
    assert n["cycles_run"] > 4 and rows[noisy]["cycles"] == n["cycles_run"], values
    assert n["status"] in ("target_met", "max_cycles_reached")
    assert (
        ("precision_target_not_met" in aggs[noisy]["flags"])
        == (n["status"] == "max_cycles_reached")
        == n["max_cycles_reached"]
    )
    assert rows[noisy]["precision_status"] == n["status"] and rows[steady]["precision_target_met"] is True
    assert rows[steady]["precision_achieved_rel_half_width"] == pytest.approx(s["achieved_relative_half_width"])
    assert s["achieved_relative_half_width"] <= 1.0 and s["metric"] == "output_tokens_per_s"

    # every decision is on disk: the steady experiment stopped at its first, the noisy one went on
    assert sorted(p.name for p in (root / "decisions" / steady).iterdir()) == ["after_cycle_4.json"]
    noisy_decisions = [
        json.loads((root / "decisions" / noisy / f"after_cycle_{c}.json").read_text())
        for c in range(4, n["cycles_run"] + 1)
    ]
    assert [d["decision"] for d in noisy_decisions] == ["continue"] * (len(noisy_decisions) - 1) + ["stop"]
    assert sorted(p.name for p in (root / "decisions" / noisy).iterdir()) == sorted(
        f"after_cycle_{c}.json" for c in range(4, n["cycles_run"] + 1)
    )  # none beyond the one that stopped it

    # grouped order held for the cycles added later, and so did the gaps
    order = [(r["experiment_id"], r["cycle"]) for r in windows_in_time_order(root)]
    assert order == [(noisy, c) for c in range(1, n["cycles_run"] + 1)] + [(steady, c) for c in (1, 2, 3, 4)]
    audit = json.loads((root / "thermal_gaps.json").read_text())
    assert audit["ok"] is True and len(audit["windows"]) == n["cycles_run"] + 4
    assert all(w["gap_kind"] == "cycle" for w in audit["windows"][1 : n["cycles_run"]])

    # the campaign-end notification record says it too
    sent = json.loads((root / "notifications" / "campaign_complete.json").read_text())["data"]
    assert sent["cycles_run"] == {noisy: n["cycles_run"], steady: 4} and sent["precision_target"]["max_cycles"] == 6
    assert sent["precision_target_not_met"] == ([noisy] if n["status"] == "max_cycles_reached" else [])

    # the report says how precise each point is
    caption = (root / "report" / "efficiency.rst").read_text()
    assert f"4 cycles, ±{100 * s['achieved_relative_half_width']:.3g} %: target met" in caption
    again = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def test_kill_and_resume_keeps_the_decisions_taken(workflow_dir):
    """kill -9 while cycles added by decisions are being measured; --unlock, rerun: no finished measurement runs
    again, no decision already taken is taken again, the campaign ends as if never stopped. An unreachable target
    makes every experiment run max_cycles (interleaved: A4 B4 after A3 B3)."""
    target = {"relative_half_width": 1e-9, "metric": "output_tokens_per_s", "min_cycles": 3, "max_cycles": 4}
    cfg = write(
        workflow_dir / "k.yaml",
        campaign(
            "resume",
            {"structure": "interleaved", "config_gap_s": 0, "cycle_gap_s": 0, "precision_target": target},
            **{"energy.min_window_s": 0},
        ),
    )
    root = workflow_dir / "results" / "resume"
    a, b = expected_id(workflow_dir, cfg, 2), expected_id(workflow_dir, cfg, 4)
    proc = snakemake_in_background(workflow_dir, cfg)
    try:
        wait_while_running(  # the first added cycle done and the second started
            proc,
            lambda: (
                (root / "raw" / a / "cycle_4.json").exists()
                and (root / "logs" / "measure" / b / "cycle_4.log").exists()
            ),
            600,
            "it could be killed",
            "the campaign never reached its added cycles",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    raws = Layout(root).raw_files()
    decisions = sorted(root.glob("decisions/*/after_cycle_*.json"))
    assert len(raws) == 7 and {p.name for p in decisions} >= {"after_cycle_3.json"} and len(decisions) in (2, 3)
    before = {p: (sha(p), p.stat().st_mtime) for p in raws + decisions}

    assert snakemake(workflow_dir, "--configfile", str(cfg), "--unlock").returncode == 0
    resumed = snakemake(workflow_dir, "--configfile", str(cfg), "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = job_counts(resumed.stdout + resumed.stderr)
    assert counts.get("measure") == 1, counts  # B4 only
    assert counts.get("decide") == 4 - len(decisions), counts  # only the decisions not yet taken
    assert {p: (sha(p), p.stat().st_mtime) for p in before} == before
    for exp_id in (a, b):
        agg = read_result(root / "aggregated" / f"{exp_id}.json", "aggregated_result")
        assert agg["cycles"] == 4 and agg["precision"]["status"] == "max_cycles_reached"
        assert agg["flags"]["precision_target_not_met"] == 1
        assert [
            json.loads((root / "decisions" / exp_id / f"after_cycle_{c}.json").read_text())["decision"] for c in (3, 4)
        ] == ["continue", "stop"]
    assert [(r["experiment_id"], r["cycle"]) for r in windows_in_time_order(root)] == [
        (e, c) for c in range(1, 5) for e in (a, b)
    ]

    # a decision deleted after the campaign ended (a damaged one, as its error advises) is taken again, and nothing
    # is measured for it
    gone = root / "decisions" / a / "after_cycle_3.json"
    gone.unlink()
    retaken = snakemake(workflow_dir, "--configfile", str(cfg))
    assert retaken.returncode == 0, retaken.stderr[-3000:]
    counts = job_counts(retaken.stdout + retaken.stderr)
    assert counts.get("decide") == 1 and counts.get("measure") is None, counts
    assert json.loads(gone.read_text())["decision"] == "continue"

    # a raw result of an added cycle deleted after the campaign ended is measured again (and decided on again)
    lost = root / "raw" / a / "cycle_4.json"
    lost.unlink()
    dry = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts.get("measure") == 1 and counts.get("decide") == 1 and counts.get("aggregate") == 1, dry.stdout[-2000:]
    assert re.findall(r"wildcards: experiment=([^,\s]+), cycle=(\d+)", dry.stdout + dry.stderr) == [(a, "4")]


def lem_results(workflow_dir: Path, cfg: Path, command: str = "results") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llenergymeasure.cli", command, str(cfg)],
        cwd=workflow_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rewrite(path: Path, change, keep_mtime: bool = False) -> None:
    """A result file edited by hand: made writable, its JSON changed, written back (with its old modification time
    when ``keep_mtime``, as a copy that preserves times would leave it)."""
    st = path.stat()
    path.chmod(0o644)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1) + "\n")
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_edited_decisions_and_raw_results_are_never_used_silently(workflow_dir):
    """Real runs of a one-experiment campaign (max_cycles 4, a target no experiment meets), then files edited by hand
    between runs. A decision edited to stop before a measured cycle is set aside (one line) and taken again: the
    cycle is still aggregated. A raw result edited after the decisions and the aggregation read it is flagged
    raw_result_changed (naming the cycle), and lem results and lem validate say so, whether or not the edit left a
    newer modification time. A lower max_cycles leaves the later cycle out, flagged cycles_not_aggregated. A cycle
    deleted and measured again is a new measurement, not a change."""
    from llenergymeasure.precision import Target, assess

    target = {"relative_half_width": 1e-9, "metric": "output_tokens_per_s", "min_cycles": 3, "max_cycles": 4}
    execution = {"structure": "interleaved", "config_gap_s": 0, "cycle_gap_s": 0, "precision_target": target}
    cfg = write(workflow_dir / "e.yaml", campaign("edits", execution, batch_sizes=(2,), **{"energy.min_window_s": 0}))
    root = workflow_dir / "results" / "edits"
    eid = expected_id(workflow_dir, cfg, 2)
    raw = {c: root / "raw" / eid / f"cycle_{c}.json" for c in range(1, 5)}
    decision = {n: root / "decisions" / eid / f"after_cycle_{n}.json" for n in (3, 4)}
    aggregated = root / "aggregated" / f"{eid}.json"

    first = snakemake(workflow_dir, "--configfile", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["cycles"] == 4 and [c["raw_sha256"] for c in agg["per_cycle"]] == [sha(raw[c]) for c in range(1, 5)]
    taken = {n: json.loads(decision[n].read_text()) for n in (3, 4)}
    assert [taken[n]["decision"] for n in (3, 4)] == ["continue", "stop"]
    assert taken[4]["raw_sha256"] == [sha(raw[c]) for c in range(1, 5)]
    assert "raw_result_changed" not in agg["flags"] and "cycles_not_aggregated" not in agg["flags"]

    # 1. the decision after cycle 3 edited to stop there, its values too (so that it agrees with itself): cycle 4
    # was measured, so it is checked against the raw results, set aside and taken again; nothing is measured
    steady = assess([100.0, 100.0, 100.0], Target(**taken[3]["target"]))
    assert steady["decision"] == "stop"
    decision[3].write_text(json.dumps({**taken[3], **steady}))
    shown = lem_results(workflow_dir, cfg, "validate")
    assert f"note: {decision[3].relative_to(workflow_dir)} is not the decision its values and raw results give" in (
        shown.stdout
    ), shown.stdout
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    (moved,) = (root / ".state" / "set_aside" / "decisions" / eid).iterdir()
    assert (
        f"{decision[3].relative_to(workflow_dir)} is not the decision its values and raw results give (it says stop "
        "(target_met), its raw results give continue (target_not_met); edited by hand?): moved to "
        f"{moved.relative_to(workflow_dir)}, taken again from the raw results"
    ) in run.stderr
    counts = job_counts(run.stdout + run.stderr)
    assert counts.get("decide") == 1 and counts.get("measure") is None, counts
    assert json.loads(decision[3].read_text())["decision"] == "continue"
    assert read_result(aggregated, "aggregated_result")["cycle_numbers"] == [1, 2, 3, 4]  # cycle 4 still there

    # 2. a raw result edited by hand (the file made writable, a number changed): the decisions that read it are taken
    # again, and the aggregation flags the cycle, against the digest its previous result recorded
    measured_2 = sha(raw[2])
    rewrite(raw[2], lambda d: d["energy"]["total"].update(gross_energy_j=d["energy"]["total"]["gross_energy_j"] * 2))
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["flags"]["raw_result_changed"] == 1 and agg["cycles"] == 4
    second = agg["per_cycle"][1]
    assert (second["raw_sha256_recorded"], second["raw_sha256"]) == (measured_2, sha(raw[2]))
    assert f"raw_result_changed: {eid} cycle 2: its raw result is not the bytes " in run.stderr
    shown = lem_results(workflow_dir, cfg)
    assert shown.returncode == 0 and f"Note: {eid} cycle 2 is flagged raw_result_changed" in shown.stderr, shown.stderr

    # 3. another one edited, this time keeping its modification time: Snakemake sees nothing to do, lem results says
    # the numbers were not made from these bytes, and an aggregation forced anyway flags it too
    rewrite(raw[1], lambda d: d["energy"]["total"].update(gross_energy_j=1.0), keep_mtime=True)
    dry = snakemake(workflow_dir, "--configfile", str(cfg), "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    shown = lem_results(workflow_dir, cfg)
    assert f"raw/{eid}/cycle_1.json is not the bytes aggregated in" in shown.stderr, shown.stderr
    shown = lem_results(workflow_dir, cfg, "validate")
    assert f"note: results/edits/raw/{eid}/cycle_1.json is not the bytes aggregated in" in shown.stdout, shown.stdout
    run = snakemake(workflow_dir, "--configfile", str(cfg), "-R", "aggregate")
    assert run.returncode == 0, run.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["flags"]["raw_result_changed"] == 2
    assert agg["per_cycle"][0]["raw_sha256_recorded_in"] == str(aggregated.relative_to(workflow_dir))

    # 4. a lower max_cycles: the decisions are taken again and stop after cycle 3; the measured cycle 4 is left out,
    # listed and flagged, and the changed cycles stay flagged
    execution["precision_target"] = {**target, "max_cycles": 3}
    write(cfg, campaign("edits", execution, batch_sizes=(2,), **{"energy.min_window_s": 0}))
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    agg = read_result(aggregated, "aggregated_result")
    assert agg["cycle_numbers"] == [1, 2, 3] and agg["flags"]["cycles_not_aggregated"] == 1
    assert agg["cycles_not_aggregated"] == [
        {
            "cycle": 4,
            "reason": f"measured after {decision[3].relative_to(workflow_dir)}, which stopped the experiment",
        }
    ]
    assert agg["flags"]["raw_result_changed"] == 2
    assert f"cycles_not_aggregated: {eid} cycle 4: measured after" in run.stderr

    # 5. cycle 2 deleted and measured again: a new measurement, no longer flagged (cycle 1 still is)
    raw[2].unlink()
    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-3000:]
    assert job_counts(run.stdout + run.stderr).get("measure") == 1
    agg = read_result(aggregated, "aggregated_result")
    assert agg["flags"]["raw_result_changed"] == 1 and "raw_sha256_recorded" in agg["per_cycle"][0]
    assert "raw_sha256_recorded" not in agg["per_cycle"][1] and agg["per_cycle"][1]["raw_sha256"] == sha(raw[2])
