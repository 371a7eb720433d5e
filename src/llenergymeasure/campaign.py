"""Campaign loading and expansion: campaign file -> validated campaign -> experiments -> measurement order.

An experiment is a fully resolved experiment config (every default filled in, decoder preset expanded). Its id
is derived from that config alone, so the same config gets the same id on any machine, and any edited value
yields a new id (a new measurement) instead of overwriting a finished one.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .backends import rules as backend_rules
from .config import (
    DECODER_PRESETS,
    canonical_json,
    deep_merge,
    fill_defaults,
    load_schema,
    prune_defaults,
    schema_problems,
    set_dotted,
    value_problems,
)
from .errors import ConfigError
from .legacy import Migrated, annotate, migrate_campaign, migrate_experiment, migrate_user
from .precision import Target, campaign_problem, target_of
from .record.layout import Layout
from .serving import problems as serving_problems

SCHEMA = "campaign"
RESULTS_DIR_ENV = "LLM_ENERGY_RESULTS_DIR"
USER_CONFIG_FILE = ".lem-config.yaml"
DEFAULT_CAMPAIGN_FILE = "config/campaign.yaml"


@dataclass(frozen=True)
class Experiment:
    """One resolved experiment: ``config`` is plain data and is what the measurement rule gets as params."""

    experiment_id: str
    config_name: str
    config: dict = field(hash=False, compare=False)
    source: str = ""
    params: dict = field(default_factory=dict, hash=False, compare=False)  # sparse_config(config), computed once

    @property
    def backend(self) -> str:
        return self.config["backend"]


@dataclass
class Expansion:
    experiments: list[Experiment]
    dropped: list[tuple[str, str]]  # (config name, reason)
    duplicates: list[tuple[str, str]]  # (config name, id it duplicates)
    notes: list[str] = field(default_factory=list)  # lem keys read, campaign values an experiment sets otherwise


# --------------------------------------------------------------------------------------------------------------
# Loading


def read_yaml(path: str | Path) -> Any:
    """A campaign, experiment or preferences file as data (see :mod:`llenergymeasure.yamlfile` for the checks)."""
    from .yamlfile import read

    return read(path)


USER_CONFIG_KEYS = {"verbosity", "results_dir", "thermal_gaps", "notifications"}
#: how much the console says: ``LLM_ENERGY_VERBOSITY``, else ``.lem-config.yaml``'s ``verbosity``
VERBOSITY_LEVELS = ("quiet", "normal", "verbose")


def user_config(workdir: str | Path = ".") -> Migrated:
    """Per-machine preferences from ``.lem-config.yaml`` in the working directory (empty if absent), with lem's keys
    read (``notes`` say how); one ConfigError naming every problem of the file."""
    from .config import key_hint

    path = Path(workdir) / USER_CONFIG_FILE
    if not path.exists():
        return Migrated({})
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{USER_CONFIG_FILE}: expected a mapping of settings, got {type(data).__name__}")
    found = migrate_user(data)
    data, problems = found.data, list(found.problems)
    for key in data:
        if key not in USER_CONFIG_KEYS:
            problems.append(
                f"unknown key '{key}'; allowed keys: {', '.join(sorted(USER_CONFIG_KEYS))}{key_hint(key, USER_CONFIG_KEYS)}"
            )
    if data.get("verbosity") not in (None, *VERBOSITY_LEVELS):
        problems.append(
            f"key 'verbosity' = {data['verbosity']!r} is not allowed; allowed: {', '.join(VERBOSITY_LEVELS)}"
        )
    gaps = data.get("thermal_gaps") or {}
    if not isinstance(gaps, dict):
        problems.append(
            f"key 'thermal_gaps' = {gaps!r} has the wrong type; allowed: a mapping (between_experiments, between_cycles)"
        )
        gaps = {}
    for key, value in gaps.items():
        if key not in ("between_experiments", "between_cycles"):
            problems.append(f"unknown key 'thermal_gaps.{key}'; allowed: between_experiments, between_cycles")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"key 'thermal_gaps.{key}' = {value!r} is not allowed; allowed: seconds, >= 0")
    if data.get("notifications") is not None:
        problems += schema_problems(data["notifications"], SCHEMA, "notifications", "notifications")
    if "results_dir" in data and not isinstance(data["results_dir"], str):
        problems.append(f"key 'results_dir' = {data['results_dir']!r} has the wrong type; allowed: a folder path")
    if problems:
        raise ConfigError([f"{USER_CONFIG_FILE}: {p}" for p in problems])
    found.notes = [f"{USER_CONFIG_FILE}: {n}" for n in found.notes]
    return found


def load_user_config(workdir: str | Path = ".") -> dict:
    """Per-machine preferences from ``.lem-config.yaml`` in the working directory ({} if absent)."""
    return user_config(workdir).data


def apply_user_config(campaign: dict, user: dict) -> dict:
    """Fill campaign keys the campaign file leaves unset from the machine's preferences."""
    defaults: dict = {}
    if "results_dir" in user:
        defaults["results_dir"] = user["results_dir"]
    gaps = user.get("thermal_gaps") or {}
    execution = {}
    if "between_experiments" in gaps:
        execution["config_gap_s"] = gaps["between_experiments"]
    if "between_cycles" in gaps:
        execution["cycle_gap_s"] = gaps["between_cycles"]
    if execution:
        defaults["execution"] = execution
    if user.get("notifications"):
        defaults["notifications"] = user["notifications"]
    return deep_merge(defaults, campaign)


