"""The lem command: validate, results, compare, datasets, doctor, run."""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml

from conftest import tiny_experiment, write_cycles
from llenergymeasure.aggregate import write_aggregated_all
from llenergymeasure.cli import main, welch
from llenergymeasure.measure import run_experiment
from llenergymeasure.results import write_json_atomic


@pytest.fixture(scope="module")
def campaign_dir(tiny_model, tmp_path_factory):
    """A campaign file plus finished results for two experiments (3 cycles each, energies chosen)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "campaign_name": "cli",
                "model": "lem-tiny-llama",
                "results_dir": str(root / "results"),
                "grid": {
                    "backends": ["pytorch", "tensorrt"],
                    "shared": {"fp_precision": "float32"},
                    "backend_overrides": {"pytorch": {"batch_size": [1, 4]}},
                },
                "execution": {"cycles": 3, "config_gap_s": 10, "cycle_gap_s": 20},
            }
        )
    )
    template = run_experiment(tiny_experiment(warmup={"enabled": False}), "t", 1, tiny_model, None)
    res = root / "results" / "cli"
    raw, names = {}, {}
    for exp_id, name, energies in (
        ("exp-aaa", "small-batch", [10.0, 10.5, 9.5]),
        ("exp-bbb", "big-batch", [5.0, 5.2, 4.8]),
    ):
        paths = []
        for cycle, e in enumerate(energies, 1):
            r = copy.deepcopy(template)
            r.update(experiment_id=exp_id, cycle=cycle)
            r["energy"]["total"]["gross_energy_j"] = e
            r["efficiency"]["j_per_output_token"] = e / r["tokens"]["output_tokens"]
            r["phases_s"]["job_total_s"] = 12.0
            p = res / "raw" / exp_id / f"cycle_{cycle}.json"
            write_json_atomic(p, r, "raw_result")
            paths.append(str(p))
        raw[exp_id], names[exp_id] = paths, name
    write_aggregated_all(raw, names, str(res / "aggregated"), str(res / "summary.csv"), 0.1, 0.95)
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_preview(campaign_dir, capsys):
    code, out, _ = run(capsys, "validate", str(campaign_dir / "c.yaml"))
    assert code == 0
    assert (
        "2 experiments x 3 cycles" in out
        and "dropped tensorrt-lem-tiny-llama: TensorRT-LLM builds float16/bfloat16 engines" in out
    )
    assert "6 of 6 measurements to run" in out and "median of this campaign's finished jobs" in out
    code, out, _ = run(capsys, "--json", "validate", str(campaign_dir / "c.yaml"))
    data = json.loads(out)
    assert len(data["experiments"]) == 2 and data["duration"]["jobs_to_run"] == 6
    # 6 jobs x 12 s (median of finished jobs) + 3 config gaps x 10 s + 2 cycle gaps x 20 s
    assert data["duration"]["estimated_s"] == pytest.approx(6 * 12 + 3 * 10 + 2 * 20)


def test_validate_bad_campaign_names_each_problem_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaign_name: x\ngrid: {backends: [pytorch]}\nexecution: {structure: zigzag}\n")
    code, _out, err = run(capsys, "validate", str(bad))
    assert code == 1 and err.splitlines() == [
        f"lem validate: {bad}: key 'execution.structure' = 'zigzag' is not allowed; allowed: interleaved, shuffled, grouped",
        f"lem validate: {bad}: grid: no model: set 'model' or 'grid.models'",
    ]


def test_results_sorting_and_columns(campaign_dir, capsys):
    c = str(campaign_dir / "c.yaml")
    code, out, _ = run(capsys, "results", c, "--sort", "energy_j_mean")
    lines = out.splitlines()
    assert code == 0 and lines[2].startswith("big-batch") and lines[3].startswith("small-batch")
    _, out, _ = run(
        capsys, "results", c, "--sort", "energy_j_mean", "--desc", "--columns", "experiment_id,energy_j_mean"
    )
    assert out.splitlines()[2].startswith("exp-aaa") and "config_name" not in out
    code, _, err = run(capsys, "results", c, "--sort", "energy_mean")
    assert code == 1 and "did you mean 'energy_j_mean'" in err
    monkey = run(capsys, "--json", "results", c)
    assert len(json.loads(monkey[1])) == 2


def test_compare_with_significance(campaign_dir, capsys):
    c = str(campaign_dir / "c.yaml")
    code, out, _ = run(capsys, "compare", "small", "big", c)
    assert code == 0 and "energy_j" in out and "-50.0%" in out
    _, out, _ = run(capsys, "--json", "compare", "exp-aaa", "exp-bbb", c)
    data = json.loads(out)
    energy = next(m for m in data["metrics"] if m["metric"] == "energy_j")
    assert energy["difference"] == pytest.approx(-5.0) and energy["significant"] is True
    code, _, err = run(capsys, "compare", "exp-", "exp-bbb", c)
    assert code == 1 and "experiment 'exp-' is ambiguous: 2 experiments match" in err


@pytest.fixture(scope="module")
def methods_dir(campaign_dir, tmp_path_factory):
    """Finished results of four experiments (3 cycles each), cloned from a real raw result: two whose CPU energy is
    the TDP estimate (flagged energy_estimated, cpu_tdp_unknown, ram_energy_unavailable) and two read from a RAPL
    counter (no flag)."""
    root = tmp_path_factory.mktemp("methods")
    campaign = yaml.safe_load((campaign_dir / "c.yaml").read_text())
    campaign.update(campaign_name="methods", results_dir=str(root / "results"))
    (root / "c.yaml").write_text(yaml.safe_dump(campaign))
    template = json.loads((campaign_dir / "results" / "cli" / "raw" / "exp-aaa" / "cycle_1.json").read_text())
    estimated = copy.deepcopy(template)
    estimated["energy"]["total"].update(method="cpu:estimate_tdp", includes_estimate=True)
    estimated["energy"]["components"][0]["method"] = "estimate_tdp"
    estimated["flags"] = [
        {"code": "energy_estimated", "message": "cpu energy is an estimate (estimate_tdp), not a measurement"},
        {"code": "cpu_tdp_unknown", "message": "cpu: TDP of the CPU part unknown"},
        {"code": "ram_energy_unavailable", "message": "no RAPL dram domain; RAM energy not measured"},
    ]
    measured = copy.deepcopy(estimated)
    measured["energy"]["total"].update(method="cpu:rapl", includes_estimate=False)
    measured["energy"]["components"][0]["method"] = "rapl"
    measured["flags"] = []
    res = root / "results" / "methods"
    raw, names = {}, {}
    for exp_id, name, base, energies in (
        ("exp-est1", "cpu-estimate-1", estimated, [10.0, 10.5, 9.5]),
        ("exp-est2", "cpu-estimate-2", estimated, [5.0, 5.2, 4.8]),
        ("exp-rapl1", "cpu-rapl-1", measured, [8.0, 8.2, 7.8]),
        ("exp-rapl2", "cpu-rapl-2", measured, [6.0, 6.1, 5.9]),
    ):
        raw[exp_id], names[exp_id] = write_cycles(res, base, energies, exp_id), name
    write_aggregated_all(raw, names, str(res / "aggregated"), str(res / "summary.csv"), 0.1, 0.95)
    return root


def test_results_say_whether_energy_is_measured_or_estimated_and_list_the_flags(methods_dir, capsys):
    c = str(methods_dir / "c.yaml")
    code, out, _ = run(capsys, "results", c)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[-3:] == ["energy_method", "cv_flag", "flags"]
    rows = {line.split()[0]: line.rstrip() for line in lines[2:6]}
    for name in ("cpu-estimate-1", "cpu-estimate-2"):
        assert "  estimated (cpu:estimate_tdp)  " in rows[name]
        assert rows[name].endswith("  3: cpu_tdp_unknown, energy_estimated, +1")  # compact: a count, what fits
    for name in ("cpu-rapl-1", "cpu-rapl-2"):
        assert "  measured (cpu:rapl)  " in rows[name] and rows[name].endswith("  -")
    assert lines[6:] == [
        "energy_method: measured = a device's energy counter; estimated = a model (TDP x busy CPU time, CodeCarbon)",
        "flags: how many, then the codes (all of them: --columns experiment_id,flags); meanings: README.md, flag table",
    ]
    # named columns: every code
    code, out, _ = run(capsys, "results", c, "--columns", "experiment_id,energy_method,flags")
    est1 = next(line for line in out.splitlines() if line.startswith("exp-est1 "))
    assert est1.split(None, 1)[1].rstrip() == (
        "estimated (cpu:estimate_tdp)  3: cpu_tdp_unknown, energy_estimated, ram_energy_unavailable"
    )
    # JSON keeps the summary's own values
    _, out, _ = run(capsys, "--json", "results", c)
    data = {r["experiment_id"]: r for r in json.loads(out)}
    assert data["exp-est1"]["energy_method"] == "cpu:estimate_tdp" and data["exp-est1"]["includes_estimate"] is True
    assert data["exp-est1"]["flags"] == "cpu_tdp_unknown;energy_estimated;ram_energy_unavailable"
    # without those columns, no legend
    _, out, _ = run(capsys, "results", c, "--columns", "experiment_id,energy_j_mean")
    assert "README" not in out and len(out.splitlines()) == 6


def test_flags_cell_counts_the_codes_and_keeps_its_width():
    from llenergymeasure.cli import FLAGS_CELL_WIDTH, flags_cell

    codes = "cold_start_in_window;cpu_shared;cpu_tdp_unknown;energy_estimated;high_cv_across_cycles"
    cell = flags_cell(codes)
    assert cell == "5: cold_start_in_window, cpu_shared, +3" and len(cell) <= FLAGS_CELL_WIDTH
    assert flags_cell(codes, None) == "5: " + codes.replace(";", ", ")
    assert flags_cell("") == flags_cell(None) == flags_cell([]) == "-"
    assert flags_cell(["energy_estimated"]) == "1: energy_estimated"


def test_compare_shows_both_energy_methods_and_flags_and_warns_on_estimates(methods_dir, capsys):
    c = str(methods_dir / "c.yaml")
    code, out, _ = run(capsys, "compare", "cpu-estimate-1", "cpu-rapl-2", c)
    lines = out.splitlines()
    assert code == 0 and lines[:4] == [
        "A = cpu-estimate-1 (exp-est1, 3 cycles)",
        "    energy estimated (cpu:estimate_tdp); flags 3: cpu_tdp_unknown, energy_estimated, ram_energy_unavailable",
        "B = cpu-rapl-2 (exp-rapl2, 3 cycles)",
        "    energy measured (cpu:rapl); flags -",
    ]
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: A's energy is estimated (cpu:estimate_tdp) and B's measured (cpu:rapl): an estimate set against "
        "a measurement, the energy difference is not a measured one"
    ]
    _, out, _ = run(capsys, "compare", "cpu-estimate-1", "cpu-estimate-2", c)
    assert out.splitlines()[-1] == (
        "warning: the energy of both is estimated (cpu:estimate_tdp), not measured: the energy difference is one "
        "between estimates"
    )
    _, out, _ = run(capsys, "compare", "cpu-rapl-1", "cpu-rapl-2", c)
    assert "warning" not in out and "    energy measured (cpu:rapl); flags -" in out
    _, out, _ = run(capsys, "--json", "compare", "exp-est2", "exp-rapl1", c)
    data = json.loads(out)
    assert data["a"]["energy"] == "estimated (cpu:estimate_tdp)" and data["a"]["includes_estimate"] is True
    assert data["a"]["flags"] == {"cpu_tdp_unknown": 3, "energy_estimated": 3, "ram_energy_unavailable": 3}
    assert data["b"]["energy"] == "measured (cpu:rapl)" and data["b"]["flags"] == {}
    assert data["warning"].startswith("A's energy is estimated (cpu:estimate_tdp) and B's measured (cpu:rapl)")


def test_welch():
    same = welch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["difference"] == 0 and same["significant"] is False
    far = welch([1.0, 1.1, 0.9], [5.0, 5.1, 4.9])
    assert far["significant"] is True and far["ci_low"] > 0
    assert welch([1.0], [2.0, 3.0])["significant"] is None


def test_welch_relative_difference_has_the_sign_of_the_difference():
    """B - A = +10 J against a negative A (a net energy below the idle baseline) is +128 %, not -128 %."""
    up = welch([-7.6, -8.0, -7.8], [2.2, 2.2, 2.2])
    assert up["difference"] == pytest.approx(10.0) and up["relative"] == pytest.approx(10.0 / 7.8)
    down = welch([-7.8, -7.8], [-17.8, -17.8])  # no spread: the other branch
    assert down["difference"] == pytest.approx(-10.0) and down["relative"] == pytest.approx(-10.0 / 7.8)
    assert welch([0.0, 0.0], [1.0, 1.0])["relative"] is None


def test_datasets_and_doctor(capsys):
    code, out, _ = run(capsys, "--json", "datasets")
    names = [d["name"] for d in json.loads(out)]
    assert (
        code == 0 and names[0] == "builtin" and {"alpaca", "gsm8k", "mmlu", "sharegpt", "ai-energy-score"} <= set(names)
    )
    code, out, _ = run(capsys, "--json", "doctor")
    report = json.loads(out)
    assert code == 0 and report["torch"]["version"] and set(report["engines"]) == {"vllm", "tensorrt_llm"}
    assert report["energy_sources"]["cpu"] in ("rapl", "estimate_tdp (RAPL not readable here)")
    assert report["cpu"]["estimate"]["watts_per_thread"] > 0 and report["cpu"]["estimate"]["threads_usable"] >= 1
    assert "HF_TOKEN" in report["hub"] and report["hub"]["HF_TOKEN"] in (None, "set")
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "energy: CPU" in out and "W per busy hardware thread" in out


def test_doctor_reports_runtime_and_pulled_images(tmp_path, monkeypatch, capsys):
    import hashlib

    from conftest import REPO

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{REPO / 'tests' / 'fakes' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "campaign.yaml").write_text(
        "campaign_name: x\ncontainers: {vllm: docker://example.org/v:1}\n"
    )
    cache = tmp_path / ".snakemake" / "singularity"
    cache.mkdir(parents=True)
    (cache / (hashlib.md5(b"docker://example.org/v:1").hexdigest() + ".simg")).write_text("{}")
    code, out, _ = run(capsys, "--json", "doctor")
    report = json.loads(out)["containers"]
    assert code == 0 and report["runtime"].startswith("apptainer version")
    assert report["images"]["vllm"] == {"uri": "docker://example.org/v:1", "cached": True}
    assert report["images"]["tensorrt"]["cached"] is False


@pytest.mark.parametrize(
    "uri", ["docker://vllm/vllm-openai:v0.11.0", "docker://nvcr.io/nvidia/tensorrt-llm/release:1.0.0"]
)
def test_pulled_image_path_is_snakemakes(uri):
    """lem doctor looks for a pulled image where Snakemake's own image class puts it."""
    from types import SimpleNamespace

    from snakemake.deployment.singularity import Image

    from llenergymeasure.cli import SNAKEMAKE_IMAGE_CACHE, pulled_image

    dag = SimpleNamespace(
        workflow=SimpleNamespace(persistence=SimpleNamespace(container_img_path=str(SNAKEMAKE_IMAGE_CACHE)))
    )
    assert str(pulled_image(uri)) == Image(uri, dag, is_containerized=False).path


