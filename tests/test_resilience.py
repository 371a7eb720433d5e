"""Campaigns in the real world, through real Snakemake runs on the tiny model: failed measurements isolated,
recorded and retried; damaged raw results named; secrets kept out of every file and line; odd results folders;
two runs on one results folder; two campaigns on one host; campaign files that ask to be evaluated."""

from __future__ import annotations

import base64
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

from llenergymeasure.aggregate import read_summary
from llenergymeasure.results import raw_result_files, read_result
from test_workflow import SMALL, job_counts, sha, snakemake, utc, write_campaign

pytestmark = pytest.mark.workflow

SECRETS = ("s3cret-pw", "t0ken-value", "hf_SECRETtoken1234")


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


@pytest.mark.parametrize("value, expected", [
    ("FILE", "is a file, not a folder"),
    (" results", "starts or ends with whitespace"),
    ("res{x}", "which Snakemake reads as wildcards"),
])  # fmt: skip
def test_results_dir_that_cannot_be_a_folder_stops_before_any_job(workflow_dir, value, expected):
    (workflow_dir / "FILE").write_text("not a folder")
    cfg = write_campaign(workflow_dir / "p.yaml", campaign_name="paths")
    run = snakemake(workflow_dir, "--configfile", str(cfg), env={**os.environ, "LLM_ENERGY_RESULTS_DIR": value})
    assert run.returncode == 1
    lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
    assert len(lines) == 1 and lines[0].startswith("Configuration error: ") and expected in lines[0], run.stderr


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
        lines = [x for x in run.stderr.splitlines() if x.strip() and not x.startswith("Using workflow specific profile")]
        assert len(lines) == 1 and "sets '__use_yte__', which asks Snakemake to evaluate it as a YTE template" in lines[0]
    cwd = os.getcwd()
    os.chdir(workflow_dir)
    try:
        assert main(["validate", "yte.yaml"]) != 0 and not marker.exists()
    finally:
        os.chdir(cwd)
    assert "__use_yte__" in capsys.readouterr().err

    run = snakemake(workflow_dir, "--configfile", "yte.yaml", "-n")
    assert run.returncode == 1 and "Snakemake evaluated the template while reading --configfile" in run.stderr


def test_config_campaign_runs_exactly_that_campaign(workflow_dir):
    (workflow_dir / "other.yaml").write_text(yaml.safe_dump(
        {"campaign_name": "other", "model": "lem-tiny-llama", "grid": {"backends": ["pytorch"], "shared": {"pytorch.batch_size": 4}},
         "execution": {"cycles": 1}}))  # fmt: skip
    dry = snakemake(workflow_dir, "--config", "campaign=other.yaml", "num_samples=8", "-n")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert "Campaign 'other': 1 experiments x 1 cycles" in out and job_counts(out)["measure"] == 1
    assert "results/default" not in out and "bs8" not in out
    both = snakemake(workflow_dir, "--configfile", "other.yaml", "--config", "campaign=other.yaml", "-n")
    assert both.returncode == 1 and "either as --configfile or as --config campaign=FILE" in both.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("campaign_name: t\nmodel: lem-tiny-llama\nmodel: x\ngrid: {backends: [pytorch]}\n", "has key 'model' twice in one mapping (lines 2 and 3)"),
        ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n"
                                                          for p, c in zip("abcdefg", "bcdefgh")), "once its aliases are expanded"),
        (b"campaign_name: caf\xe9\n", "is not UTF-8 text"),
    ],
    ids=["duplicate-key", "alias-bomb", "latin-1"],
)  # fmt: skip
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