def resolve_campaign(raw: Any, base_dir: str | Path = ".", workdir: str | Path = ".", env=None) -> dict:
    """Validate a raw campaign mapping and return it with defaults, preferences and the env override applied.

    ``base_dir`` is the folder of the campaign file (``configs`` paths are relative to it). Keys of lem v3 are read
    first (:mod:`llenergymeasure.legacy`; the resolved campaign's ``_notes`` say how). A campaign with problems
    raises one ConfigError naming all of them, its experiment files' and grid's included."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError(f"a campaign must be a mapping of keys, got {type(raw).__name__}")
    if "campaign_name" not in raw and ("model_name" in raw or "config_name" in raw):
        raise ConfigError(
            "this is an experiment file (it has model_name or config_name, and no campaign_name), not a "
            "campaign: list it under configs: in a campaign file (lem validate FILE checks it; lem run FILE "
            "measures it once)"
        )
    found = migrate_campaign(raw)
    problems, notes = list(found.problems), list(found.notes)
    try:
        user = user_config(workdir)
        notes += user.notes
    except ConfigError as exc:
        problems += exc.problems
        user = Migrated({})
    campaign = apply_user_config(found.data, user.data)
    shape = annotate(schema_problems(campaign, SCHEMA), found.renamed)
    problems += shape
    if not shape:
        problem = campaign_problem(campaign)  # what the schema cannot say about execution (needs a valid shape)
        if problem:
            problems.append(problem)
    folder = "results"
    try:
        if env.get(RESULTS_DIR_ENV):
            folder = results_dir(env[RESULTS_DIR_ENV], f"environment variable {RESULTS_DIR_ENV}")
        elif isinstance(campaign.get("results_dir", "results"), str):
            folder = results_dir(campaign.get("results_dir", "results"), "key 'results_dir'")
    except ConfigError as exc:
        problems += exc.problems
    if not campaign.get("configs") and not campaign.get("grid"):
        problems.append("the campaign defines no experiments: set 'grid' and/or 'configs'")
    if problems:
        raise ConfigError(problems + _expansion_problems(campaign, base_dir, found.renamed))
    resolved = fill_defaults(campaign, load_schema(SCHEMA), load_schema(SCHEMA))
    resolved["results_dir"] = folder
    resolved["_base_dir"] = str(Path(base_dir))
    resolved["_notes"] = notes
    resolved["_renamed"] = {k: v for k, v in found.renamed.items() if k.startswith("grid.")}  # for the grid's problems
    return resolved


def _expansion_problems(campaign: dict, base_dir: str | Path, renamed: dict[str, str]) -> list[str]:
    """The problems of a campaign's experiment files and grid, as far as they can be checked while the campaign
    itself has problems (so that one run names everything to fix): the keys they depend on are used only when
    valid themselves."""
    trial: dict = {"_base_dir": str(base_dir), "_renamed": renamed}
    for key in ("configs", "grid", "model", "dataset", "num_samples"):
        if key in campaign and not schema_problems({"campaign_name": "x", key: campaign[key]}, SCHEMA):
            trial[key] = campaign[key]
    if not trial.get("configs") and not trial.get("grid"):
        return []
    try:
        expand(trial)
    except ConfigError as exc:
        return [p for p in exc.problems if not p.startswith(NOTHING_RUNNABLE)]
    except Exception:  # noqa: BLE001 - a best effort beside the problems already found, never a traceback
        return []
    return []


def results_dir(value: str, where: str) -> str:
    """``results_dir`` as the workflow uses it: ``~`` expanded, ``./``, doubled and trailing slashes removed
    (Snakemake refuses ``//`` in a path and reads braces as wildcards). Refused in one line: what cannot be a folder
    (a file, or a path through a file, or the filesystem root), braces, surrounding whitespace, control
    characters."""
    allowed = "allowed: a folder path"
    if not value or value != value.strip():
        raise ConfigError(
            f"{where} = {value!r} starts or ends with whitespace (or is empty); {allowed} without surrounding spaces"
        )
    if any(ch in value for ch in "{}"):
        raise ConfigError(
            f"{where} = {value!r} contains '{{' or '}}', which Snakemake reads as wildcards; {allowed} without braces"
        )
    if any(ord(ch) < 32 for ch in value):
        raise ConfigError(f"{where} = {value!r} contains a control character; {allowed}")
    path = os.path.normpath(os.path.expanduser(value))
    if path.startswith("//"):  # POSIX keeps a leading '//' as it is
        path = "/" + path.lstrip("/")
    if path == os.sep:  # every campaign folder, the embedded models and their locks would sit in the root
        raise ConfigError(f"{where} = {value!r} is the filesystem root; {allowed} below it")
    for ancestor in (Path(path), *Path(path).parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                what = "is a file" if ancestor == Path(path) else f"lies under '{ancestor}', which is a file"
                raise ConfigError(f"{where} = {value!r} {what}, not a folder; {allowed}")
            break
    return path


def load_campaign(path: str | Path, workdir: str | Path = ".", overrides: dict | None = None) -> dict:
    """Read, merge ``overrides`` (e.g. Snakemake ``--config`` values) and resolve one campaign file."""
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"file '{path}' is empty")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return resolve_campaign(raw, Path(path).parent, workdir)
    except ConfigError as exc:
        raise exc.located(str(path)) from None


def campaign_id(name: str) -> str:
    """Short id of a campaign (md5 of its name, first 8 hex digits), as in the reference tool."""
    return hashlib.md5(name.encode("utf-8")).hexdigest()[:8]


# --------------------------------------------------------------------------------------------------------------
# Experiment resolution


def resolve_experiment(config: dict) -> dict:
    """Expand the decoder preset, fill every default, and apply the greedy rule (temperature 0 = greedy); a CUDA-only
    backend's ``device: cuda`` is its default ``auto``."""
    config = dict(config)
    decoder = dict(config.get("decoder") or {})
    preset = decoder.get("preset")
    if preset:
        decoder = {**DECODER_PRESETS[preset], **decoder}
    config["decoder"] = decoder
    root = load_schema(SCHEMA)
    resolved = fill_defaults(config, experiment_schema(config.get("backend", "pytorch")), root)
    if resolved["decoder"]["temperature"] == 0:
        resolved["decoder"]["do_sample"] = False
    # one spelling per behaviour, so that two spellings never make two ids for one measurement
    pt = resolved.get("pytorch")
    if pt and pt.get("torch_compile") is True:
        pt["torch_compile"] = "default"
    spec = (resolved.get("vllm") or {}).get("speculative")
    if spec and spec.get("model") and spec.get("method") is None:
        spec["method"] = "draft_model"  # a draft model without a method is vLLM's draft_model method
    warm = resolved.get("warmup")
    if warm and ((warm.get("enabled") is False and warm.get("mode") == "full") or warm.get("mode") == "off"):
        warm["enabled"], warm["mode"] = False, "off"  # enabled: false and mode: off are the same warm-up (none)
    if (
        resolved.get("backend") in BACKENDS
        and resolved["device"] == "cuda"
        and backend_rules(resolved["backend"]).gpu_only
    ):
        resolved["device"] = "auto"  # the same thing for a CUDA-only engine: one experiment id, not two
    resolved.pop("config_name", None)
    return resolved


#: Keys of seconds whose former spelling (before every such key said ``_s``) names them where a finished
#: measurement is identified: in the experiment id's hash, the measurement job's params (a changed param would make
#: Snakemake measure again) and the config hash of a raw result (compared across an experiment's cycles). So
#: results measured before keep their ids, and a campaign resumes where it stopped.
FORMER_SPELLING = {
    ("baseline", "duration_s"): "duration_sec",
    ("baseline", "cache_ttl_s"): "cache_ttl_sec",
    ("energy", "min_window_s"): "min_window_sec",
}


def identity_form(config: dict) -> dict:
    """An experiment (resolved or sparse) with the former spellings of :data:`FORMER_SPELLING`, each in its key's
    place: what ids, params and config hashes are made of."""
    return _respelled(config, {(s, k): f for (s, k), f in FORMER_SPELLING.items()})


def current_form(config: dict) -> dict:
    """The inverse of :func:`identity_form`: the keys as they are spelled now."""
    return _respelled(config, {(s, f): k for (s, k), f in FORMER_SPELLING.items()})


def _respelled(config: dict, names: dict) -> dict:
    out = dict(config)
    for (section, key), name in names.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {(name if k == key else k): v for k, v in out[section].items()}
    return out


def sparse_config(config: dict) -> dict:
    """A resolved experiment without the values that equal their defaults, in :func:`identity_form`: what the id is
    derived from and what the measurement job gets as params. A later version adding a field with a default
    changes neither, so finished measurements keep their ids."""
    return identity_form(prune_defaults(config, experiment_schema(config["backend"]), load_schema(SCHEMA)))


def complete_config(sparse: dict) -> dict:
    """The resolved experiment back from :func:`sparse_config` (defaults filled in; presets already expanded)."""
    sparse = current_form(sparse)
    return fill_defaults(sparse, experiment_schema(sparse.get("backend", "pytorch")), load_schema(SCHEMA))


@functools.cache
def experiment_schema(backend: str) -> dict:
    """The experiment schema as it applies to one backend: the other backends' sections are left out, so a resolved
    config carries only its own engine's settings (a section written for another backend is kept as given, and
    :func:`semantic_problem` rejects it)."""
    schema = dict(load_schema(SCHEMA)["$defs"]["experiment"])
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k == backend or k not in BACKENDS}
    return schema


