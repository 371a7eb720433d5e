"""Files written for lem v3, the Typer-based tool this workflow re-implements: its keys read here.

:data:`EXPERIMENT`, :data:`CAMPAIGN` and :data:`USER` are the migration table (experiment files, campaign files,
``.lem-config.yaml``). For every key lem v3 read or documented that this tool spells differently or lacks, a rule
says what happens to a file that sets it, before the file is validated:

- ``rename``: the key worked in lem and has a direct equivalent here. The value moves to the new key, one note
  names the new key, and the resolved experiment (hence its id) is exactly the one the new key gives.
- ``ignore``: the key changes nothing here: lem accepted it but never acted on it, or it asks for what this tool
  does anyway. It is dropped with one note saying why. Where only some values ask for nothing (``inert``), the
  others are refused.
- ``refuse``: lem silently ignored the key (a file setting it measured something else than it says, so aliasing it
  would change what the file measures), or it asked for a feature this tool does not offer. One problem line names
  the key, its value, what lem did with it, and what to write here instead.
- ``convert``: one lem setting that maps onto several keys here (``prompts``, ``traffic_simulation``), or another
  spelling of a value (``gpus: 0``). A value that asks for nothing (``inert``, a section switched off) is ignored
  with a note; where the keys here measure it differently from lem, further notes say how (``caveats``).

The table is consulted before any fuzzy "did you mean", so a key of lem is answered by what it meant there.

The same ``rename`` rules read this tool's own former spellings (``former``): keys of seconds were spelled
``_sec`` or ``_seconds`` (as lem spelled them) before every key said ``_s``, like the results do. A file that uses
a former spelling runs as before, with one note naming the key to write.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backends import BACKENDS
from .config import document_order, flow

LEM = "lem v3"  # how messages name the reference tool (its configs carry schema_version 3.0.0)

#: the batching knob of each backend here, and lem's key it answers
BATCH_KEY = {"pytorch": "batch_size", "vllm": "max_num_seqs", "tensorrt": "max_batch_size"}
TOKEN_BUDGET_KEY = {"pytorch": "max_tokens_per_batch", "vllm": "max_num_batched_tokens", "tensorrt": "max_num_tokens"}
PARALLEL_KEYS = {"vllm": ("tensor_parallel_size", "pipeline_parallel_size"), "tensorrt": ("tp_size", "pp_size")}


class Refusal(Exception):
    """Raised by a ``convert`` function: the value has no equivalent here; the message says what to write instead."""


@dataclass(frozen=True)
class Where:
    """What a rule may need to word its hint: the experiment's backend (None when unknown or in a grid, where every
    backend of ``grid_backends`` applies)."""

    backend: str | None = None
    grid_backends: tuple[str, ...] = ()
    in_grid: bool = False

    def backends(self) -> tuple[str, ...]:
        return (self.backend,) if self.backend else (self.grid_backends or BACKENDS)


@dataclass(frozen=True)
class Rule:
    action: str  # rename | ignore | refuse | convert | unset
    why: str = ""  # what lem did with the key (the note, or the reason of a refusal)
    new: str = ""  # rename: the key here
    inert: Callable[[Any], bool] | None = None  # ignore: the values that ask for nothing; others are refused ...
    refused: str = ""  # ... for this reason
    instead: str | Callable[[Any, Where], str] = ""  # what to write here instead of a refused value
    convert: Callable[[Any, dict, Where], dict] | None = None  # convert: {new dotted key: value}, or raises Refusal
    off: str = ""  # convert: why an inert value (inert above: one that asks for nothing) is ignored
    caveats: Callable[[Any, str], list[str]] | None = None  # convert: (value, its key's name) -> how it differs here
    former: bool = False  # rename: the key is this tool's own former spelling (and lem's), not lem's alone

    def hint(self, value: Any, where: Where) -> str:
        return self.instead(value, where) if callable(self.instead) else self.instead

    def name_for(self, new_name: str) -> str:
        """What a renamed key is: lem's name for the key here, or the former spelling of it."""
        if self.former:
            return f"the former spelling of '{new_name}' (seconds are '_s' in every key)"
        return f"{LEM}'s name for '{new_name}'"


@dataclass
class Migrated:
    data: dict
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # new dotted key -> lem's key, as written


# ----------------------------------------------------------------------------------------------- value helpers


