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
    set_dotted,
    validate,
    validate_value,
)
from .errors import ConfigError
from .precision import Target, campaign_problem, target_of

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


# --------------------------------------------------------------------------------------------------------------
# Loading


def read_yaml(path: str | Path) -> Any:
    """A campaign, experiment or preferences file as data (see :mod:`llenergymeasure.yamlfile` for the checks)."""
    from .yamlfile import read

    return read(path)


USER_CONFIG_KEYS = {"verbosity", "results_dir", "thermal_gaps", "notifications"}


def load_user_config(workdir: str | Path = ".") -> dict:
    """Per-machine preferences from ``.lem-config.yaml`` in the working directory ({} if absent)."""
    path = Path(workdir) / USER_CONFIG_FILE
    if not path.exists():
        return {}
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{USER_CONFIG_FILE}: expected a mapping of settings, got {type(data).__name__}")
    import difflib

    for key in data:
        if key not in USER_CONFIG_KEYS:
            close = difflib.get_close_matches(key, USER_CONFIG_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{USER_CONFIG_FILE}: unknown key '{key}'; allowed keys: {', '.join(sorted(USER_CONFIG_KEYS))}{hint}"
            )
    if data.get("verbosity") not in (None, "quiet", "normal", "verbose"):
        raise ConfigError(
            f"{USER_CONFIG_FILE}: key 'verbosity' = {data['verbosity']!r} is not allowed; allowed: quiet, normal, verbose"
        )
    gaps = data.get("thermal_gaps") or {}
    for key in gaps:
        if key not in ("between_experiments", "between_cycles"):
            raise ConfigError(
                f"{USER_CONFIG_FILE}: unknown key 'thermal_gaps.{key}'; allowed: between_experiments, between_cycles"
            )
    return data


def apply_user_config(campaign: dict, user: dict) -> dict:
    """Fill campaign keys the campaign file leaves unset from the machine's preferences."""
    defaults: dict = {}
    if "results_dir" in user:
        defaults["results_dir"] = user["results_dir"]
    gaps = user.get("thermal_gaps") or {}
    execution = {}
    if "between_experiments" in gaps:
        execution["config_gap_seconds"] = gaps["between_experiments"]
    if "between_cycles" in gaps:
        execution["cycle_gap_seconds"] = gaps["between_cycles"]
    if execution:
        defaults["execution"] = execution
    if user.get("notifications"):
        defaults["notifications"] = user["notifications"]
    return deep_merge(defaults, campaign)


def resolve_campaign(raw: Any, base_dir: str | Path = ".", workdir: str | Path = ".", env=None) -> dict:
    """Validate a raw campaign mapping and return it with defaults, preferences and the env override applied.

    ``base_dir`` is the folder of the campaign file (``configs`` paths are relative to it).
    """
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError(f"a campaign must be a mapping of keys, got {type(raw).__name__}")
    campaign = apply_user_config(raw, load_user_config(workdir))
    validate(campaign, SCHEMA)
    problem = campaign_problem(campaign)
    if problem:
        raise ConfigError(problem)
    resolved = fill_defaults(campaign, load_schema(SCHEMA), load_schema(SCHEMA))
    if env.get(RESULTS_DIR_ENV):
        resolved["results_dir"] = results_dir(env[RESULTS_DIR_ENV], f"environment variable {RESULTS_DIR_ENV}")
    else:
        resolved["results_dir"] = results_dir(resolved["results_dir"], "key 'results_dir'")
    resolved["_base_dir"] = str(Path(base_dir))
    if not resolved.get("configs") and not raw.get("grid"):
        raise ConfigError("the campaign defines no experiments: set 'grid' and/or 'configs'")
    return resolved