def nominal_batch(config: dict) -> tuple[int, str]:
    """The batching knob and how batches form, from the experiment's backend: (batch_size, strategy) for PyTorch,
    (max_num_seqs, "continuous") for vLLM, (max_batch_size, "inflight") for TensorRT-LLM."""
    return backend_rules(config["backend"]).nominal_batch(config)


def semantic_problem(config: dict) -> str | None:
    """Why a schema-valid resolved config cannot run (the first reason), or None: see :func:`semantic_problems`."""
    return next(iter(semantic_problems(config)), None)


def semantic_problems(config: dict) -> list[str]:
    """Every reason a schema-valid resolved config cannot run: the rules that span backends (here) and the
    experiment's backend's own rules (``problems`` in its module, found through :mod:`llenergymeasure.backends`),
    each checked on its own."""
    backend = config["backend"]
    if backend not in BACKENDS:
        return [f"backend '{backend}' is not available in this version (available: {', '.join(BACKENDS)})"]
    found = []
    for other in BACKENDS:
        if other != backend and config.get(other):
            key = next(iter(_dotted(config[other], other)))
            found.append(f"{key} is set, but backend = {backend}: a {other} section applies to backend {other} only")
    rules = backend_rules(backend)
    if rules.gpu_only and config["device"] == "cpu":
        found.append(f"backend = {backend} runs on CUDA GPUs only, but device = cpu")
    found.extend(rules.problems(config))
    if config["min_output_tokens"] > config["max_output_tokens"]:
        found.append(
            f"min_output_tokens = {config['min_output_tokens']} is larger than max_output_tokens = {config['max_output_tokens']}"
        )
    if config["no_weights"]:
        from .synthetic import resolve_architecture

        try:
            resolve_architecture(config["model_name"])
        except ConfigError as exc:
            found.append(str(exc))
    found.append(decoder_problem(config["decoder"]))
    if config["device"] == "cpu" and config["gpus"] != [0]:
        found.append(f"gpus = {config['gpus']} selects CUDA devices, but device = cpu")
    found.append(measurement_problem(config))
    found.extend(serving_problems(config))
    needed = rules.gpus(config)
    # device auto is CUDA wherever a GPU is visible: its GPU list is held to the same rule as device cuda's
    if config["device"] != "cpu" and needed != len(config["gpus"]):
        found.append(
            f"{rules.gpus_knob} = {needed}, but gpus lists {len(config['gpus'])} GPU(s) {config['gpus']}: list exactly the "
            "GPUs the experiment uses, so that its energy covers them all and no other"
            + ("" if rules.gpu_only else " (or device: cpu)")
        )
    return [p for p in found if p]


