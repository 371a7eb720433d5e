"""Campaigns in the real world, through real Snakemake runs on the tiny model: failed measurements isolated,
recorded and retried; damaged raw results named; secrets kept out of every file and line; odd results folders;
two runs on one results folder; two campaigns on one host; campaign files that ask to be evaluated."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import SMALL, job_counts, sha, snakemake, utc, write_campaign
from llenergymeasure.aggregate import read_summary
from llenergymeasure.record.layout import Layout
from llenergymeasure.results import read_result

pytestmark = pytest.mark.workflow

SECRETS = ("s3cret-pw", "t0ken-value", "hf_SECRETtoken1234")


def broken_model(tiny_model: str, where: Path) -> Path:
    """A model folder that passes every check before the run (it has a config.json) but whose weights are cut
    short, as after an interrupted copy: loading it fails inside the measurement job."""
    folder = where / "broken-model"
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def all_text(root: Path, skip: set[Path]) -> str:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and p not in skip:
            with contextlib.suppress(OSError):
                out.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


def test_failed_measurements_are_isolated_recorded_and_retried(workflow_dir, tiny_model):
    """A plain `snakemake --cores 1 --config campaign=FILE` (no --keep-going): one experiment's model folder is broken. Every other
    measurement runs, what completed is aggregated (summary, gap audit, report), each failed experiment x cycle is
    recorded with its error and log, the webhook hears of it, no secret shows anywhere, and a rerun retries exactly
    the failed measurements."""
    from conftest import Hook

    hook = Hook()
    try:
        broken = broken_model(tiny_model, workflow_dir)
        grid = json.loads(json.dumps(SMALL["grid"]))
        grid["models"] = ["lem-tiny-llama", str(broken)]
        grid["backend_overrides"] = {"pytorch": {"batch_size": 2}}
        port = hook.url.split(":")[2].split("/")[0]
        url = f"http://bob:{SECRETS[0]}@127.0.0.1:{port}/hook?token={SECRETS[1]}"
        cfg = write_campaign(
            workflow_dir / "f.yaml",
            campaign_name="fail",
            grid=grid,
            notifications={"webhook_url": url, "on_complete": True, "on_failure": True},
            execution={"cycles": 2, "structure": "interleaved", "config_gap_s": 0, "cycle_gap_s": 0},
        )
        env = {**os.environ, "HF_TOKEN": SECRETS[2]}
        run = snakemake(workflow_dir, "--config", f"campaign={cfg}", env=env)
        assert run.returncode == 1, run.stderr[-3000:]
        console = run.stdout + run.stderr
        root = workflow_dir / "results" / "fail"

        # everything that could be measured was, and is aggregated
        good = [p for p in Layout(root).raw_files() if p.parent.name.startswith("pytorch-lem-tiny-llama-")]
        assert len(good) == 2 and all(read_result(p, "raw_result") for p in good)
        assert not list(root.glob("raw/pytorch-broken-model-*/*"))  # no partial or temp file
        rows = read_summary(str(root / "summary.csv"))
        assert [r["config_name"] for r in rows] == ["pytorch-lem-tiny-llama"] and rows[0]["cycles"] == 2
        kind = "estimated" if rows[0]["includes_estimate"] else "measured"  # how the completed ones were measured
        assert f"Energy: {kind} in all 1 experiment(s) ({rows[0]['energy_method']})" in run.stderr
        assert [p.name for p in (root / "aggregated").glob("*.json")] == [f"{rows[0]['experiment_id']}.json"]
        assert json.loads((root / "thermal_gaps.json").read_text())["windows"]
        assert (root / "report" / "efficiency.svg").exists()

        # a machine-readable record of each failed experiment x cycle
        failures = json.loads((root / "failures.json").read_text())
        assert failures["planned_measurements"] == 4 and failures["failed_measurements"] == 2
        assert [(f["config_name"], f["cycle"]) for f in failures["failures"]] == [
            ("pytorch-broken-model", 1),
            ("pytorch-broken-model", 2),
        ]
        for f in failures["failures"]:
            assert f["experiment_id"].startswith("pytorch-broken-model-") and "SafetensorError" in f["error"]
            assert "Traceback" in (workflow_dir / f["log"]).read_text()  # the whole story is in the job's log
            assert f"Measurement failed: {f['experiment_id']} cycle {f['cycle']}: SafetensorError" in console
        assert "Traceback" not in console  # one line per failure on the console
        assert "failures.json" in console and "Rerun to retry exactly those" in console

        events = [b["event_type"] for b in hook.received]
        assert events.count("complete") == 2 and events.count("failure") == 2 and events[-1] == "campaign_failure"
        end = hook.received[-1]["data"]
        assert end["completed_experiments"] == 1 and len(end["failed_measurements"]) == 2
        assert f"Basic {base64.b64encode(f'bob:{SECRETS[0]}'.encode()).decode()}" in hook.authorizations

        # secrets: in no result, log, report, Snakemake file or console line
        text = all_text(workflow_dir, skip={cfg}) + console
        assert not [s for s in SECRETS if s in text]
        assert "http://***@127.0.0.1" not in text or "token=***" in text

        # a rerun retries exactly the failed measurements
        dry = snakemake(workflow_dir, "--config", f"campaign={cfg}", "-n")
        scheduled = sorted(re.findall(r"wildcards: experiment=([^,\s]+), cycle=(\d+)", dry.stdout + dry.stderr))
        assert scheduled == [(f["experiment_id"], str(f["cycle"])) for f in failures["failures"]]
        assert job_counts(dry.stdout + dry.stderr)["measure"] == 2

        before = {p: (sha(p), p.stat().st_mtime) for p in good}
        shutil.copy2(Path(tiny_model) / "model.safetensors", broken / "model.safetensors")  # the copy is repaired
        again = snakemake(workflow_dir, "--config", f"campaign={cfg}")
        assert again.returncode == 0, again.stderr[-3000:]
        assert job_counts(again.stdout + again.stderr)["measure"] == 2
        assert {p: (sha(p), p.stat().st_mtime) for p in good} == before
        assert len(read_summary(str(root / "summary.csv"))) == 2
        assert "Summary: results/fail/summary.csv (lem results)" in again.stderr  # the end of the completing run
        assert json.loads((root / "failures.json").read_text())["failures"] == []
        assert hook.received[-1]["event_type"] == "campaign_complete"
    finally:
        hook.close()


def test_a_damaged_raw_result_is_named_and_the_summary_kept(workflow_dir):
    cfg = write_campaign(
        workflow_dir / "d.yaml",
        campaign_name="damaged",
        grid={**SMALL["grid"], "backend_overrides": {"pytorch": {"batch_size": 2}}},
        execution={"cycles": 2, "config_gap_s": 0, "cycle_gap_s": 0},
    )
    first = snakemake(workflow_dir, "--configfile", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    root = workflow_dir / "results" / "damaged"
    derived = [root / "summary.csv", *sorted((root / "aggregated").glob("*.json"))]
    kept = {p: p.read_bytes() for p in derived}
    victim = sorted(root.glob("raw/*/cycle_2.json"))[0]
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:2000])  # a disk or copy accident

    run = snakemake(workflow_dir, "--configfile", str(cfg))
    assert run.returncode == 1
    rel = victim.relative_to(workflow_dir)
    line = f"Aggregation error: {rel} is not complete JSON"
    assert line in run.stderr and "delete it and rerun the campaign to measure that cycle again" in run.stderr
    assert "JSONDecodeError" not in run.stderr and "Traceback" not in run.stderr
    assert line.split(": ", 1)[1] in (root / "logs" / "aggregate.log").read_text()  # the log says it too
    assert {p: p.read_bytes() for p in derived} == kept  # the previous summary and aggregated files are intact

    victim.unlink()  # what the message says to do
    fixed = snakemake(workflow_dir, "--configfile", str(cfg))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert job_counts(fixed.stdout + fixed.stderr)["measure"] == 1
    assert read_summary(str(root / "summary.csv"))[0]["cycles"] == 2


@pytest.mark.parametrize("spelling", ["results/", "./results", "./results//", "~/lem-results"])
def test_results_dir_spellings(workflow_dir, spelling, monkeypatch, tmp_path):
    """A trailing slash, ./ or ~ in LLM_ENERGY_RESULTS_DIR: the campaign plans into the normalised folder."""
    home = tmp_path / "home"
    home.mkdir()
    cfg = write_campaign(workflow_dir / "p.yaml", campaign_name="paths")
    env = {**os.environ, "LLM_ENERGY_RESULTS_DIR": spelling, "HOME": str(home)}
    dry = snakemake(workflow_dir, "--configfile", str(cfg), "-n", env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    expected = f"{home}/lem-results/paths" if spelling.startswith("~") else "results/paths"
    assert f"results in {expected}/" in dry.stderr and "//" not in dry.stdout.replace("://", "")
    assert f"output: {expected}/raw/" in dry.stdout + dry.stderr


@pytest.mark.parametrize(
    "value, expected",
    [
        ("FILE", "is a file, not a folder"),
        (" results", "starts or ends with whitespace"),
        ("res{x}", "which Snakemake reads as wildcards"),
        ("/", "is the filesystem root; allowed: a folder path below it"),
        ("//", "is the filesystem root"),
    ],
)
def test_results_dir_that_cannot_be_a_folder_stops_before_any_job(workflow_dir, value, expected):
    (workflow_dir / "FILE").write_text("not a folder")
    cfg = write_campaign(workflow_dir / "p.yaml", campaign_name="paths")
    run = snakemake(workflow_dir, "--configfile", str(cfg), env={**os.environ, "LLM_ENERGY_RESULTS_DIR": value})
    assert run.returncode == 1
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert len(lines) == 1 and lines[0].startswith("Configuration error: ") and expected in lines[0], run.stderr


def test_a_second_run_on_one_results_folder_is_refused(workflow_dir, tmp_path):
    """Two checkouts whose campaigns write one results folder: the second run is refused while the first runs,
    and nothing of the first is touched."""
    other = tmp_path / "checkout-2"
    shutil.copytree(workflow_dir, other, symlinks=True)
    shared = tmp_path / "shared-results"
    for wd in (workflow_dir, other):
        write_campaign(wd / "c.yaml", campaign_name="shared", results_dir=str(shared))
    first = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "c.yaml"],
        cwd=workflow_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        logs = shared / "shared" / "logs" / "measure"
        while not (logs.exists() and list(logs.glob("*/cycle_1.log"))):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started measuring"
            time.sleep(0.1)
        second = snakemake(other, "--configfile", "c.yaml")
        assert first.poll() is None, "the first run ended before the second one was tried"
    finally:
        _out, err = first.communicate(timeout=600)
    assert second.returncode == 1
    lines = [x for x in second.stderr.splitlines() if x.startswith("Refused: ")]
    assert len(lines) == 1 and f"results folder {shared}/shared is in use by another campaign run" in lines[0]
    assert f"pid {first.pid}" in lines[0] and str(workflow_dir) in lines[0]
    assert not list((other / ".snakemake" / "metadata").glob("*")), "the second run ran a job"
    assert first.returncode == 0, err[-3000:]
    assert len(Layout(shared / "shared").raw_files()) == 4
    again = snakemake(other, "--configfile", "c.yaml")  # once the first run is over, the folder is free
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_two_campaigns_on_one_host_take_turns(workflow_dir, tmp_path):
    """Two campaigns in two working directories, started together: their measurement windows never overlap, and
    a window that follows the other campaign's keeps the longer gap."""
    other = tmp_path / "wd-b"
    shutil.copytree(workflow_dir, other, symlinks=True)
    runs = []
    env = {**os.environ, "LLM_ENERGY_CACHE_DIR": str(tmp_path / "host-cache")}  # this host's state, fresh for the test
    for wd, name in ((workflow_dir, "alpha"), (other, "beta")):
        write_campaign(
            wd / "c.yaml",
            campaign_name=name,
            grid={**SMALL["grid"], "backend_overrides": {"pytorch": {"batch_size": 2}}},
            execution={"cycles": 2, "config_gap_s": 1, "cycle_gap_s": 2},
        )
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "c.yaml"],
                cwd=wd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    windows = []
    for wd, name in ((workflow_dir, "alpha"), (other, "beta")):
        windows += [read_result(p, "raw_result") for p in Layout(wd / "results" / name).raw_files()]
    assert len(windows) == 4
    windows.sort(key=lambda r: r["timestamps"]["window_start"])
    for prev, cur in itertools.pairwise(windows):
        gap = (utc(cur["timestamps"]["window_start"]) - utc(prev["timestamps"]["window_end"])).total_seconds()
        assert gap > 0, "two measurement windows overlapped"
        assert gap >= cur["thermal"]["gap_required_s"] - 0.05
        if cur["campaign_name"] != prev["campaign_name"]:
            assert cur["thermal"]["gap_kind"] == "other_campaign" and cur["thermal"]["gap_required_s"] == 2
    assert {r["campaign_name"] for r in windows} == {"alpha", "beta"}
    assert windows[0]["thermal"]["gap_kind"] == "first"


