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
    for n, row in enumerate(rows, 1):
        if isinstance(row, str):
            out.append(row)
            continue
        if not isinstance(row, dict):
            raise ConfigError(
                f"key 'dataset.name' = '{where}': row {n} is a {_json_kind(row)}; allowed: a JSON object with a "
                f"prompt column ({', '.join(AUTO_COLUMNS)}) or a JSON string per line"
            )
        col = column or next((c for c in AUTO_COLUMNS if c in row), None)
        if col is None or col not in row:
            raise ConfigError(
                f"key 'dataset.column' = {column!r} not found in dataset {where}; allowed: a column of it "
                f"(auto-detected: {', '.join(AUTO_COLUMNS)})"
            )
        value = row[col]
        out.append(_first_user_turn(value) if isinstance(value, list) else str(value))
    return [p for p in out if p.strip()]


def _json_kind(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", type(None): "null"}.get(
        type(value), type(value).__name__
    )


#: A prompt file larger than this is refused (the largest public prompt sets are a few hundred MB as JSONL).
MAX_PROMPT_FILE_BYTES = 1 << 30


def _read_text(path: Path) -> str:
    """A local prompt file's text, or a one-line ConfigError: missing, a folder, binary, or not UTF-8."""
    from .yamlfile import decode, read_bytes

    if not path.exists():
        raise ConfigError(f"key 'dataset.name' = '{path}': file does not exist")
    try:
        return decode(read_bytes(path, MAX_PROMPT_FILE_BYTES, "prompt file"))
    except ConfigError as exc:
        text = str(exc)
        text = text if text.startswith("prompt file") else f"the file {text}"
        raise ConfigError(f"key 'dataset.name' = '{path}': {text}; allowed: a UTF-8 .jsonl or .txt file") from None


def _load_file(path: Path, column: str | None) -> list[str]:
    text = _read_text(path)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(
                    f"key 'dataset.name' = '{path}': line {n} is not valid JSON ({exc.msg} at column {exc.colno}); "
                    "allowed: one JSON object or string per line"
                ) from None
        first = rows[0] if rows else None
        return _from_rows(
            rows, column or ("prompt" if isinstance(first, dict) and "prompt" in first else None), str(path)
        )
    return [line for line in text.splitlines() if line.strip()]


class NeedsNetwork(ConfigError):
    """A prompt source or model that cannot be checked on this machine as it is now (offline, or the hub out of
    reach, and nothing cached): ``lem validate`` warns about it; a campaign run stops on it."""