def _defaults(section: str) -> dict:
    return fill_defaults({}, load_schema(SCHEMA)["$defs"][section], load_schema(SCHEMA))


def measurement_problem(config: dict) -> str | None:
    """Settings of the measurement itself (prompts, idle baseline, timeline, energy meters) that would change
    nothing as combined: the rules that hold whatever the backend."""
    from .prompts import source_problem

    problem = source_problem(config["dataset"])
    if problem:
        return problem
    for section in ("baseline", "timeline"):
        if not config[section]["enabled"]:
            for key, default in _defaults(section).items():
                if key != "enabled" and config[section][key] != default:
                    return f"{section}.{key} = {config[section][key]} has no effect: {section}.enabled = false"
    warm = config["warmup"]
    if not warm["enabled"] and warm["mode"] == "cv":
        return "warmup.mode = cv, but warmup.enabled = false: the warm-up is off (set warmup.mode: off, or enable the warm-up)"
    if warm["mode"] == "off":
        for key, default in _defaults("warmup").items():
            if key not in ("enabled", "mode") and warm[key] != default:
                return f"warmup.{key} = {warm[key]} has no effect: the warm-up is off"
    energy = config["energy"]
    if energy["backend"] == "nvml" and config["device"] == "cpu":
        return "energy.backend = nvml reads GPU energy counters, but device = cpu"
    for key, what in (("cpu_tdp_w", "the TDP"), ("cpu_part_threads", "the hardware threads per package")):
        if energy[key] is not None and energy["backend"] in ("rapl", "codecarbon"):
            return (
                f"energy.{key} sets {what} of the CPU estimate, which energy.backend = {energy['backend']} never uses"
            )
    if energy["cpu_attribution"] == "process" and energy["backend"] == "codecarbon":
        return (
            "energy.cpu_attribution = process scales the CPU energy of RAPL or the TDP estimate, but "
            "energy.backend = codecarbon reports CodeCarbon's own machine-wide figure"
        )
    return None