def results_dir(value: str, where: str) -> str:
    """``results_dir`` as the workflow uses it: ``~`` expanded, ``./``, doubled and trailing slashes removed
    (Snakemake refuses ``//`` in a path and reads braces as wildcards). Refused in one line: what cannot be a folder
    (a file, or a path through a file), braces, surrounding whitespace, control characters."""
    allowed = "allowed: a folder path"
    if not value or value != value.strip():
        raise ConfigError(f"{where} = {value!r} starts or ends with whitespace (or is empty); {allowed} without surrounding spaces")
    if any(ch in value for ch in "{}"):
        raise ConfigError(f"{where} = {value!r} contains '{{' or '}}', which Snakemake reads as wildcards; {allowed} without braces")
    if any(ord(ch) < 32 for ch in value):
        raise ConfigError(f"{where} = {value!r} contains a control character; {allowed}")
    path = os.path.normpath(os.path.expanduser(value))
    if path.startswith("//"):  # POSIX keeps a leading '//' as it is
        path = "/" + path.lstrip("/")
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
        raise ConfigError(f"{path}: {exc}") from None


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
    warm = resolved.get("warmup")
    if warm and (warm.get("enabled") is False and warm.get("mode") == "full" or warm.get("mode") == "off"):
        warm["enabled"], warm["mode"] = False, "off"  # enabled: false and mode: off are the same warm-up (none)
    if resolved.get("backend") in BACKENDS and resolved["device"] == "cuda" and backend_rules(resolved["backend"]).gpu_only:
        resolved["device"] = "auto"  # the same thing for a CUDA-only engine: one experiment id, not two
    resolved.pop("config_name", None)
    return resolved


def sparse_config(config: dict) -> dict:
    """A resolved experiment without the values that equal their defaults: what the id is derived from and what
    the measurement job gets as params. A later version adding a field with a default changes neither, so
    finished measurements keep their ids."""
    return prune_defaults(config, experiment_schema(config["backend"]), load_schema(SCHEMA))


def complete_config(sparse: dict) -> dict:
    """The resolved experiment back from :func:`sparse_config` (defaults filled in; presets already expanded)."""
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
    """Why a schema-valid resolved config cannot run, or None: the rules that span backends (here), then the
    experiment's backend's own rules (``problem`` in its module, found through :mod:`llenergymeasure.backends`)."""
    backend = config["backend"]
    if backend not in BACKENDS:
        return f"backend '{backend}' is not available in this version (available: {', '.join(BACKENDS)})"
    for other in BACKENDS:
        if other != backend and config.get(other):
            key = next(iter(_dotted(config[other], other)))
            return f"{key} is set, but backend = {backend}: a {other} section applies to backend {other} only"
    rules = backend_rules(backend)
    if rules.gpu_only and config["device"] == "cpu":
        return f"backend = {backend} runs on CUDA GPUs only, but device = cpu"
    problem = rules.problem(config)
    if problem:
        return problem
    if config["min_output_tokens"] > config["max_output_tokens"]:
        return (
            f"min_output_tokens = {config['min_output_tokens']} is larger than "
            f"max_output_tokens = {config['max_output_tokens']}"
        )
    if config["no_weights"]:
        from .synthetic import resolve_architecture

        try:
            resolve_architecture(config["model_name"])
        except ConfigError as exc:
            return str(exc)
    problem = decoder_problem(config["decoder"])
    if problem:
        return problem
    if config["device"] == "cpu" and config["gpus"] != [0]:
        return f"gpus = {config['gpus']} selects CUDA devices, but device = cpu"
    problem = measurement_problem(config)
    if problem:
        return problem
    needed = rules.gpus(config)
    if (rules.gpu_only or config["device"] == "cuda" or needed > 1) and config["device"] != "cpu" and needed != len(config["gpus"]):
        return (f"{rules.gpus_knob} = {needed}, but gpus lists {len(config['gpus'])} GPU(s) {config['gpus']}: list exactly the GPUs "
                "the experiment uses, so that its energy covers them all and no other" + ("" if rules.gpu_only else " (or device: cpu)"))  # fmt: skip
    return None


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
    if energy["cpu_tdp_w"] is not None and energy["backend"] in ("rapl", "codecarbon"):
        return f"energy.cpu_tdp_w sets the TDP of the CPU estimate, which energy.backend = {energy['backend']} never uses"
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
            return (f"decoder.temperature = {decoder['temperature']} shapes sampling, but decoding is greedy "
                    "(decoder.do_sample = false; temperature 0 also means greedy)")  # fmt: skip
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


