"""Backend images under Snakemake's --sdm apptainer, with a test double of the `apptainer` command
(tests/fakes/bin/apptainer): each backend's jobs run in its image, the command line is Snakemake's, jobs complete."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SMALL
from llenergymeasure.record.layout import Layout
from llenergymeasure.results import read_result

pytestmark = pytest.mark.workflow

FAKE_BIN = REPO / "tests" / "fakes" / "bin"
IMAGES = {
    "pytorch": "docker://example.org/lem/pytorch:1",
    "vllm": "docker://vllm/vllm-openai:v0.0.0-test",
    "tensorrt": "docker://nvcr.io/nvidia/tensorrt-llm/release:0.0.0-test",
}
# the workflow tests' small workload, on each backend's own device and precision
SHARED = {k: v for k, v in SMALL["grid"]["shared"].items() if k not in ("fp_precision", "device")}


def campaign(backends: list[str], **extra) -> dict:
    return {
        "campaign_name": "images",
        "model": "lem-tiny-llama",
        "dataset": "builtin",
        "num_samples": 4,
        "grid": {"backends": backends, "shared": SHARED},
        "execution": {"cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "containers": IMAGES,
        **extra,
    }


def run_with_double(
    workflow_dir: Path, data: dict, *args: str, sdm: tuple[str, ...] = ("--sdm", "apptainer")
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    (workflow_dir / "c.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    calls = workflow_dir / "apptainer-calls.jsonl"
    # the double runs the job's interpreter on the host: this one stands in for the image's
    path = os.pathsep.join([str(FAKE_BIN), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "LEM_FAKE_APPTAINER_LOG": str(calls), "LEM_FAKE_IMAGE_PYTHON": sys.executable}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--configfile",
            "c.yaml",
            *sdm,
            "--apptainer-args=--nv",
            *args,
        ],
        cwd=workflow_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return run, log


def image_file(uri: str) -> str:
    return hashlib.md5(uri.encode()).hexdigest() + ".simg"


def test_mixed_backends_run_each_in_its_image(workflow_dir):
    for engine in ("vllm", "tensorrt_llm"):
        if not (REPO / "tests" / "fakes" / "engines" / engine).is_dir():
            pytest.fail(f"test fake of {engine} missing")
    run, log = run_with_double(workflow_dir, campaign(["pytorch", "vllm", "tensorrt"]))
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]

    assert ["--version"] in [c["argv"] for c in log]
    pulls = [c for c in log if c["argv"][:1] == ["pull"]]
    assert sorted(c["argv"][-1] for c in pulls) == sorted(IMAGES.values())  # one pull per image, none twice
    for c in pulls:
        assert c["argv"][c["argv"].index("--name") + 1] == image_file(c["argv"][-1])
        assert Path(c["cwd"]).name == "singularity"  # Snakemake's image cache, .snakemake/singularity
    execs = [c["argv"] for c in log if c["argv"][:1] == ["exec"]]
    assert len(execs) == 3  # the three measurements, nothing else: only the measurement rule has a container
    for argv in execs:
        assert "--nv" in argv  # --apptainer-args reach every job
        assert argv[argv.index("--home") + 1] == str(workflow_dir)
        assert argv[-2] == "-c" and ".snakemake/scripts/" in argv[-1]  # the rule's script, with Snakemake's preamble

    root = workflow_dir / "results" / "images"
    raws = [read_result(p, "raw_result") for p in Layout(root).raw_files()]
    assert sorted(r["backend"] for r in raws) == ["pytorch", "tensorrt", "vllm"]
    for r in raws:
        image = r["environment"]["container_image"]
        assert r["environment"]["container"] == "apptainer"
        assert image["uri"] == IMAGES[r["backend"]]
        assert Path(image["file"]).name == image_file(IMAGES[r["backend"]])
        assert r["tokens"]["output_tokens"] > 0
    engines = {r["backend"]: r["backend_version"] for r in raws}
    assert "vllm" in engines["vllm"] and "tensorrt_llm" in engines["tensorrt"]
    assert (root / "summary.csv").exists()


def test_an_engine_missing_from_its_image_fails_that_job_only(workflow_dir):
    images = {**IMAGES, "vllm": "docker://example.org/not-vllm:1"}  # an image without the engine
    run, _ = run_with_double(workflow_dir, campaign(["pytorch", "vllm"], containers=images))
    assert run.returncode != 0
    root = workflow_dir / "results" / "images"
    raws = [read_result(p, "raw_result") for p in Layout(root).raw_files()]
    assert [r["backend"] for r in raws] == ["pytorch"]  # the other experiment's result is complete
    logs = list((root / "logs" / "measure").glob("vllm-*/cycle_1.log"))
    assert logs and "vllm is not importable" in logs[0].read_text()
    failed = json.loads((root / "failures.json").read_text())["failures"]  # what completed was aggregated
    assert [f["experiment_id"].split("-")[0] for f in failed] == ["vllm"] and "vllm is not importable" in failed[0][
        "error"
    ]


# the current spelling, the legacy alias
@pytest.mark.parametrize("sdm", [("--sdm", "apptainer"), ("--use-singularity",)])
def test_dry_run_names_each_jobs_image(workflow_dir, sdm):
    run, log = run_with_double(workflow_dir, campaign(["pytorch"]), "-n", sdm=sdm)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "docker://example.org/lem/pytorch:1" in run.stdout + run.stderr
    assert not [c for c in log if c["argv"][:1] in (["pull"], ["exec"])]  # a dry run pulls and runs nothing


def test_measurement_step_imports_only_what_engine_images_have(tiny_model, tmp_path):
    """Inside a stock engine image there is no jsonschema, httpx, pandas, datasets, codecarbon or snakemake
    (besides what Snakemake mounts for its own preamble): the measurement must run without them."""
    code = f"""