YTE = """__use_yte__: true
campaign_name: ?__import__("pathlib").Path("EVALUATED").touch() or "yte"
model: lem-tiny-llama
grid: {backends: [pytorch]}
"""


def test_a_campaign_that_asks_to_be_evaluated_is_refused(workflow_dir, capsys):
    """YTE templating runs Python from a campaign file. Given as --config campaign=FILE (and to lem validate), the
    file is refused before anything in it is evaluated; given as --configfile, Snakemake evaluates it before any
    workflow code runs, and the workflow still refuses it, saying so."""
    from llenergymeasure.cli import main

    (workflow_dir / "yte.yaml").write_text(YTE)
    marker = workflow_dir / "EVALUATED"
    for argv in (("--config", "campaign=yte.yaml", "-n"), ("--config", "campaign=yte.yaml")):
        run = snakemake(workflow_dir, *argv)
        assert run.returncode == 1 and not marker.exists()
        lines = [
            x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")
        ]
        assert (
            len(lines) == 1 and "sets '__use_yte__', which asks Snakemake to evaluate it as a YTE template" in lines[0]
        )
    cwd = os.getcwd()
    os.chdir(workflow_dir)
    try:
        assert main(["validate", "yte.yaml"]) == 1 and not marker.exists()
    finally:
        os.chdir(cwd)
    assert "__use_yte__" in capsys.readouterr().err

    run = snakemake(workflow_dir, "--configfile", "yte.yaml", "-n")
    assert run.returncode == 1 and "Snakemake evaluated the template while reading --configfile" in run.stderr