def test_json_from_environment(monkeypatch, capsys):
    monkeypatch.setenv("LLM_ENERGY_JSON_OUTPUT", "1")
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and isinstance(json.loads(out), list)


def test_run_subcommand(tiny_model, capsys, isolated_cache):
    code, out, _ = run(
        capsys,
        "run",
        "--set",
        f"model_name={tiny_model}",
        "--set",
        "num_input_prompts=2",
        "--set",
        "max_output_tokens=4",
        "--set",
        "fp_precision=float32",
        "--set",
        "warmup.enabled=false",
        "--set",
        "baseline.duration_s=1",
        "--quiet",
    )
    assert code == 0 and json.loads(out[out.index("{") :])["output_tokens"] > 0


def test_run_states_a_missing_engine_in_one_line(tmp_path, capsys, tiny_model):
    exp = tmp_path / "v.yaml"
    exp.write_text(f"model_name: {tiny_model}\nbackend: vllm\n")
    code, _, err = run(capsys, "run", str(exp))
    assert code == 1 and err.count("\n") == 1
    assert "vllm is not importable here" in err and "--sdm apptainer" in err


def _bad_file(path, kind: str, summary_header: str) -> None:
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x7fELF\x02\x01\x00\x00\xff\xfe\x00binary")
    elif kind == "random-csv":
        path.write_text("city,population\nParis,2100000\nLyon,520000\n")
    elif kind == "truncated-row":
        path.write_text(summary_header + "\nexp-aaa,small-batch,pytorch,lem-tiny")
    elif kind == "garbage-json":
        path.write_text('{"campaign_name": "x", "grid": [1, 2')
    # "missing": nothing written