def _off(value: Any) -> bool:
    """A lem feature section or flag that asks for nothing: false, null, {} or a section with enabled: false (or
    without ``enabled``, whose default was false)."""
    if value is None or value is False or value == {}:
        return True
    return isinstance(value, dict) and not value.get("enabled", False)


def _equals(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value in allowed


# ----------------------------------------------------------------------------------------------- hints


def _write(key: str) -> Callable[[Any, Where], str]:
    """The hint "write <key>: <value>", as a grid key in a grid (a backend's key under backend_overrides)."""

    def hint(value: Any, where: Where) -> str:
        if not where.in_grid:
            return f"{key}: {flow(value)}"
        section, _, inner = key.partition(".")
        if section in BACKENDS:
            return f"grid.backend_overrides: {flow({section: {inner: value}})}"
        return f"grid.shared.{key}: {flow(value)}"

    return hint


def _batch(value: Any, where: Where) -> str:
    if where.in_grid:
        return "grid.backend_overrides: " + flow({b: {BATCH_KEY[b]: value} for b in where.backends()})
    return " or ".join(
        f"{b}.{BATCH_KEY[b]}: {flow(value)}" + ("" if where.backend else f" (backend {b})") for b in where.backends()
    )


def _batching_section(value: Any, where: Where) -> str:
    value = value if isinstance(value, dict) else {}
    per_backend = {}
    for b in where.backends():
        out: dict = {}
        if "batch_size" in value:
            out[BATCH_KEY[b]] = value["batch_size"]
        budget = value.get("max_tokens_per_batch")
        strategy = value.get("strategy") or ("dynamic" if value.get("dynamic_batching") else None)
        if b == "pytorch" and strategy:
            out["batching_strategy"] = strategy
            if budget is None and "dynamic" in strategy:
                budget = "N (the token budget the dynamic strategies need here)"
        if budget is not None:
            out[TOKEN_BUDGET_KEY[b]] = budget
        per_backend[b] = out
    if where.in_grid:
        return "grid.backend_overrides: " + flow({b: v for b, v in per_backend.items() if v})
    return " or ".join(f"{b}: {flow(v)}" if v else f"{b}: (batches form by themselves)" for b, v in per_backend.items())


def _sharding(value: Any, where: Where) -> str:
    value = value if isinstance(value, dict) else {}
    degree = value.get("num_shards", "N")
    index = 1 if value.get("strategy") == "pipeline_parallel" else 0
    engines = [b for b in where.backends() if b in PARALLEL_KEYS] or list(PARALLEL_KEYS)
    text = " or ".join(f"backend: {b} with {b}: {{{PARALLEL_KEYS[b][index]}: {degree}}}" for b in engines)
    return f"{text}; PyTorch here runs data parallel only (pytorch.num_processes), one GPU per process"


def _min_p(value: Any, where: Where) -> str:
    return (
        " or ".join(_write(f"{b}.min_p")(value, where) for b in where.backends() if b != "tensorrt")
        or "pytorch.min_p or vllm.min_p (TensorRT-LLM has none)"
    )


def _quantization(value: Any, where: Where) -> str:
    options = {
        "pytorch": "pytorch.load_in_4bit / pytorch.load_in_8bit (BitsAndBytes)",
        "vllm": "vllm.quantization (awq, gptq, fp8, bitsandbytes)",
        "tensorrt": "tensorrt.quantization (fp8, int8_sq, int8_weight_only, int4_awq)",
    }
    return " or ".join(options[b] for b in where.backends())


def _axes(value: Any, where: Where) -> str:
    """grid.axes -> grid.shared and grid.backend_overrides, axis by axis."""
    if not isinstance(value, dict):
        return "grid.shared (axes of every backend) and grid.backend_overrides (axes of one backend's section)"
    shared, overrides = {}, {}
    for key, values in value.items():
        rule = EXPERIMENT.get(key)
        # what lem v3's generate-grid command read as pytorch.batch_size
        if key in ("batch_size", "batching.batch_size"):
            for b in where.backends():
                overrides.setdefault(b, {})[BATCH_KEY[b]] = values
        elif rule and rule.action == "rename":
            shared[rule.new] = values
        else:
            shared[key] = values
    parts = [f"grid.shared: {flow(shared)}"] if shared else []
    parts += [f"grid.backend_overrides: {flow(overrides)}"] if overrides else []
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------- conversions


def _prompts(value: Any, data: dict, where: Where) -> dict:
    """lem's ``prompts`` source, as ``dataset`` (and ``num_input_prompts``) here, where that is the same source."""
    if not isinstance(value, dict):
        raise Refusal(
            "a mapping {type: file, path: ...} or {type: huggingface, dataset: ...}; here: dataset: {name: ...}"
        )
    if data.get("dataset") is not None:
        raise Refusal("lem used 'dataset' and ignored 'prompts' when both were set: remove 'prompts'")
    kind = value.get("type", "huggingface" if "dataset" in value else "file")
    if kind == "file":
        extra = sorted(set(value) - {"type", "path"})
        if "path" not in value or extra:
            raise Refusal(f"dataset: {{name: {flow(value.get('path', 'FILE'))}}}")
        return {"dataset.name": value["path"]}
    known = {"type", "dataset", "split", "subset", "column", "sample_size", "shuffle", "seed"}
    unknown = sorted(set(value) - known)
    target = {"name": value.get("dataset")} | {
        k: value[k] for k in ("split", "subset", "column") if value.get(k) is not None
    }
    count = {"num_input_prompts": value["sample_size"]} if value.get("sample_size") is not None else {}
    if value.get("shuffle"):
        raise Refusal(
            f"dataset: {flow({**target, 'shuffle': True})}{' with num_input_prompts: ' + str(value['sample_size']) if count else ''}"
            " (shuffled by this tool's own seeded shuffle, seeded by random_seed: the prompts chosen differ from lem's)"
        )
    if unknown or not value.get("dataset"):
        raise Refusal(f"dataset: {flow(target)}")
    out = {f"dataset.{k}": v for k, v in target.items()}
    out.update(count)
    return out


def _gpus(value: Any, data: dict, where: Where) -> dict:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"gpus": [value]}
    return {"gpus": value}