import sys
for name in ("jsonschema", "fastjsonschema", "httpx", "pandas", "datasets", "codecarbon", "matplotlib", "snakemake"):
    sys.modules[name] = None  # import fails, importlib.util.find_spec says "not installed"
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import tiny_experiment
from llenergymeasure.jobs import measure
from llenergymeasure.campaign import sparse_config
cfg = tiny_experiment()
measure(sparse_config(cfg), "pytorch-x", 1, {tiny_model!r}, {str(tmp_path / "raw.json")!r}, {str(tmp_path / "m.log")!r},
        {{"results_root": {str(tmp_path)!r}}})
print("ok")
"""
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "LLM_ENERGY_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert run.returncode == 0 and "ok" in run.stdout, (run.stdout + run.stderr)[-3000:] + (
        tmp_path / "m.log"
    ).read_text()[-3000:]
    assert json.loads((tmp_path / "raw.json").read_text())["tokens"]["output_tokens"] > 0


def test_definition_files_build_on_the_default_images():
    """envs/<backend>.def adds our needs on top of the campaign's default image for that backend (pytorch's
    default is vLLM's image, which ships PyTorch and transformers; its .def starts from PyTorch's own image)."""
    from llenergymeasure.config import load_schema

    defaults = {k: v["default"] for k, v in load_schema("campaign")["properties"]["containers"]["properties"].items()}
    for backend in ("vllm", "tensorrt"):
        text = (REPO / "envs" / f"{backend}.def").read_text()
        base = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("From:"))
        assert "Bootstrap: docker" in text and defaults[backend] == f"docker://{base}"
        assert "nvidia-ml-py" in text
    assert defaults["pytorch"] == defaults["vllm"]
    assert "transformers" in (REPO / "envs" / "pytorch.def").read_text()


@pytest.mark.parametrize("backend", ["pytorch", "vllm", "tensorrt"])
def test_every_definition_provides_what_snakemake_and_the_options_need(backend, tmp_path):
    """Snakemake runs a rule's script as `python` in the container (vLLM's image has only python3), and the PyTorch
    backend's options need BitsAndBytes (load_in_4bit/8bit) and datasets (Hugging Face prompt sets)."""
    text = (REPO / "envs" / f"{backend}.def").read_text()
    post = text.split("%post", 1)[1].split("\n%", 1)[0]
    # run the definition's python provision in a sandbox folder that has python3 only, as vLLM's image does
    import shutil

    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    bin_dir.mkdir()
    tools.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (tools / "ln").symlink_to(shutil.which("ln"))
    line = next(ln.strip() for ln in post.splitlines() if "command -v python " in ln)
    line = line.replace("/usr/local/bin/python", str(bin_dir / "python"))
    env = {"PATH": os.pathsep.join([str(bin_dir), str(tools)])}
    sh = shutil.which("sh")
    assert subprocess.run([sh, "-c", "command -v python"], env=env, capture_output=True, check=False).returncode != 0
    subprocess.run([sh, "-c", line], env=env, check=True)
    done = subprocess.run([sh, "-c", "python -c 'print(42)'"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "42"
    if backend in ("pytorch", "vllm"):
        assert "bitsandbytes" in post
    if backend == "pytorch":
        assert "datasets" in post


def test_tensorrt_measurements_survive_the_engines_spawned_worker(workflow_dir):
    """tensorrt.single_process = false: TensorRT-LLM starts its executor in an MPI worker, which re-runs the job's
    main file (the measurement script, as Snakemake ran it); the job must still complete."""
    data = campaign(["tensorrt"])
    data["grid"]["backend_overrides"] = {"tensorrt": {"single_process": False}}
    run, _ = run_with_double(workflow_dir, data)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    (raw,) = [read_result(p, "raw_result") for p in Layout(workflow_dir / "results" / "images").raw_files()]
    assert raw["backend"] == "tensorrt" and raw["model"]["details"]["environment_set"] == {
        "TLLM_WORKER_USE_SINGLE_PROCESS": "0"
    }


def test_the_double_has_no_python_in_vllms_official_image_until_the_workflow_names_one(tmp_path):
    """vLLM's official image names its interpreter python3 only, so Snakemake's `python <script>` fails there; the
    workflow's envs/bin, prepended to the image's PATH, makes it run."""
    from llenergymeasure.workflow import container_path

    image = tmp_path / "vllm.simg"
    image.write_text(json.dumps({"uri": "docker://vllm/vllm-openai:v0.32.0"}))
    env = {k: v for k, v in os.environ.items() if not k.endswith("PREPEND_PATH")}
    env["LEM_FAKE_IMAGE_PYTHON"] = sys.executable
    call = [
        str(FAKE_BIN / "apptainer"),
        "exec",
        "--home",
        str(tmp_path),
        str(image),
        "bash",
        "-c",
        "python -c 'print(7)'",
    ]
    bare = subprocess.run(call, capture_output=True, text=True, env=env, check=False)
    assert bare.returncode == 127 and "python: command not found" in bare.stderr
    shim = container_path(REPO, env)
    assert env["APPTAINERENV_PREPEND_PATH"] == shim == str(REPO / "envs" / "bin")
    assert container_path(REPO, env) == shim and env["APPTAINERENV_PREPEND_PATH"] == shim  # added once
    done = subprocess.run(call, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "7", done.stderr
    mine = {"APPTAINERENV_PREPEND_PATH": "/opt/mine"}
    container_path(REPO, mine)
    assert mine["APPTAINERENV_PREPEND_PATH"] == f"{shim}:/opt/mine"  # a user's own folder stays, after it


def test_the_default_images_run_as_they_are(workflow_dir):
    """No containers key: PyTorch's and vLLM's jobs run in vLLM's official image, which has python3 only."""
    data = campaign(["pytorch", "vllm"])
    del data["containers"]
    run, log = run_with_double(workflow_dir, data)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    execs = [c["argv"] for c in log if c["argv"][:1] == ["exec"]]
    assert len(execs) == 2 and all(image_file("docker://vllm/vllm-openai:v0.32.0") in " ".join(a) for a in execs)
    raws = [read_result(p, "raw_result") for p in Layout(workflow_dir / "results" / "images").raw_files()]
    assert sorted(r["backend"] for r in raws) == ["pytorch", "vllm"]
    assert {r["environment"]["container_image"]["uri"] for r in raws} == {"docker://vllm/vllm-openai:v0.32.0"}