def test_config_campaign_runs_exactly_that_campaign(workflow_dir):
    (workflow_dir / "other.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "other",
                "model": "lem-tiny-llama",
                "grid": {"backends": ["pytorch"], "shared": {"pytorch.batch_size": 4}},
                "execution": {"cycles": 1},
            }
        )
    )
    dry = snakemake(workflow_dir, "--config", "campaign=other.yaml", "num_samples=8", "-n")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert "Campaign 'other': 1 experiments x 1 cycles" in out and job_counts(out)["measure"] == 1
    assert "results/default" not in out and "bs8" not in out
    both = snakemake(workflow_dir, "--configfile", "other.yaml", "--config", "campaign=other.yaml", "-n")
    assert both.returncode == 1 and "either as --configfile or as --config campaign=FILE" in both.stderr


def test_a_job_keeps_a_result_another_run_wrote_meanwhile(tiny_model, tmp_path, capsys):
    """The measurement job of a second run that got past every lock (another host, a filesystem without locks)
    finds the raw result written when its window ends: it keeps that result, says so, and succeeds (failing would
    make Snakemake delete the job's output, which is the other run's result)."""
    from conftest import tiny_experiment
    from llenergymeasure.campaign import sparse_config
    from llenergymeasure.jobs import measure

    out = tmp_path / "raw" / "pytorch-x" / "cycle_1.json"
    out.parent.mkdir(parents=True)
    out.write_text('{"written": "by the other run"}')
    out.chmod(0o444)
    log = tmp_path / "m.log"
    runtime = {"results_root": str(tmp_path)}
    measure(
        sparse_config(tiny_experiment(warmup={"enabled": False})),
        "pytorch-x",
        1,
        tiny_model,
        str(out),
        str(log),
        runtime,
    )
    assert out.read_text() == '{"written": "by the other run"}'
    assert "already exists: a finished measurement is never replaced" in log.read_text()
    assert "this measurement was discarded" in capsys.readouterr().err
    assert not (tmp_path / ".state" / "failures").exists()