#: decoder fields that only shape sampling, with their schema defaults
SAMPLING_FIELDS = {"top_k": 50, "top_p": 1.0}


def decoder_problem(decoder: dict) -> str | None:
    """Decoder settings that cannot all hold: a sampling preset with do_sample off, and sampling knobs under greedy
    decoding (no backend reads them there, so they would only make a second id for the same measurement)."""
    if not decoder["do_sample"] and decoder["preset"] in ("standard", "creative", "factual"):
        return f"decoder.preset = {decoder['preset']} samples, but decoder.do_sample = false"
    if not decoder["do_sample"]:
        for key, default in SAMPLING_FIELDS.items():
            if decoder[key] != default:
                return f"decoder.{key} = {decoder[key]} shapes sampling, but decoding is greedy (decoder.do_sample = false)"
        if decoder["temperature"] not in (0, 1.0):
            return (
                f"decoder.temperature = {decoder['temperature']} shapes sampling, but decoding is greedy "
                "(decoder.do_sample = false; temperature 0 also means greedy)"
            )
    return None


def _dotted(tree: dict, prefix: str):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _dotted(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}"


def _slug(text: str) -> str:
    text = text.rstrip("/").split("/")[-1].lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:32] or "model"


PRECISION_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def experiment_id(config: dict, sparse: dict | None = None) -> str:
    """Readable, stable id: ``<backend>-<model>-<precision>-<batch token>-<10 hex digits>``, the digits hashing the
    resolved config's non-default values (``sparse``, computed with :func:`sparse_config` when not given)."""
    sparse = sparse_config(config) if sparse is None else sparse
    digest = hashlib.sha256(canonical_json(sparse).encode("utf-8")).hexdigest()[:10]
    return f"{config['backend']}-{_slug(config['model_name'])}-{PRECISION_SHORT[config['fp_precision']]}-{batch_token(config)}-{digest}"