#: lem's traffic_simulation: its keys, and its modes (the first its default), each a load.arrival here
TRAFFIC_KEYS = ("enabled", "mode", "target_qps", "seed")
TRAFFIC_MODES = ("poisson", "constant")
TRAFFIC_DEFAULTS = {"mode": "poisson", "target_qps": 1.0}


def _traffic(value: Any, data: dict, where: Where) -> dict:
    """lem's traffic simulation (switched on) as the ``load`` section: its mode is the arrival, target_qps the
    rate, its seed the seed of the random (Poisson) arrivals; constant arrivals have no random part, so there the
    seed goes (:func:`_traffic_caveats` says so)."""
    shape = "load: {arrival: poisson | constant, rate_per_s: N, seed: S} (seed for poisson only)"
    if not isinstance(value, dict):
        raise Refusal(f"a section {{enabled: true, mode: poisson | constant, target_qps: N, seed: S}}, read as {shape}")
    unknown = [k for k in value if k not in TRAFFIC_KEYS]
    if unknown:
        raise Refusal(
            f"the keys {', '.join(TRAFFIC_KEYS)} of {LEM}'s section (not {', '.join(map(str, unknown))}), read as {shape}"
        )
    mode = value.get("mode", TRAFFIC_DEFAULTS["mode"])
    if mode not in TRAFFIC_MODES:
        raise Refusal(
            f"mode {' | '.join(TRAFFIC_MODES)}, read as {shape}; for other arrivals write load: {{arrival: gamma | "
            "closed | trace, ...} (config/README.md, Serving load)"
        )
    out = {"load.arrival": mode, "load.rate_per_s": value.get("target_qps", TRAFFIC_DEFAULTS["target_qps"])}
    if mode == "poisson" and value.get("seed") is not None:
        out["load.seed"] = value["seed"]
    return out


def _traffic_caveats(value: Any, name: str) -> list[str]:
    """What a migrated traffic simulation measures differently: lem slept between batches, this tool submits each
    request at its arrival; the seed of constant arrivals goes."""
    notes = [
        f"'{name}': {LEM} slept before each batch but the first (the gap drawn for its mode and target_qps, inside "
        "the energy window) and then ran the batch; here each request is submitted at its own arrival time into a "
        f"running engine, so results measured under {LEM}'s traffic simulation are not comparable with these"
    ]
    if value.get("mode", TRAFFIC_DEFAULTS["mode"]) == "constant" and value.get("seed") is not None:
        notes.append(
            f"'{name}.seed' = {flow(value['seed'])} is dropped: constant arrivals have no random part (load.seed "
            "applies to poisson and gamma)"
        )
    return notes