def test_the_host_lock_and_gap_are_shared_by_campaigns(tmp_path, monkeypatch):
    import threading

    from llenergymeasure.thermal import host_lock, record_window, wait_gap

    monkeypatch.setenv("LLM_ENERGY_CACHE_DIR", str(tmp_path / "cache"))
    held = threading.Event()

    def other_campaign():
        with host_lock(tmp_path / "a" / ".state"):
            held.set()
            time.sleep(0.6)

    t = threading.Thread(target=other_campaign)
    t.start()
    held.wait(5)
    with host_lock(tmp_path / "b" / ".state") as waited:
        assert waited >= 0.4  # another campaign's measurement held the host
    t.join()

    record_window(
        tmp_path / "a" / ".state", {"experiment_id": "x", "cycle": 1, "window_end": "t", "window_end_epoch_s": 1000.0}
    )
    slept = []
    info = wait_gap(tmp_path / "b" / ".state", 1, 10, 30, sleep=slept.append, now=lambda: 1005.0)
    assert info["gap_kind"] == "other_campaign" and info["gap_required_s"] == 30 and slept == [25.0]
    info = wait_gap(tmp_path / "a" / ".state", 1, 10, 30, sleep=slept.append, now=lambda: 1005.0)
    assert info["gap_kind"] == "config" and info["gap_required_s"] == 10


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "campaign_name: t\nmodel: lem-tiny-llama\nmodel: x\ngrid: {backends: [pytorch]}\n",
            "has key 'model' twice in one mapping (lines 2 and 3)",
        ),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
            ),
            "once its aliases are expanded",
        ),
        (b"campaign_name: caf\xe9\n", "is not UTF-8 text"),
    ],
    ids=["duplicate-key", "alias-bomb", "latin-1"],
)
def test_a_bad_campaign_file_stops_snakemake_in_one_line(workflow_dir, text, expected):
    path = workflow_dir / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    keep = workflow_dir / "results" / "t" / "raw" / "e" / "cycle_1.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("{}")
    t0 = time.monotonic()
    run = snakemake(workflow_dir, "--config", "campaign=bad.yaml", "-n")
    assert run.returncode == 1 and time.monotonic() - t0 < 60
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert len(lines) == 1 and lines[0].startswith(f"Configuration error: file '{path.name}' ") and expected in lines[0]
    assert keep.read_text() == "{}" and [p for p in (workflow_dir / "results").rglob("*") if p.is_file()] == [keep]