def batch_token(config: dict) -> str:
    """The batching knob in an experiment id: bs<N> (PyTorch static/dynamic batch, TensorRT-LLM engine batch
    limit) or seqs<N> (vLLM's continuous-batch limit)."""
    size, _ = nominal_batch(config)
    return f"{backend_rules(config['backend']).batch_label}{size}"


def _auto_name(backend: str, model: str, varied: dict) -> str:
    parts = [backend, _slug(model)]
    for key, value in varied.items():
        short = key.split(".")[-1]
        parts.append(f"{short}{value}")
    name = "-".join(str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "", name)[:80]


def _axis(values: Any, dotted: str = "") -> list:
    """A grid entry's values: a list is an axis, anything else one fixed value. For a list-valued field (``gpus``)
    a flat list is one value and a list of lists the axis: ``gpus: [0, 1]`` means both GPUs, ``[[0], [1]]`` either."""
    if not isinstance(values, list):
        return [values]
    if dotted and _is_array_field(dotted) and not all(isinstance(v, list) for v in values):
        return [values]
    return list(values)


@functools.cache
def _is_array_field(dotted: str) -> bool:
    from .config import property_schema

    root = load_schema(SCHEMA)
    sub = property_schema(dotted, root["$defs"]["experiment"], root)
    kind = (sub or {}).get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def _campaign_defaults(campaign: dict) -> dict:
    base: dict = {}
    if campaign.get("model"):
        base["model_name"] = campaign["model"]
    ds = campaign.get("dataset")
    if ds is not None:
        base["dataset"] = {"name": ds} if isinstance(ds, str) else dict(ds)
    if campaign.get("num_samples"):
        base["num_input_prompts"] = campaign["num_samples"]
    return base


def _grid_path(key: str) -> str:
    """Where a dotted experiment key is set in a grid: a key of a backend's section under
    ``grid.backend_overrides.<backend>``, any other under ``grid.shared``."""
    section, _, rest = key.partition(".")
    return f"grid.backend_overrides.{section}.{rest}" if rest and section in BACKENDS else f"grid.shared.{key}"


def _grid_candidates(campaign: dict, problems: list[str] | None = None) -> list[tuple[str, dict]]:
    """The grid's combinations as (name, experiment mapping); a value that is wrong in itself is a problem (added to
    ``problems``, or raised when none is given), a combination that cannot run is dropped later."""
    grid = campaign.get("grid")
    if not grid:
        return []
    shared = grid.get("shared") or {}
    overrides = grid.get("backend_overrides") or {}
    found: list[str] = []
    for key, values in shared.items():
        for value in _axis(values, key):
            found += [p for p in value_problems(value, key, SCHEMA, "experiment", "grid.shared") if p not in found]
    for backend, axes in overrides.items():
        for key, values in axes.items():
            for value in _axis(values, f"{backend}.{key}"):
                found += [
                    p
                    for p in value_problems(
                        value, f"{backend}.{key}", SCHEMA, "experiment", "grid.backend_overrides", spell=_grid_path
                    )
                    if p not in found
                ]
    if found:
        if problems is None:
            raise ConfigError(found)
        problems += found
        return []
    models = grid.get("models") or [campaign.get("model")]
    if None in models:
        if problems is None:
            raise ConfigError("grid: no model: set 'model' or 'grid.models'")
        problems.append("grid: no model: set 'model' or 'grid.models'")
        return []
    candidates = []
    shared_keys = list(shared)
    for backend in grid["backends"]:
        ov = overrides.get(backend, {})
        ov_keys = list(ov)
        for model in models:
            for shared_vals in itertools.product(*(_axis(shared[k], k) for k in shared_keys)):
                for ov_vals in itertools.product(*(_axis(ov[k], f"{backend}.{k}") for k in ov_keys)):
                    config: dict = {"backend": backend, "model_name": model}
                    varied = {}
                    for key, value in zip(shared_keys, shared_vals, strict=True):
                        set_dotted(config, key, value)
                        if isinstance(shared[key], list) and len(shared[key]) > 1:
                            varied[key] = value
                    for key, value in zip(ov_keys, ov_vals, strict=True):
                        set_dotted(config, f"{backend}.{key}", value)
                        if isinstance(ov[key], list) and len(ov[key]) > 1:
                            varied[f"{backend}.{key}"] = value
                    name = config.pop("config_name", None) or _auto_name(backend, model, varied)
                    candidates.append((name, config))
    return candidates


