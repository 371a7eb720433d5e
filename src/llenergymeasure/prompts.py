"""Prompt sources: the shipped prompt set, local files, and Hugging Face datasets (by alias or id).

Loading a hub dataset needs the ``datasets`` package and the network; offline it fails with a one-line error
that says so, before any measurement starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from .errors import ConfigError

BUILTIN_PATH = Path(__file__).resolve().parent / "data" / "prompts.jsonl"

#: Aliases of the reference tool: HF path, column, split, subset.
DATASET_ALIASES = {
    "ai-energy-score": {"path": "AIEnergyScore/text_generation", "column": "text", "split": "train", "subset": None},
    "alpaca": {"path": "tatsu-lab/alpaca", "column": "instruction", "split": "train", "subset": None},
    "sharegpt": {
        "path": "anon8231489123/ShareGPT_Vicuna_unfiltered",
        "column": "conversations",
        "split": "train",
        "subset": None,
    },
    "gsm8k": {"path": "gsm8k", "column": "question", "split": "train", "subset": "main"},
    "mmlu": {"path": "cais/mmlu", "column": "question", "split": "test", "subset": "all"},
}
DATASET_ALIASES["ai_energy_score"] = DATASET_ALIASES["ai-energy-score"]
AUTO_COLUMNS = ("text", "prompt", "question", "instruction", "input", "content")


def _first_user_turn(conversation) -> str:
    for turn in conversation or []:
        who = str(turn.get("from") or turn.get("role") or "").lower()
        if who in ("human", "user"):
            return str(turn.get("value") or turn.get("content") or "")
    return ""


def _from_rows(rows, column: str | None, where: str) -> list[str]:
    out = []
    for row in rows:
        if isinstance(row, str):
            out.append(row)
            continue
        col = column or next((c for c in AUTO_COLUMNS if c in row), None)
        if col is None or col not in row:
            raise ConfigError(
            f"key 'dataset.column' = {column!r} not found in dataset {where}; allowed: a column of it "
            f"(auto-detected: {', '.join(AUTO_COLUMNS)})"
        )
        value = row[col]
        out.append(_first_user_turn(value) if isinstance(value, list) else str(value))
    return [p for p in out if p.strip()]


def _load_file(path: Path, column: str | None) -> list[str]:
    if not path.exists():
        raise ConfigError(f"key 'dataset.name' = '{path}': file does not exist")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return _from_rows(rows, column or ("prompt" if rows and isinstance(rows[0], dict) and "prompt" in rows[0] else None), str(path))
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def _load_hub(name: str, split: str | None, subset: str | None, column: str | None) -> list[str]:
    alias = DATASET_ALIASES.get(name)
    path = alias["path"] if alias else name
    split = split or (alias["split"] if alias else "train")
    subset = subset or (alias["subset"] if alias else None)
    column = column or (alias["column"] if alias else None)
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"key 'dataset.name' = '{name}' needs the 'datasets' package (pip install 'llenergymeasure[datasets]')"
        ) from None
    try:
        ds = datasets.load_dataset(path, subset, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot get the data"
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and it is not cached" if offline else str(exc).splitlines()[0]
        raise ConfigError(f"key 'dataset.name' = '{name}' ({path}, split {split}) cannot be loaded: {why}") from None
    return _from_rows(ds, column, name)


def source_problem(dataset: dict) -> str | None:
    """Dataset settings that would change nothing for this source: split and subset choose parts of a Hugging Face
    dataset, and a column has no meaning for the shipped prompts or a .txt file (one prompt per line)."""
    name = dataset.get("name", "builtin")
    local = name == "builtin" or name.endswith((".jsonl", ".txt")) or Path(name).is_file()
    if local:
        for key in ("split", "subset"):
            if dataset.get(key) is not None:
                return f"dataset.{key} = {dataset[key]} chooses part of a Hugging Face dataset, but dataset.name = {name} is a local prompt file"
        if dataset.get("column") is not None and (name == "builtin" or name.endswith(".txt")):
            return f"dataset.column = {dataset['column']}: dataset.name = {name} has one prompt per line or record and no columns to choose"
    return None


def load_prompts(dataset: dict, num_prompts: int, seed: int | None = None) -> list[str]:
    """The first ``num_prompts`` prompts of a source (after an optional seeded shuffle).

    ``dataset`` is the resolved experiment ``dataset`` section. Asking for more prompts than the source has is an
    error: silently measuring fewer prompts than configured would change the workload behind the user's back.
    """
    name = dataset.get("name", "builtin")
    column = dataset.get("column")
    if name == "builtin":
        prompts = _load_file(BUILTIN_PATH, "prompt")
    elif name.endswith((".jsonl", ".txt")) or Path(name).is_file():
        prompts = _load_file(Path(name), column)
    else:
        prompts = _load_hub(name, dataset.get("split"), dataset.get("subset"), column)
    if dataset.get("shuffle"):
        random.Random(seed if seed is not None else 0).shuffle(prompts)
    if len(prompts) < num_prompts:
        raise ConfigError(
            f"key 'num_input_prompts' = {num_prompts} is out of range; allowed: <= {len(prompts)} "
            f"(the prompts of dataset '{name}')"
        )
    return prompts[:num_prompts]


def prompts_sha256(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def check_models(configs: list[dict]) -> None:
    """A model named by a filesystem path must exist (hub ids are resolved by the backend when it loads)."""
    from .tiny_model import is_embedded

    for name in sorted({c["model_name"] for c in configs if not c.get("no_weights")}):
        if is_embedded(name) or Path(name).expanduser().exists():
            continue
        if name.startswith(("/", "./", "../", "~")):
            raise ConfigError(f"key 'model_name' = '{name}': folder does not exist; allowed: an existing folder, a Hugging Face id, or lem-tiny-llama")


def check_sources(configs: list[dict]) -> None:
    """Load every distinct prompt source once, for the largest prompt count asked of it, so that a missing file,
    an unreachable dataset or too few prompts stop the campaign before its first measurement."""
    need: dict[str, tuple[dict, int]] = {}
    for cfg in configs:
        ds = cfg["dataset"]
        key = json.dumps(ds, sort_keys=True)
        n = max(cfg["num_input_prompts"], need.get(key, (ds, 0))[1])
        need[key] = (ds, n)
    for ds, n in need.values():
        load_prompts(ds, n)
    check_models(configs)
