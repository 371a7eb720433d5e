"""Shared fixtures. Tests never touch the network or a GPU: hub access is switched off here."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
#: the test fakes of the engines (importable as ``vllm`` and ``tensorrt_llm`` through the fixtures below)
FAKES = REPO / "tests" / "fakes" / "engines"
#: environment variables the engines read while they start (unset for every test that uses a fake)
ENGINE_ENV = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_ATTENTION_BACKEND", "VLLM_FLASH_ATTN_VERSION", "TORCH_COMPILE_DISABLE",
              "NCCL_P2P_DISABLE", "TLLM_WORKER_USE_SINGLE_PROCESS")  # fmt: skip


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


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Idle baselines are cached per device; tests use their own cache so they never read a user's."""
    path = tmp_path_factory.mktemp("lem-cache")
    old = os.environ.get("LEM_CACHE_DIR")
    os.environ["LEM_CACHE_DIR"] = str(path)
    os.environ.pop("LLM_ENERGY_RESULTS_DIR", None)
    yield path
    if old is None:
        os.environ.pop("LEM_CACHE_DIR", None)
    else:
        os.environ["LEM_CACHE_DIR"] = old


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
    "baseline": {"duration_sec": 1},
    "energy": {"min_window_sec": 0.0},
}


def small_experiment(base: dict, overrides: dict) -> dict:
    """``base`` + :data:`QUICK_MEASUREMENT` + ``overrides``, resolved (every default filled in)."""
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.config import deep_merge

    return resolve_experiment(deep_merge(deep_merge(QUICK_MEASUREMENT, base), overrides))


def tiny_experiment(**overrides) -> dict:
    """A resolved PyTorch experiment small enough for unit tests on 2 CPU cores."""
    base = {
        "model_name": "lem-tiny-llama",
        "fp_precision": "float32",
        "device": "cpu",
        "max_input_tokens": 64,
        "max_output_tokens": 8,
        "min_output_tokens": 8,
        "num_input_prompts": 6,
        "pytorch": {"batch_size": 2},
    }
    return small_experiment(base, overrides)


@pytest.fixture
def workflow_dir(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, envs, default config, profiles) in a temp dir."""
    for name in ("Snakefile", "workflow", "scripts", "envs", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy2(src, tmp_path / name)
    (tmp_path / "schemas").symlink_to(REPO / "src" / "llenergymeasure" / "schemas")
    return tmp_path