def _file_candidates(campaign: dict, problems: list[str]) -> list[tuple[str, Any, str]]:
    """The experiment files of ``configs`` as (name, mapping, path as listed); a file that cannot be read is a
    problem (added to ``problems``)."""
    base_dir = Path(campaign.get("_base_dir", "."))
    candidates = []
    for rel in campaign.get("configs") or []:
        try:
            data = read_yaml(base_dir / rel)
        except ConfigError as exc:
            problems += exc.problems
            continue
        if not isinstance(data, dict):
            problems.append(f"experiment config '{rel}': expected a mapping, got {type(data).__name__}")
            continue
        if "campaign_name" in data:
            problems.append(
                f"experiment config '{rel}' is a campaign file (it has campaign_name): configs lists experiment files"
            )
            continue
        name = data.get("config_name") or Path(rel).stem
        candidates.append((name, data, rel))
    return candidates


#: the start of the error of a campaign none of whose experiments can run
NOTHING_RUNNABLE = "the campaign expands to no runnable experiment"


def _shadowed(campaign: dict, data: dict, source: str) -> list[str]:
    """Campaign values that an experiment's own value replaces, said once per experiment file (lem let the
    campaign's dataset and num_samples win over the files'; here they fill only what an experiment leaves unset)."""
    notes = []
    theirs, mine = campaign.get("dataset"), data.get("dataset")
    if theirs is not None and isinstance(mine, dict):
        theirs = {"name": theirs} if isinstance(theirs, str) else theirs
        differ = {k: v for k, v in mine.items() if k in theirs and v != theirs[k]}
        if differ:
            shown = ", ".join(f"dataset.{k} = {v}" for k, v in differ.items())
            notes.append(
                f"{source} sets {shown}: the campaign's dataset ({', '.join(f'{k} = {theirs[k]}' for k in differ)}) "
                "applies only to experiments that set none"
            )
    if campaign.get("num_samples") and data.get("num_input_prompts") not in (None, campaign["num_samples"]):
        notes.append(
            f"{source} sets num_input_prompts = {data['num_input_prompts']}: the campaign's num_samples = "
            f"{campaign['num_samples']} applies only to experiments that set none"
        )
    return notes


def expand(campaign: dict) -> Expansion:
    """Grid x configs -> unique experiments (in campaign order) plus dropped combinations with reasons.

    Errors in an experiment file or a grid value are user errors: one ConfigError names all of them (every file,
    every value). Combinations that are each valid but cannot run together are dropped with a reason. Experiment
    files are read with lem v3's keys mapped (:mod:`llenergymeasure.legacy`); ``notes`` say how."""
    defaults = _campaign_defaults(campaign)
    seen: dict[str, Experiment] = {}
    experiments: list[Experiment] = []
    dropped: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []
    problems: list[str] = []
    notes: list[str] = []

    def add(name: str, raw: dict, source: str, strict: bool, renamed: dict | None = None) -> None:
        merged = deep_merge(defaults, raw)
        found = annotate(schema_problems(merged, SCHEMA, prefix=source, ref="experiment"), renamed or {}, source)
        if found:
            if strict:
                problems.extend(found)
            else:
                dropped.append((name, found[0]))
            return
        config = resolve_experiment(merged)
        if strict and config["backend"] in BACKENDS:
            own = semantic_problems(config)
            if own:
                problems.extend(f"{source}: {p}" for p in own)
                return
        problem = semantic_problem(config)
        if problem:
            dropped.append((name, problem))
            return
        sparse = sparse_config(config)
        exp_id = experiment_id(config, sparse)
        if exp_id in seen:
            duplicates.append((name, exp_id))
            return
        exp = Experiment(exp_id, name, config, source, sparse)
        seen[exp_id] = exp
        experiments.append(exp)

    for name, data, rel in _file_candidates(campaign, problems):
        source = f"configs[{rel}]"
        found = migrate_experiment(data, source)
        problems += found.problems
        notes += found.notes + _shadowed(campaign, found.data, source)
        add(name, found.data, source, strict=True, renamed=found.renamed)
    grid_problems: list[str] = []
    for name, config in _grid_candidates(campaign, grid_problems):
        add(name, config, "grid", strict=False)
    problems += annotate(grid_problems, campaign.get("_renamed") or {})
    if problems:
        raise ConfigError(problems)
    if not experiments:
        reasons = "; ".join(f"{n}: {r}" for n, r in dropped[:3]) or "nothing to expand"
        raise ConfigError(f"{NOTHING_RUNNABLE} ({reasons})")
    names: dict[str, int] = {}
    unique = []
    for exp in experiments:
        n = names.get(exp.config_name, 0)
        names[exp.config_name] = n + 1
        if n:
            exp = Experiment(exp.experiment_id, f"{exp.config_name}-{n + 1}", exp.config, exp.source, exp.params)
        unique.append(exp)
    return Expansion(unique, dropped, duplicates, notes + _grid_shadowed(campaign))