# ----------------------------------------------------------------------------------------------- the table

NEVER_READ = f"{LEM} never read it"
NO_DAEMON = "leave it out, and schedule snakemake itself (cron, a systemd timer, or Slurm's sbatch --begin)"


def pre_v3(measured: str = "the default") -> str:
    return f"a key of lem before v3, which {LEM} no longer read: a file setting it measured {measured}"


#: experiment files (also the keys of grid.shared, and, under their backend, of grid.backend_overrides)
EXPERIMENT: dict[str, Rule] = {
    "schema_version": Rule("ignore", f"the version of {LEM}'s config schema; files here carry none"),
    "dataset.sample_size": Rule("rename", f"{LEM} took the prompt count from it", new="num_input_prompts"),
    "timeseries.enabled": Rule("rename", f"{LEM}'s power/thermal sampling", new="timeline.enabled"),
    "timeseries.save": Rule("rename", f"{LEM}'s time-series file", new="timeline.save"),
    "timeseries.sample_interval_ms": Rule("rename", f"{LEM}'s sampling interval", new="timeline.interval_ms"),
    "baseline.duration_sec": Rule("rename", "the idle baseline's length", new="baseline.duration_s", former=True),
    "baseline.cache_ttl_sec": Rule(
        "rename", "how long a cached baseline is reused", new="baseline.cache_ttl_s", former=True
    ),
    "energy.min_window_sec": Rule("rename", "the shortest unflagged window", new="energy.min_window_s", former=True),
    "prompts": Rule("convert", f"{LEM}'s advanced prompt source", convert=_prompts),
    "gpus": Rule("convert", "a single GPU index", convert=_gpus),
    # keys lem v3 silently ignored: aliasing them would change what an old file measures
    "batching": Rule("refuse", pre_v3("batch size 1"), instead=_batching_section),
    "batching_options": Rule("refuse", pre_v3("batch size 1"), instead=_batching_section),
    "batch_size": Rule("refuse", pre_v3("batch size 1"), instead=_batch),
    "dynamic_batching": Rule(
        "refuse", pre_v3("static batches"), instead="pytorch: {batching_strategy: dynamic, max_tokens_per_batch: N}"
    ),
    "max_new_tokens": Rule(
        "refuse", pre_v3("up to max_output_tokens new tokens (128 unless set)"), instead=_write("max_output_tokens")
    ),
    "num_cycles": Rule(
        "refuse", pre_v3("one cycle; campaigns own repetition"), instead="execution.cycles in the campaign file"
    ),
    "num_processes": Rule("refuse", pre_v3("one process"), instead=_write("pytorch.num_processes")),
    "sharding": Rule("refuse", pre_v3("an unsharded model"), instead=_sharding),
    "sharding_config": Rule("refuse", pre_v3("an unsharded model"), instead=_sharding),
    "gpu_list": Rule("refuse", pre_v3(), instead=_write("gpus")),
    "precision": Rule("refuse", pre_v3(), instead=_write("fp_precision")),
    "seed": Rule("refuse", pre_v3(), instead=_write("random_seed")),
    "decoder_config": Rule("refuse", pre_v3(), instead=_write("decoder")),
    **{
        k: Rule("refuse", pre_v3(), instead=_write(f"decoder.{k}"))
        for k in ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty")
    },
    "quantization": Rule("refuse", pre_v3("unquantised weights"), instead=_quantization),
    "quantization_config": Rule("refuse", pre_v3("unquantised weights"), instead=_quantization),
    "decoder.min_p": Rule("refuse", f"{LEM}'s decoder has no min_p and dropped it", instead=_min_p),
    "decoder.no_repeat_ngram_size": Rule(
        "refuse",
        f"{LEM}'s decoder has no no_repeat_ngram_size and dropped it",
        instead=_write("pytorch.no_repeat_ngram_size"),
    ),
    "warmup_runs": Rule("refuse", NEVER_READ, instead="warmup.max_prompts (and warmup.mode)"),
    "query_rate": Rule(
        "ignore",
        f"{NEVER_READ} (at its default)",
        inert=_equals(1, 1.0),
        refused=f"{NEVER_READ}: requests were never rate-limited",
        instead="leave it out (requests are submitted as fast as the engine takes them)",
    ),
    "decode_token_to_text": Rule(
        "ignore",
        NEVER_READ,
        inert=_equals(False),
        refused=NEVER_READ,
        instead="leave it out (generated text is not kept)",
    ),
    "is_encoder_decoder": Rule(
        "ignore",
        NEVER_READ,
        inert=_equals(False),
        refused=NEVER_READ,
        instead="leave it out (decoder-only models are measured here)",
    ),
    "task_type": Rule(
        "ignore",
        NEVER_READ,
        inert=_equals("text_generation"),
        refused=NEVER_READ,
        instead="leave it out (text generation is measured here)",
    ),
    "inference_type": Rule(
        "ignore",
        NEVER_READ,
        inert=_equals("pure_generative"),
        refused=NEVER_READ,
        instead="leave it out (generation is measured here)",
    ),
    # features of lem this tool does not offer: refused when a file asks for them, ignored when it switches them off
    "_extends": Rule(
        "refuse",
        f"{LEM}'s inheritance between files is not offered here",
        instead="the base file's keys copied in; values every experiment shares belong in the campaign (grid.shared, dataset, num_samples)",
    ),
    "streaming": Rule(
        "ignore",
        f"{LEM}'s streaming mode, switched off; latency (TTFT, ITL) is measured in every run here, from token arrivals",
        inert=_off,
        refused=f"{LEM}'s streaming mode is not offered here: latency (TTFT, ITL) is measured in every run, from token arrivals",
        instead=lambda v, w: f"one request at a time, as lem's streaming mode ran them, is {_batch(1, w)}",
    ),
    "streaming_warmup_requests": Rule("ignore", f"{LEM}'s streaming warm-up; every run here warms up (warmup.*)"),
    "traffic_simulation": Rule(
        "convert",
        f"{LEM}'s traffic simulation",
        convert=_traffic,
        inert=_off,
        off=f"{LEM}'s traffic simulation, switched off",
        caveats=_traffic_caveats,
    ),
    "schedule": Rule(
        "ignore",
        f"{LEM}'s daemon schedule, switched off",
        inert=_off,
        refused=f"{LEM}'s daemon schedule is not offered here",
        instead=NO_DAEMON,
    ),
    "io": Rule(
        "ignore",
        "no results folder set",
        inert=lambda v: v is None or (isinstance(v, dict) and not v.get("results_dir")),
        refused="an experiment file does not choose the results folder here",
        instead="results_dir in the campaign file (or LLM_ENERGY_RESULTS_DIR; lem run --output FILE)",
    ),
    "save_outputs": Rule(
        "ignore",
        "generated text is not kept here either",
        inert=_equals(False),
        refused=f"{LEM}'s saved outputs are not offered here",
        instead="leave it out (generated text is not kept; token counts and timings are)",
    ),
    "pytorch.low_cpu_mem_usage": Rule(
        "ignore",
        "it is how transformers loads models here anyway",
        inert=_equals(True),
        refused="transformers' low-memory loading cannot be switched off here",
        instead="leave it out",
    ),
    "pytorch.max_memory": Rule(
        "ignore",
        "no memory cap set",
        inert=_equals(None),
        refused="a memory cap is not offered here",
        instead="leave it out (each process loads the whole model onto its own device)",
    ),
    "pytorch.output_scores": Rule(
        "ignore",
        "scores are not kept here either",
        inert=_equals(False),
        refused="keeping scores is not offered here",
        instead="leave it out (keeping them would add host work to the window)",
    ),
    "pytorch.return_dict_in_generate": Rule("ignore", "how generate() hands back its tokens is this tool's choice"),
    "pytorch.beam_search": Rule(
        "ignore",
        "beam search, switched off",
        inert=_off,
        refused="beam search is not offered here",
        instead="sampling or greedy decoding (decoder.*)",
    ),
    "pytorch.assisted_generation": Rule(
        "ignore",
        "assisted generation, switched off",
        inert=lambda v: v is None or (isinstance(v, dict) and not v.get("model")),
        refused="assisted generation is not offered for PyTorch here",
        instead="speculative decoding on vLLM (vllm.speculative)",
    ),
    "pytorch.use_bettertransformer": Rule(
        "ignore",
        "BetterTransformer, switched off",
        inert=_equals(False),
        refused="BetterTransformer is not offered here (transformers deprecated it)",
        instead="pytorch.attn_implementation: sdpa (the default)",
    ),
    # null where lem meant "not set": left out (any other value is read as it is)
    **{
        k: Rule("unset")
        for k in (
            "dataset",
            "pytorch",
            "vllm",
            "tensorrt",
            "pytorch.torch_compile_backend",
            "pytorch.cache_implementation",
            "vllm.attention",
            "vllm.speculative",
            "vllm.lora",
            "vllm.speculative.method",
            "tensorrt.calibration",
        )
    },
}