def _grid_candidates(campaign: dict) -> list[tuple[str, dict]]:
    grid = campaign.get("grid")
    if not grid:
        return []
    shared = grid.get("shared") or {}
    overrides = grid.get("backend_overrides") or {}
    for key, values in shared.items():
        for value in _axis(values, key):
            validate_value(value, key, SCHEMA, "experiment", "grid.shared")
    for backend, axes in overrides.items():
        for key, values in axes.items():
            for value in _axis(values, f"{backend}.{key}"):
                validate_value(value, f"{backend}.{key}", SCHEMA, "experiment", "grid.backend_overrides")
    models = grid.get("models") or [campaign.get("model")]
    if None in models:
        raise ConfigError("grid: no model: set 'model' or 'grid.models'")
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
                    for key, value in zip(shared_keys, shared_vals):
                        set_dotted(config, key, value)
                        if isinstance(shared[key], list) and len(shared[key]) > 1:
                            varied[key] = value
                    for key, value in zip(ov_keys, ov_vals):
                        set_dotted(config, f"{backend}.{key}", value)
                        if isinstance(ov[key], list) and len(ov[key]) > 1:
                            varied[f"{backend}.{key}"] = value
                    name = config.pop("config_name", None) or _auto_name(backend, model, varied)
                    candidates.append((name, config))
    return candidates


def _file_candidates(campaign: dict) -> list[tuple[str, dict]]:
    base_dir = Path(campaign.get("_base_dir", "."))
    candidates = []
    for rel in campaign.get("configs") or []:
        path = base_dir / rel
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"experiment config '{rel}': expected a mapping, got {type(data).__name__}")
        name = data.get("config_name") or Path(rel).stem
        candidates.append((name, data, rel))
    return candidates


def expand(campaign: dict) -> Expansion:
    """Grid x configs -> unique experiments (in campaign order) plus dropped combinations with reasons.

    Errors in an experiment file or a grid value are user errors (ConfigError); combinations that are each valid
    but cannot run together are dropped with a reason.
    """
    defaults = _campaign_defaults(campaign)
    seen: dict[str, Experiment] = {}
    experiments: list[Experiment] = []
    dropped: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []

    def add(name: str, raw: dict, source: str, strict: bool) -> None:
        merged = deep_merge(defaults, raw)
        try:
            validate(merged, SCHEMA, prefix=source, ref="experiment")
        except ConfigError as exc:
            if strict:
                raise
            dropped.append((name, str(exc)))
            return
        config = resolve_experiment(merged)
        problem = semantic_problem(config)
        if problem:
            if strict and config["backend"] in BACKENDS:
                raise ConfigError(f"{source}: {problem}")
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

    for name, data, rel in _file_candidates(campaign):
        add(name, data, f"configs[{rel}]", strict=True)
    for name, config in _grid_candidates(campaign):
        add(name, config, "grid", strict=False)
    if not experiments:
        reasons = "; ".join(f"{n}: {r}" for n, r in dropped[:3]) or "nothing to expand"
        raise ConfigError(f"the campaign expands to no runnable experiment ({reasons})")
    names: dict[str, int] = {}
    unique = []
    for exp in experiments:
        n = names.get(exp.config_name, 0)
        names[exp.config_name] = n + 1
        if n:
            exp = Experiment(exp.experiment_id, f"{exp.config_name}-{n + 1}", exp.config, exp.source, exp.params)
        unique.append(exp)
    return Expansion(unique, dropped, duplicates)


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
    that cycles added later keep the campaign's order."""

    campaign: dict
    expansion: Expansion
    order: list[tuple[str, int]]
    by_id: dict[str, Experiment]
    priority: dict[tuple[str, int], int]
    target: Target | None = None

    @property
    def name(self) -> str:
        return self.campaign["campaign_name"]

    @property
    def results_root(self) -> str:
        return f"{self.campaign['results_dir']}/{self.name}"


def plan(campaign: dict) -> Plan:
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
    return Plan(campaign, expansion, order, {e.experiment_id: e for e in expansion.experiments}, priority, target)