def _grid_shadowed(campaign: dict) -> list[str]:
    shared = (campaign.get("grid") or {}).get("shared") or {}
    notes = []
    if campaign.get("num_samples") and "num_input_prompts" in shared:
        notes.append(
            f"grid.shared sets num_input_prompts: the campaign's num_samples = {campaign['num_samples']} applies "
            "only to experiments that set none"
        )
    if campaign.get("dataset") is not None and any(k == "dataset" or k.startswith("dataset.name") for k in shared):
        notes.append("grid.shared sets the dataset: the campaign's dataset applies only to experiments that set none")
    return notes


# --------------------------------------------------------------------------------------------------------------
# Order


def measurement_order(experiment_ids: list[str], cycles: int, structure: str, seed: int) -> list[tuple[str, int]]:
    """The planned sequence of (experiment id, cycle) windows; cycles are 1-based.

    interleaved: A1 B1 A2 B2; grouped: A1 A2 B1 B2; shuffled: every cycle in its own seeded random order
    (``random.Random(seed)``; seed 0 is a seed like any other).
    """
    if structure == "grouped":
        return [(e, c) for e in experiment_ids for c in range(1, cycles + 1)]
    rng = random.Random(seed)
    order = []
    for c in range(1, cycles + 1):
        ids = list(experiment_ids)
        if structure == "shuffled":
            rng.shuffle(ids)
        order.extend((e, c) for e in ids)
    return order


@dataclass
class Plan:
    """Everything the workflow needs from a campaign, computed once at parse time.

    ``order`` is what is scheduled up front: every cycle, or with a precision target the first ``min_cycles`` of
    each experiment. ``priority`` ranks every cycle the campaign may run (up to ``max_cycles`` with a target), so
    that cycles added later keep the campaign's order. ``completed_only``: this is the pass over what completed
    after failed measurements (:mod:`llenergymeasure.failures`): the workflow then asks only for the raw results
    that exist."""

    campaign: dict
    expansion: Expansion
    order: list[tuple[str, int]]
    by_id: dict[str, Experiment]
    priority: dict[tuple[str, int], int]
    target: Target | None = None
    completed_only: bool = False

    @property
    def name(self) -> str:
        return self.campaign["campaign_name"]

    @property
    def results_root(self) -> str:
        return f"{self.campaign['results_dir']}/{self.name}"

    @property
    def layout(self) -> Layout:
        """Where every file of the campaign lies."""
        return Layout(self.results_root)


def plan(campaign: dict, completed_only: bool = False) -> Plan:
    expansion = expand(campaign)
    ex = campaign["execution"]
    ids = [e.experiment_id for e in expansion.experiments]
    target = target_of(campaign)
    cycles = target.max_cycles if target else ex["cycles"]
    # every cycle up to the maximum, ranked by the order rule (a seeded shuffle draws cycle by cycle, so the first
    # cycles come out as they would on their own); only the minimum is scheduled up front
    ranked = measurement_order(ids, cycles, ex["structure"], ex["seed"])
    n = len(ranked)
    priority = {key: n - i for i, key in enumerate(ranked)}
    order = [key for key in ranked if key[1] <= target.min_cycles] if target else ranked
    by_id = {e.experiment_id: e for e in expansion.experiments}
    return Plan(campaign, expansion, order, by_id, priority, target, completed_only)