#: campaign files (their grid keys are read with EXPERIMENT)
CAMPAIGN: dict[str, Rule] = {
    "schema_version": EXPERIMENT["schema_version"],
    "execution.warmup_prompts": Rule(
        "ignore", f"{LEM} displayed it but never ran a campaign warm-up; every experiment here warms up (warmup.*)"
    ),
    "execution.warmup_timeout_seconds": Rule(
        "ignore", f"{LEM} displayed it but never ran a campaign warm-up; every experiment here warms up (warmup.*)"
    ),
    "cold_start": Rule(
        "ignore", f"{LEM} accepted it but it had no effect; every measurement here is a new process, warmed up"
    ),
    "group_by": Rule(
        "ignore",
        f"{LEM} grouped its end-of-campaign display with it; here: summary.csv, lem results --sort, lem compare",
    ),
    "health_check": Rule("ignore", f"{LEM} never executed it"),
    "schedule": Rule("ignore", f"{LEM} never executed it"),
    "daemon": Rule(
        "ignore",
        f"{LEM}'s daemon mode, switched off",
        inert=_off,
        refused=f"{LEM}'s daemon mode is not offered here",
        instead=NO_DAEMON,
    ),
    "experiments": Rule(
        "ignore",
        f"{LEM} never read it",
        inert=lambda v: not v,
        refused=f"{LEM} never read it, so these experiments were never measured",
        instead="configs: [FILE, ...] (experiment files; put per-file overrides in the files)",
    ),
    "grid.axes": Rule(
        "refuse",
        f"{LEM} never read it (its grid took shared and backend_overrides), so these axes were never measured",
        instead=_axes,
    ),
    "io.results_dir": Rule("rename", f"{LEM}'s results folder", new="results_dir"),
    "execution.config_gap_seconds": Rule(
        "rename", "the gap between windows", new="execution.config_gap_s", former=True
    ),
    "execution.cycle_gap_seconds": Rule("rename", "the gap between cycles", new="execution.cycle_gap_s", former=True),
    "io.state_dir": Rule("ignore", "progress lives in Snakemake's records and the results folder here"),
    "io.manifest_filename": Rule("ignore", "progress lives in Snakemake's records and the results folder here"),
    "io.configs_dir": Rule("ignore", f"{LEM} never read it"),
}