def test_a_link_or_a_foreign_file_in_place_of_the_lock_is_refused_and_left_untouched(tmp_path):
    """The results folder's lock is opened without following a link and written only when it is this tool's own
    lock file: a link (to a file anywhere), a second name of another file, or another file in its place is refused
    in one line, and the file behind it keeps every byte."""
    from llenergymeasure.results import ResultsFolderBusy, hold_results_folder

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")

    def state(name: str) -> Path:
        folder = tmp_path / name / ".state"
        folder.mkdir(parents=True)
        return folder

    state("link").joinpath("campaign.lock").symlink_to(victim)
    os.link(victim, state("hardlink") / "campaign.lock")
    state("foreign").joinpath("campaign.lock").write_text("not a lock\n")
    os.mkfifo(state("fifo") / "campaign.lock")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked-state").mkdir()
    (tmp_path / "linked-state" / ".state").symlink_to(tmp_path / "elsewhere")
    for name, expected in (
        ("link", "is a symbolic link"),
        ("hardlink", "is a file with 2 names"),
        ("foreign", "is not a lock file of this tool"),
        ("fifo", "is not a regular file"),
        ("linked-state", ".state is a symbolic link"),
    ):
        with pytest.raises(ResultsFolderBusy, match=re.escape(expected)):
            hold_results_folder(tmp_path / name)
    assert victim.read_text() == "precious\n" and not list((tmp_path / "elsewhere").iterdir())
    assert (tmp_path / "foreign" / ".state" / "campaign.lock").read_text() == "not a lock\n"
    # a fresh folder, and one holding the record of an earlier run, are held
    hold_results_folder(tmp_path / "fresh")
    state("earlier").joinpath("campaign.lock").write_text('{"host": "h", "pid": 1, "workdir": "/w", "since": "x"}')
    hold_results_folder(tmp_path / "earlier")
    held = json.loads((tmp_path / "earlier" / ".state" / "campaign.lock").read_text())
    assert held["pid"] == os.getpid()