BAD_KINDS = ["directory", "binary", "random-csv", "truncated-row", "missing", "garbage-json"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", ["results --summary", "results", "validate", "compare", "run"])
def test_bad_files_are_one_line_and_exit_1(campaign_dir, tmp_path, capsys, command, kind):
    header = (campaign_dir / "results" / "cli" / "summary.csv").read_text().splitlines()[0]
    bad = tmp_path / "bad.file"
    _bad_file(bad, kind, header)
    argv = {
        "results --summary": ["results", "--summary", str(bad)],
        "results": ["results", str(bad)],
        "validate": ["validate", str(bad)],
        "compare": ["compare", "a", "b", str(bad)],
        "run": ["run", str(bad)],
    }[command]
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(bad) in err or "bad.file" in err, err


def test_compare_with_a_damaged_aggregated_file_is_one_line(campaign_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(campaign_dir, root)
    (root / "c.yaml").write_text((campaign_dir / "c.yaml").read_text().replace(str(campaign_dir), str(root)))
    damaged = root / "results" / "cli" / "aggregated" / "exp-aaa.json"
    damaged.write_text(damaged.read_text()[:300])
    code, _, err = run(capsys, "compare", "exp-aaa", "exp-bbb", str(root / "c.yaml"))
    assert code == 1 and err.count("\n") == 1 and "exp-aaa.json is not complete JSON" in err


def test_compare_matches_the_parts_of_an_id(campaign_dir, tmp_path, capsys):
    """`lem compare bs1 bs8` takes what a user reads in the ids; an ambiguous name lists its candidates."""
    import shutil

    root = tmp_path / "ids"
    shutil.copytree(campaign_dir, root)
    (root / "c.yaml").write_text((campaign_dir / "c.yaml").read_text().replace(str(campaign_dir), str(root)))
    agg_dir = root / "results" / "cli" / "aggregated"
    template = json.loads((agg_dir / "exp-aaa.json").read_text())
    for p in agg_dir.glob("*.json"):
        p.unlink()
    (root / "results" / "cli" / "summary.csv").unlink()
    for bs, digest in ((1, "1111111111"), (8, "8888888888"), (16, "1616161616")):
        doc = {
            **template,
            "experiment_id": f"pytorch-lem-tiny-llama-fp32-bs{bs}-{digest}",
            "config_name": f"batch-{bs}",
        }
        (agg_dir / f"{doc['experiment_id']}.json").write_text(json.dumps(doc))
    code, out, err = run(capsys, "--json", "compare", "bs1", "bs8", str(root / "c.yaml"))
    assert code == 0, err
    data = json.loads(out)
    assert data["a"]["experiment_id"].endswith("-bs1-1111111111") and data["b"]["experiment_id"].endswith(
        "-bs8-8888888888"
    )
    code, _, err = run(capsys, "compare", "fp32", "bs8", str(root / "c.yaml"))
    assert code == 1 and err.count("\n") == 1 and "experiment 'fp32' is ambiguous: 3 experiments match" in err
    assert "-bs16-1616161616 (batch-16)" in err and "-bs1-1111111111 (batch-1)" in err
    code, _, err = run(capsys, "compare", "bs4", "bs8", str(root / "c.yaml"))
    assert (
        code == 1 and "experiment 'bs4': no aggregated result matches; the campaign has:" in err and "(batch-8)" in err
    )


def test_run_refuses_to_replace_an_existing_output(tmp_path, capsys):
    out = tmp_path / "raw.json"
    out.write_text("{}")
    code, _, err = run(capsys, "run", "--set", "model_name=lem-tiny-llama", "--output", str(out))
    assert code == 1 and err.count("\n") == 1 and "already exists: a finished measurement is never replaced" in err
    assert out.read_text() == "{}"


def test_the_example_experiment_runs(tmp_path, capsys):
    """The shipped example for `lem run` is a valid experiment and measures (shortened here with --set)."""
    from conftest import REPO

    example = REPO / "config" / "experiments" / "example.yaml"
    code, _out, err = run(
        capsys,
        "run",
        str(example),
        "--set",
        "num_input_prompts=2",
        "--set",
        "max_output_tokens=4",
        "--set",
        "min_output_tokens=4",
        "--set",
        "warmup.mode=cv",
        "--set",
        "warmup.max_prompts=1",
        "--set",
        "baseline.duration_s=1",
        "--output",
        str(tmp_path / "raw.json"),
        "--quiet",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "raw.json").read_text())
    assert result["config"]["device"] == "cpu" and result["config"]["fp_precision"] == "float32"
    assert result["tokens"]["output_tokens"] == 2 * 4


def test_lem_run_reads_a_former_spelling_of_seconds_over_the_files_value(capsys):
    """--set baseline.duration_sec=2 on a file that spells it duration_s: the value given wins, with a note, and
    the experiment is the one the current spelling gives."""
    from conftest import REPO

    example = str(REPO / "config" / "experiments" / "example.yaml")
    code, old, err = run(capsys, "run", example, "--set", "baseline.duration_sec=2", "--dry-run", "--json")
    assert code == 0, err
    code, new, _ = run(capsys, "run", example, "--set", "baseline.duration_s=2", "--dry-run", "--json")
    old, new = json.loads(old), json.loads(new)
    assert old["experiment_id"] == new["experiment_id"] and old["params"]["baseline"] == {"duration_s": 2}
    assert any(
        "--set 'baseline.duration_sec' is the former spelling of 'baseline.duration_s'" in n for n in old["notes"]
    )
    assert not any("former spelling" in n for n in new["notes"])


@pytest.mark.parametrize("command", [["validate"], ["results"], ["compare", "a", "b"]])
def test_the_campaign_argument_says_what_it_is(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "campaign the campaign file (default: config/campaign.yaml" in usage


@pytest.mark.parametrize("command", [["validate"], ["results"], ["compare", "a", "b"]])
def test_run_from_a_subdirectory_lem_says_where_to_run(command, monkeypatch, capsys):
    from conftest import REPO

    monkeypatch.chdir(REPO / "tests" / "data")
    code, out, err = run(capsys, *command)
    assert (
        code == 1
        and not out
        and err
        == (
            f"lem {command[0]}: no config/campaign.yaml in {REPO / 'tests' / 'data'}: lem runs from the repository "
            f"root (cd {REPO}), or name the campaign file\n"
        )
    )