#: a key's former spelling -> the key (leaf names: ``duration_sec`` -> ``duration_s``), from the ``rename`` rules
#: marked ``former``: a value given on the command line under the former name is read as the type of the key
#: (:func:`llenergymeasure.config.coerce_overrides`)
FORMER_SPELLINGS: dict[str, str] = {
    old.rsplit(".", 1)[-1]: rule.new.rsplit(".", 1)[-1]
    for old, rule in {**EXPERIMENT, **CAMPAIGN}.items()
    if rule.action == "rename" and rule.former
}

#: .lem-config.yaml
USER: dict[str, Rule] = {
    "docker": Rule(
        "ignore",
        f"{LEM}'s container strategy; here each measurement runs in its backend's image (the campaign's containers:, with --sdm apptainer)",
    ),
}

#: the keys this tool has in an experiment (a rule of a section that is one of them applies to that key only)
_OWN_SECTIONS = (
    "dataset",
    "decoder",
    "pytorch",
    "vllm",
    "tensorrt",
    "warmup",
    "baseline",
    "energy",
    "timeline",
    "load",
    "extra_metadata",
)


# ----------------------------------------------------------------------------------------------- applying it

_MISSING = object()


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _pop(data: dict, dotted: str) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        data = data[part]
    del data[parts[-1]]


