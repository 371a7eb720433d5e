"""The README's "Your first GPU campaign", followed as written: its campaign block is the shipped file, every
command names that file, `lem validate` accepts it as it is, and on this GPU-less machine the same campaign with the
tiny model on the CPU in place of the GPU model runs through the workflow and `lem results` reads it back."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from conftest import REPO, snakemake
from llenergymeasure.cli import main

pytestmark = pytest.mark.workflow

CAMPAIGN = "config/examples/first-gpu.yaml"


def section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Your first GPU campaign\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


def commands() -> list[list[str]]:
    """Every command of the section's bash blocks, comments dropped, as argument lists."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(shlex.split(line))
    return out


def test_the_readme_shows_the_shipped_campaign_and_its_commands_name_it():
    (shown,) = blocks("yaml")
    assert yaml.safe_load(shown) == yaml.safe_load((REPO / CAMPAIGN).read_text(encoding="utf-8"))
    cmds = commands()
    assert [c[0] for c in cmds] == [
        ".venv/bin/lem",
        ".venv/bin/snakemake",
        ".venv/bin/lem",
        ".venv/bin/pip",
        ".venv/bin/snakemake",
    ]
    for cmd in cmds:
        if cmd[0].endswith(("lem", "snakemake")):
            assert CAMPAIGN in cmd or f"campaign={CAMPAIGN}" in cmd, cmd
    profile = next(c[c.index("--profile") + 1] for c in cmds if "--profile" in c)
    assert (REPO / profile / "config.yaml").is_file()


def test_lem_validate_accepts_the_campaign_as_written(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    (validate,) = [c for c in commands() if c[1] == "validate"]
    assert main(validate[1:]) == 0
    out = capsys.readouterr().out
    assert "Campaign 'first-gpu' is valid: 3 experiments x 5 cycles (interleaved)" in out


def test_the_campaign_runs_on_the_cpu_with_the_tiny_model_in_place_of_the_gpu_model(workflow_dir, capsys, monkeypatch):
    """The README's run and read commands, on a stand-in of the campaign: the same grid and order with the tiny model
    on the CPU (float32), fewer prompts and tokens, one cycle and no gaps."""
    campaign = yaml.safe_load((REPO / CAMPAIGN).read_text(encoding="utf-8"))
    shared = campaign["grid"]["shared"]
    campaign["model"] = "lem-tiny-llama"
    campaign["num_samples"] = 8
    shared.update(
        {
            "device": "cpu",
            "fp_precision": "float32",
            "max_input_tokens": 32,
            "max_output_tokens": 8,
            "min_output_tokens": 8,
            "baseline.duration_s": 1,
            "energy.min_window_s": 0.5,
            "warmup.max_prompts": 3,
            "warmup.min_prompts": 3,
        }
    )
    del shared["gpus"]
    campaign["execution"].update({"cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0})
    stand_in = workflow_dir / CAMPAIGN
    stand_in.write_text(yaml.safe_dump(campaign, sort_keys=False), encoding="utf-8")

    run_cmd, read_cmd = [
        c for c in commands() if c[1] != "validate" and "--profile" not in c and c[0] != ".venv/bin/pip"
    ]
    assert run_cmd[1:] == ["--cores", "1", "--config", f"campaign={CAMPAIGN}"]
    run = snakemake(workflow_dir, *run_cmd[3:], timeout=900)  # snakemake() adds --cores 1
    assert run.returncode == 0, run.stderr[-3000:]
    summary = workflow_dir / "results" / "first-gpu" / "summary.csv"
    assert summary.is_file()

    monkeypatch.chdir(workflow_dir)
    assert main(read_cmd[1:]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("pytorch-lem-tiny-llama-batch_size")]) == 3, out