def _load_hub(name: str, split: str | None, subset: str | None, column: str | None, probe: bool = False) -> list[str]:
    """A hub dataset's prompts. ``probe``: first ask the hub whether it can be reached and holds the dataset (a
    quick look, where the download library would retry for half a minute), and raise :class:`NeedsNetwork` when it
    cannot be reached or offline mode is on and the dataset is not cached."""
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
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    where = f"key 'dataset.name' = '{name}' ({path}, split {split})"
    if probe and not offline:
        _probe_hub_dataset(path, where)
    try:
        ds = datasets.load_dataset(path, subset, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot get the data"
        if offline:
            raise (NeedsNetwork if probe else ConfigError)(
                f"{where} cannot be loaded: offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and it is not cached"
            ) from None
        raise ConfigError(f"{where} cannot be loaded: {str(exc).splitlines()[0]}") from None
    return _from_rows(ds, column, name)


def _probe_hub_dataset(path: str, where: str) -> None:
    """Whether the hub can be reached and has the dataset: ConfigError when it says no, NeedsNetwork when it cannot
    be asked."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return
    try:
        huggingface_hub.dataset_info(path, timeout=10, token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError:
        raise ConfigError(
            f"{where} is a gated Hugging Face dataset: set HF_TOKEN to a token with access to it"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{where} is not a Hugging Face dataset (or a private one: set HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a timeout: it cannot be checked from here
        raise NeedsNetwork(
            f"{where} cannot be checked: the Hugging Face hub cannot be reached ({type(exc).__name__})"
        ) from None


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


def load_prompts(dataset: dict, num_prompts: int, seed: int | None = None, probe: bool = False) -> list[str]:
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
        prompts = _load_hub(name, dataset.get("split"), dataset.get("subset"), column, probe)
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


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _known_model_names() -> list[str]:
    from .synthetic import architectures
    from .tiny_model import EMBEDDED_MODELS

    names = list(EMBEDDED_MODELS)
    for spec in architectures().values():
        names += [spec["name"], *spec.get("aliases", [])]
    return names


def _shipped_architecture_hint(name: str) -> str:
    """For the id of a shipped architecture that cannot be had from here: how to measure it without its weights."""
    from .synthetic import architectures

    for spec in architectures().values():
        if name.lower() in {n.lower() for n in (spec["name"], *spec.get("aliases", []))}:
            return (
                f"; or, without its checkpoint, no_weights: true measures {spec['name']}'s architecture with "
                "seeded random weights (nothing downloaded; same cost per token, meaningless text)"
            )
    return ""


def _did_you_mean(name: str) -> str:
    """A shipped model's name close to ``name``; nothing when ``name`` is one of them (in any case): it is then a
    real model id that is only missing from here, not a typo."""
    from .errors import did_you_mean

    known = _known_model_names()
    if name.lower() in {n.lower() for n in known}:
        return ""
    return did_you_mean(name, known, cutoff=0.75, ignore_case=True)


def model_check(name: str, timeout_s: float = 15.0) -> tuple[str | None, bool]:
    """Why ``model_name`` cannot be loaded, known without loading it (None when it looks loadable), and whether
    that is only because the hub cannot be asked from here (offline, or out of reach; a near miss of a shipped
    model's name is a problem all the same).

    A local folder must hold a ``config.json``; a Hugging Face id must be in the local cache or, when online, exist
    on the hub (its ``config.json`` is looked up; a gated model needs ``HF_TOKEN``)."""
    from .tiny_model import is_embedded

    if is_embedded(name):
        return None, False
    path = Path(name).expanduser()
    allowed = "allowed: a model folder, a Hugging Face id, or lem-tiny-llama"
    if path.exists():
        if not path.is_dir():
            return f"key 'model_name' = '{name}' is a file, not a model folder; {allowed}", False
        if not (path / "config.json").is_file():
            return (
                f"key 'model_name' = '{name}': the folder has no config.json, so it is not a model folder; {allowed}",
                False,
            )
        return None, False
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or not name.strip():
        return f"key 'model_name' = '{name}': folder does not exist{_did_you_mean(name)}; {allowed}", False
    try:
        import huggingface_hub
    except ImportError:  # the backend will say what it cannot load
        return None, False
    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library rejects (bad characters, ...)
        return (
            f"key 'model_name' = '{name}' is neither a folder nor a valid Hugging Face id{_did_you_mean(name)}; {allowed}",
            False,
        )
    if isinstance(cached, str):
        return None, False
    if _offline():
        return (
            f"key 'model_name' = '{name}' is not a folder, and no Hugging Face model of that id is in the local "
            f"cache while offline mode is on (HF_HUB_OFFLINE){_did_you_mean(name)}; {allowed}"
            f"{_shipped_architecture_hint(name)}"
        ), not _did_you_mean(name)
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(name, timeout=timeout_s, token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError:
        return (
            f"key 'model_name' = '{name}' is a gated Hugging Face model: set HF_TOKEN to a token with access to it",
            False,
        )
    except RepositoryNotFoundError:
        return (
            f"key 'model_name' = '{name}' is not a folder and not a Hugging Face model (or a private one: set "
            f"HF_TOKEN){_did_you_mean(name)}; {allowed}"
        ), False
    except Exception as exc:  # noqa: BLE001 - network trouble: the first job could not download it either
        return (
            f"key 'model_name' = '{name}' is not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(exc).__name__}); download it first (hf download {name}) or fix the network{_did_you_mean(name)}"
            f"{_shipped_architecture_hint(name)}"
        ), not _did_you_mean(name)
    return None, False


def model_problem(name: str, timeout_s: float = 15.0) -> str | None:
    """Why ``model_name`` cannot be loaded, known without loading it; None when it looks loadable."""
    return model_check(name, timeout_s)[0]


def check_models(configs: list[dict], network_optional: bool = False) -> list[str]:
    """Every model an experiment loads must be loadable: see :func:`model_check` (``no_weights`` architectures
    are checked when the campaign is expanded). One ConfigError names every problem; with ``network_optional``,
    what only the hub could tell is returned as warnings instead."""
    problems, warnings = [], []
    for name in sorted({c["model_name"] for c in configs if not c.get("no_weights")}):
        problem, needs_network = model_check(name)
        if problem:
            (warnings if network_optional and needs_network else problems).append(problem)
    if problems:
        raise ConfigError(problems)
    return warnings


def check_sources(configs: list[dict], network_optional: bool = False) -> list[str]:
    """Load every distinct prompt source once, for the largest prompt count asked of it, so that a missing file,
    an unreachable dataset or too few prompts stop the campaign before its first measurement; then check the
    models. One ConfigError names every problem. ``network_optional`` (``lem validate``, ``lem run --dry-run``):
    what needs the network and cannot be checked from here is returned as warnings, one line each, instead."""
    need: dict[str, tuple[dict, int]] = {}
    for cfg in configs:
        ds = cfg["dataset"]
        key = json.dumps(ds, sort_keys=True)
        n = max(cfg["num_input_prompts"], need.get(key, (ds, 0))[1])
        need[key] = (ds, n)
    problems, warnings = [], []
    for ds, n in need.values():
        try:
            load_prompts(ds, n, probe=network_optional)
        except NeedsNetwork as exc:
            warnings += exc.problems
        except ConfigError as exc:
            problems += exc.problems
    try:
        warnings += check_models(configs, network_optional)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return [f"{w} (a campaign run checks it again before its first measurement)" for w in warnings]