def _put(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[parts[-1]] = value


def _name(prefix: str, dotted: str) -> str:
    return f"{prefix}.{dotted}" if prefix else dotted


def _refusal(rule: Rule, name: str, value: Any, where: Where) -> str:
    why = rule.why if rule.action == "refuse" else rule.refused
    return f"key '{name}' = {flow(value)}: {why}; allowed here: {rule.hint(value, where)}"


def _apply(data: dict, table: dict[str, Rule], prefix: str, where: Where, out: Migrated) -> None:
    original = copy.deepcopy(data)
    notes: list[tuple[str, str]] = []  # (key, line): listed in the order the file gives its keys
    problems: list[tuple[str, str]] = []
    unset = []
    # deeper keys first, so that a section's renamed keys have left before the section itself is looked at
    for key in sorted(table, key=lambda k: -k.count(".")):
        value = _get(data, key)
        if value is _MISSING:
            continue
        rule, name = table[key], _name(prefix, key)
        if rule.action == "unset":
            if value is None:
                _pop(data, key)
                unset.append(name)
            continue
        if rule.action == "rename":
            current = _get(data, rule.new)
            new_name = _name(prefix, rule.new)
            if current is not _MISSING and current != value:
                used = "" if rule.former else f" ({LEM} used '{key}')"
                problems.append(
                    (
                        key,
                        f"key '{name}' = {flow(value)} is {rule.name_for(new_name)} ({rule.why}), which the "
                        f"file also sets, to {flow(current)}: keep one{used}",
                    )
                )
                _pop(data, key)  # named once, as a problem: validation need not name it again
                continue
            _pop(data, key)
            _put(data, rule.new, value)
            out.renamed[rule.new] = key
            notes.append(
                (key, f"'{name}' is {rule.name_for(new_name)}: read as {new_name} = {flow(value)} (rename it)")
            )
        elif rule.action == "convert" and not (rule.inert and rule.inert(value)):
            try:
                updates = rule.convert(value, {k: v for k, v in data.items() if k != key}, where)
            except Refusal as exc:
                problems.append(
                    (
                        key,
                        f"key '{name}' = {flow(value)} ({rule.why}) has no exact equivalent here; allowed here: {exc}",
                    )
                )
                _pop(data, key)
                continue
            if updates == {key: value}:
                continue
            clash = [k for k, v in updates.items() if k != key and _get(data, k) not in (_MISSING, v)]
            if clash:
                problems.append(
                    (
                        key,
                        f"key '{name}' = {flow(value)} ({rule.why}) sets {', '.join(_name(prefix, k) for k in clash)}, "
                        "which the file also sets, to another value: keep one",
                    )
                )
                _pop(data, key)
                continue
            _pop(data, key)
            for new, new_value in updates.items():
                _put(data, new, new_value)
                out.renamed.setdefault(new, key)
            shown = ", ".join(f"{_name(prefix, k)} = {flow(v)}" for k, v in updates.items())
            notes.append((key, f"'{name}' ({rule.why}) is read as {shown} (write that instead)"))
            notes.extend((key, line) for line in (rule.caveats(value, name) if rule.caveats else []))
        elif rule.action == "convert" or (rule.action == "ignore" and (rule.inert is None or rule.inert(value))):
            _pop(data, key)  # a convert rule's value here is inert
            notes.append((key, f"'{name}' is ignored: {rule.off or rule.why}"))
        else:
            problems.append((key, _refusal(rule, name, value, where)))
            _pop(data, key)
        _drop_empty_parents(data, key)

    def order(item: tuple[str, str]) -> tuple:
        return document_order(original, item[0].split("."))

    out.problems.extend(text for _, text in sorted(problems, key=order))
    out.notes.extend(text for _, text in sorted(notes, key=order))
    if unset:
        out.notes.append(
            f"{', '.join(repr(n) for n in unset)} = null ({LEM}'s way of leaving a setting unset): left out"
        )


def _drop_empty_parents(data: dict, key: str) -> None:
    """A section of lem's left empty by moving its keys away (``timeseries: {}`` once renamed) goes too."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        if _get(data, parent) == {} and parent not in _OWN_SECTIONS:
            _pop(data, parent)


def migrate_experiment(data: dict, prefix: str = "") -> Migrated:
    """An experiment file's mapping with lem's keys read (see the module docstring); ``prefix`` names the file in
    messages (``configs[a.yaml]``)."""
    out = Migrated(copy.deepcopy(data))
    backend = out.data.get("backend", "pytorch")
    _apply(out.data, EXPERIMENT, prefix, Where(backend if backend in BACKENDS else None), out)
    return out


def migrate_campaign(data: dict) -> Migrated:
    """A campaign file's mapping with lem's keys read, its grid keys included."""
    out = Migrated(copy.deepcopy(data))
    grid = out.data.get("grid")
    listed = grid.get("backends") if isinstance(grid, dict) else None
    backends = tuple(b for b in listed if b in BACKENDS) if isinstance(listed, list) else ()
    _apply(out.data, CAMPAIGN, "", Where(grid_backends=backends, in_grid=True), out)
    grid = out.data.get("grid")
    if isinstance(grid, dict) and isinstance(grid.get("shared"), dict):
        grid["shared"] = _migrate_axes(
            grid["shared"], "", "grid.shared", Where(grid_backends=backends, in_grid=True), out
        )
    if isinstance(grid, dict) and isinstance(grid.get("backend_overrides"), dict):
        for b, axes in grid["backend_overrides"].items():
            if isinstance(axes, dict) and b in BACKENDS:
                grid["backend_overrides"][b] = _migrate_axes(
                    axes, f"{b}.", f"grid.backend_overrides.{b}", Where(b, in_grid=True), out
                )
    return out


def _migrate_axes(axes: dict, section: str, prefix: str, where: Where, out: Migrated) -> dict:
    """Grid axes: dotted experiment keys (inside ``section``, a backend's, for backend_overrides) mapped to one value
    or a list of values. A renamed key keeps its values; an ignored key goes when every value asks for nothing."""
    result = {}
    for key, values in axes.items():
        dotted = f"{section}{key}"
        rule, ruled = _rule_for(dotted)
        name = f"{prefix}.{key}"
        items = values if isinstance(values, list) else [values]
        if (
            rule is None
            or (rule.action == "unset" and values is not None)
            or (rule.action == "convert" and ruled == "gpus")
        ):
            result[key] = values
        elif rule.action == "unset":
            out.notes.append(f"'{name}' = null ({LEM}'s way of leaving a setting unset): left out")
        elif rule.action == "rename" and ruled == dotted and rule.new.startswith(section):
            new = rule.new.removeprefix(section)
            if new in axes or new in result:
                out.problems.append(
                    f"key '{name}' is {rule.name_for(f'{prefix}.{new}')}, which the grid also sets: keep one"
                )
                continue
            result[new] = values
            out.renamed[f"{prefix}.{new}"] = name
            out.notes.append(
                f"'{name}' is {rule.name_for(f'{prefix}.{new}')}: read as {prefix}.{new} = {flow(values)} (rename it)"
            )
        elif rule.action in ("ignore", "convert") and (
            (rule.inert is None and rule.action == "ignore") or (rule.inert and all(rule.inert(v) for v in items))
        ):
            out.notes.append(f"'{name}' is ignored: {rule.off or rule.why}")
        elif rule.action in ("rename", "convert"):
            out.problems.append(
                f"key '{name}' = {flow(values)}: {rule.why}; allowed here: {rule.new or 'see config/README.md'}"
            )
        else:
            hint_value = values
            for part in reversed(dotted[len(ruled) + 1 :].split(".") if ruled != dotted else []):
                # batching.batch_size: [1, 4] -> the section batching: {batch_size: [1, 4]}
                hint_value = {part: hint_value}
            if rule.action == "ignore":
                hint_value = next(v for v in items if not rule.inert(v))
            why = rule.why if rule.action == "refuse" else rule.refused
            out.problems.append(f"key '{name}' = {flow(values)}: {why}; allowed here: {rule.hint(hint_value, where)}")
    return result


def _rule_for(dotted: str) -> tuple[Rule | None, str]:
    """The rule of a dotted key, or of its nearest section of lem's that has one (``batching.batch_size`` ->
    ``batching``; never one of this tool's own sections)."""
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        key = ".".join(parts[:depth])
        if key in EXPERIMENT and (
            depth == len(parts) or (key not in _OWN_SECTIONS and EXPERIMENT[key].action != "unset")
        ):
            return EXPERIMENT[key], key
    return None, ""


def migrate_user(data: dict) -> Migrated:
    """``.lem-config.yaml`` with lem's keys read."""
    out = Migrated(copy.deepcopy(data))
    _apply(out.data, USER, "", Where(), out)
    return out


def annotate(problems: list[str], renamed: dict[str, str], prefix: str = "") -> list[str]:
    """Problems of a migrated file that name a renamed key also say how the file wrote it."""
    out = []
    for line in problems:
        for new, old in renamed.items():
            if f"key '{_name(prefix, new)}'" in line and new != old:
                line = f"{line} (written as '{_name(prefix, old)}', {LEM}'s name)"
                break
        out.append(line)
    return out