def test_a_campaign_whose_lock_is_a_link_is_refused_before_any_job(workflow_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    write_campaign(workflow_dir / "c.yaml", campaign_name="linked", results_dir=str(tmp_path / "results"))
    state = tmp_path / "results" / "linked" / ".state"
    state.mkdir(parents=True)
    (state / "campaign.lock").symlink_to(victim)
    run = snakemake(workflow_dir, "--config", "campaign=c.yaml")
    assert run.returncode == 1
    refused = [x for x in run.stderr.splitlines() if x.startswith("Refused: ")]
    assert len(refused) == 1 and "campaign.lock is a symbolic link" in refused[0], run.stderr[-2000:]
    assert victim.read_text() == "precious\n"
    assert not list((tmp_path / "results" / "linked").glob("raw/*/*")), "a measurement ran"


def test_devices_and_fifos_are_refused_as_input_files_without_reading_or_waiting(workflow_dir, tmp_path, capsys):
    """A campaign file that is a link to /dev/zero, and a prompt file that is a FIFO, are refused in one line:
    by lem validate, by Snakemake's dry run, and by the prompt loader (which would otherwise wait for a writer)."""
    from llenergymeasure.cli import main
    from llenergymeasure.errors import ConfigError
    from llenergymeasure.prompts import load_prompts

    (workflow_dir / "zero.yaml").symlink_to("/dev/zero")
    started = time.monotonic()
    assert main(["validate", str(workflow_dir / "zero.yaml")]) == 1
    assert "zero.yaml' is a device, not a regular file" in capsys.readouterr().err
    run = snakemake(workflow_dir, "-n", "--config", "campaign=zero.yaml")
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert run.returncode == 1 and len(lines) == 1 and "is a device, not a regular file" in lines[0], run.stderr
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        load_prompts({"name": str(fifo), "column": None, "split": "train", "config": None}, 2, 0)
    assert time.monotonic() - started < 120


def test_the_raw_result_is_published_after_the_notification_as_the_jobs_last_act(tiny_model, tmp_path):
    """The completion notification (which may wait up to its webhook's deadline) goes out before the raw result is
    published, and nothing but the log's last line follows it: a job killed while it notifies leaves no result to
    delete, and is measured again."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from conftest import tiny_experiment
    from llenergymeasure.campaign import sparse_config
    from llenergymeasure.jobs import measure

    out = tmp_path / "raw" / "pytorch-x" / "cycle_1.json"
    published_when_notified = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            published_when_notified.append(out.exists())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        runtime = {
            "results_root": str(tmp_path),
            "notifications": {"webhook_url": f"http://127.0.0.1:{server.server_address[1]}/h", "on_complete": True},
        }
        config = sparse_config(tiny_experiment(warmup={"enabled": False}, num_input_prompts=2))
        measure(config, "pytorch-x", 1, tiny_model, str(out), str(tmp_path / "m.log"), runtime)
    finally:
        server.shutdown()
        server.server_close()
    assert published_when_notified == [False] and out.exists()
    lines = (tmp_path / "m.log").read_text().splitlines()
    assert lines[-1].endswith(f"published {out}") and "completion notification" in lines[-2]


def test_the_measure_script_ends_its_process_right_after_publishing(tmp_path):
    """scripts/measure.py hands over to end_published_job once measure returns: no interpreter teardown (exit
    handlers never run), exit code 0, worker processes left behind stopped first."""
    code = """
import atexit, multiprocessing, sys, time
sys.path.insert(0, 'src')
from llenergymeasure.jobs import end_published_job
atexit.register(lambda: print('teardown ran', flush=True))
worker = multiprocessing.Process(target=time.sleep, args=(60,))
worker.start()
print('worker', worker.pid, flush=True)
end_published_job()
"""
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "teardown ran" not in run.stdout, run.stderr
    pid = int(run.stdout.split()[1])
    assert time.monotonic() - started < 30
    with pytest.raises(ProcessLookupError):  # the worker was terminated, and reaped by its parent's join
        os.kill(pid, 0)
    script = (Path(__file__).resolve().parent.parent / "scripts" / "measure.py").read_text()
    assert script.rstrip().endswith("end_published_job()")


def test_an_aggregation_killed_while_snakemake_holds_its_backup_does_not_block_the_rerun(workflow_dir):
    """kill -9 while the aggregation runs: Snakemake's copy of the aggregated folder stays in .snakemake/backups,
    where copying it again would fail on every later run (FileExistsError). The next run puts it away by itself,
    says so in one line, and aggregates again; no result is lost."""
    import signal

    cfg = write_campaign(workflow_dir / "c.yaml", execution={**SMALL["execution"], "cycles": 1})
    first = snakemake(workflow_dir, "--configfile", str(cfg))
    assert first.returncode == 0, first.stderr[-2000:]
    root = workflow_dir / "results" / "wf"
    raws = {p: sha(p) for p in Layout(root).raw_files()}
    backup = workflow_dir / ".snakemake" / "backups" / "results" / "wf" / "aggregated"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(cfg), "-R", "aggregate"],
        cwd=workflow_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not backup.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the aggregation ended before it was killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert backup.is_dir()
    assert snakemake(workflow_dir, "--configfile", str(cfg), "--unlock").returncode == 0
    rerun = snakemake(workflow_dir, "--configfile", str(cfg), "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "FileExistsError" not in rerun.stderr
    assert "dropped the copy an interrupted run left in .snakemake/backups" in rerun.stderr
    assert not backup.exists() and job_counts(rerun.stdout + rerun.stderr).get("measure") is None
    assert {p: sha(p) for p in raws} == raws
    assert len(read_summary(str(root / "summary.csv"))) == 2


def _kill_script(workflow_dir: Path, name: str) -> bool:
    """kill -9 the process of a Snakemake script job (``.snakemake/scripts/tmp*.<name>``) running in this folder."""
    import signal

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            here = os.readlink(entry / "cwd") == str(workflow_dir)
        except OSError:
            continue
        if here and name in cmdline and ".snakemake/scripts" in cmdline:
            os.kill(int(entry.name), signal.SIGKILL)
            return True
    return False


def test_an_analysis_change_whose_aggregation_failed_is_aggregated_at_the_next_run(workflow_dir):
    """Change analysis.confidence, and let the aggregation die (kill -9 of its process): Snakemake puts the previous
    files back, which were made at the old level, and forgets what they were made with. The next run sees the
    mismatch and aggregates again; until then lem results says so."""
    cfg = write_campaign(workflow_dir / "c.yaml", execution={**SMALL["execution"], "cycles": 1})
    assert snakemake(workflow_dir, "--configfile", str(cfg)).returncode == 0
    root = workflow_dir / "results" / "wf"

    def confidences() -> set:
        return {
            read_result(p, "aggregated_result")["aggregation"]["confidence"] for p in root.glob("aggregated/*.json")
        }

    assert confidences() == {0.95}
    changed = write_campaign(
        workflow_dir / "c90.yaml", execution={**SMALL["execution"], "cycles": 1}, analysis={"confidence": 0.9}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(changed)],
        cwd=workflow_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _kill_script(workflow_dir, "aggregate.py"):
        assert proc.poll() is None and time.monotonic() < deadline, "the aggregation ended before it was killed"
        time.sleep(0.01)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-2000:]
    assert confidences() == {0.95}  # the previous files, put back

    shown = subprocess.run(
        [sys.executable, "-m", "llenergymeasure.cli", "results", str(changed)],
        cwd=workflow_dir,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "was made with confidence 0.95, cv_threshold 0.1; the campaign states confidence 0.9" in shown.stderr

    rerun = snakemake(workflow_dir, "--configfile", str(changed))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "aggregating again" in rerun.stderr, rerun.stderr[:800]
    assert job_counts(rerun.stdout + rerun.stderr).get("aggregate") == 1
    assert confidences() == {0.9}
    again = snakemake(workflow_dir, "--configfile", str(changed), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
