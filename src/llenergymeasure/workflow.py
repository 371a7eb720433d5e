"""What the Snakefile needs at parse time: the campaign, its experiments, paths, params and priorities.

Snakemake deep-merges a Snakefile's ``configfile:`` with ``--configfile``, so the default campaign would leak into
any other. The Snakefile therefore declares no ``configfile:``; :func:`load` reads the file named by
``--config campaign=FILE`` (else ``config/campaign.yaml``) itself, and otherwise uses exactly what Snakemake read
from the ``--configfile`` file(s).

The contract between the workflow and this package:

- Snakemake's ``config`` stays as Snakemake loaded it (the ``--configfile`` files and ``--config`` values). The
  rules read the resolved campaign only through the :class:`~llenergymeasure.campaign.Plan` that :func:`load`
  returns (``PLAN`` in the Snakefile), through the one-line functions of ``workflow/common.smk``.
- What a job needs that is not its own input, output or params lives in one place: ``config["_lem"]``
  (:data:`~llenergymeasure.runtime.RUNTIME_KEY`), a read-only mapping of the campaign-level facts of
  :class:`~llenergymeasure.runtime.Runtime`. They are not params on purpose: changing a gap or a webhook must not
  make Snakemake rerun a finished measurement. The scripts pass ``snakemake.config["_lem"]`` (a plain copy in the
  job's process) to :mod:`.jobs`, which reads it back as a :class:`~llenergymeasure.runtime.Runtime`; the
  ``onstart`` and ``onerror`` handlers read ``config["_lem"]`` the same way. Nothing else is added to ``config``.
- Every path comes from the plan's :class:`~llenergymeasure.record.layout.Layout` (``PLAN.layout`` in the
  Snakefile), and what relies on Snakemake's internals is in :mod:`.snakemake_internals`.
"""

from __future__ import annotations

import copy
import os
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .campaign import DEFAULT_CAMPAIGN_FILE, Plan, campaign_id, deep_merge, plan, read_yaml, resolve_campaign
from .config import coerce_overrides
from .errors import ConfigError, problem_lines
from .legacy import FORMER_SPELLINGS
from .prompts import check_sources
from .record.layout import experiment_of
from .runtime import RUNTIME_KEY, Runtime
from .snakemake_internals import (
    aggregate_completed,
    all_cores,  # noqa: F401 - the workflow's rules call it through this module
    ancient,
    completed_only_requested,
    failed_measurements,
    fixed_signatures,  # noqa: F401 - the workflow's rules call it through this module
    resolve_stale_backups,
    walk_decisions,
)
from .tiny_model import embedded_model_dir, is_embedded

CAMPAIGN_KEY = "campaign"  # --config campaign=FILE


class RuntimeFacts(dict):
    """``config["_lem"]``: read-only in the process that parses the workflow. A copy (pickled for a script job,
    deep-copied) is a plain dict, so a job's process needs nothing of this package to read it."""

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"config[{RUNTIME_KEY!r}] holds the campaign's runtime facts and is read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return dict, (dict(self),)


def _read_only(value: Any) -> Any:
    if isinstance(value, dict):
        return RuntimeFacts({k: _read_only(v) for k, v in value.items()})
    return value


def load(config: dict, cli_configfiles, workdir: str | Path = ".", announce: bool = True) -> Plan:
    """The campaign's plan; ``config[RUNTIME_KEY]`` set to its runtime facts (nothing else in ``config`` changes).
    Exits with one line on bad input.

    The campaign is ``--config campaign=FILE`` (read here, checked before anything in it is used), else the
    ``--configfile`` file(s) Snakemake has read (re-read here with the same checks: Snakemake itself keeps the last
    of duplicate keys and evaluates YTE templates), else ``config/campaign.yaml``. Other ``--config`` values
    override the file's."""
    where = ""
    given: dict = {}  # what --config set (other than the campaign file)
    loaded = copy.deepcopy({k: v for k, v in config.items() if k != RUNTIME_KEY})  # as Snakemake loaded it
    try:
        if cli_configfiles:
            if CAMPAIGN_KEY in loaded:
                raise ConfigError(
                    f"give the campaign either as --configfile or as --config {CAMPAIGN_KEY}=FILE, not both"
                )
            files: dict = {}
            for path in cli_configfiles:
                files = deep_merge(files, _recheck(path))
            raw, base = loaded, Path(cli_configfiles[-1]).parent
            on_command_line = _given_on_command_line(raw, files)
            if on_command_line is not _SAME:  # --config values over the files, as the types their keys take
                given = coerce_overrides(on_command_line, FORMER_SPELLINGS)
                raw = deep_merge(raw, given)
            where = ", ".join(str(p) for p in cli_configfiles)
        else:
            overrides = coerce_overrides(loaded, FORMER_SPELLINGS)  # --config values, as the types their keys take
            name = overrides.pop(CAMPAIGN_KEY, None) or DEFAULT_CAMPAIGN_FILE
            if not isinstance(name, str):
                raise ConfigError(f"--config {CAMPAIGN_KEY} = {name!r}: expected the path of a campaign file")
            path = Path(workdir) / name
            raw, base = read_yaml(path), path.parent
            if not isinstance(raw, dict):
                raise ConfigError(f"file '{path}': a campaign must be a mapping of keys, got {type(raw).__name__}")
            where = str(path)
            given = overrides
            raw = deep_merge(raw, overrides)
        resolved = resolve_campaign(raw, base, workdir)
        level = verbosity(workdir)
        the_plan = plan(resolved, completed_only=completed_only_requested())
        if announce:  # the main process only: jobs re-parse the Snakefile and need not load datasets again
            check_sources([e.config for e in the_plan.expansion.experiments])
    except ConfigError as exc:
        problems = [_from_command_line(p, given) or ConfigError(p).located(where).problems[0] for p in exc.problems]
        for line in problem_lines(ConfigError(problems), "Configuration error: "):
            print(line, file=sys.stderr)
        sys.exit(1)
    config[RUNTIME_KEY] = _read_only(runtime(the_plan, level).as_config())
    if announce:
        layout = the_plan.layout
        for line in resolve_stale_backups([layout.aggregated_dir, layout.summary, layout.failures], str(workdir)):
            print(line, file=sys.stderr)
        line = stamp_analysis(the_plan)
        if line:
            print(line, file=sys.stderr)
        for line in set_aside_edited_decisions(the_plan):
            print(line, file=sys.stderr)
        describe(the_plan, sys.stderr, level)
    return the_plan


_SAME = object()


def _from_command_line(problem: str, given: dict) -> str | None:
    """A problem of a key that ``--config`` set (``given``), said of ``--config``, with its "did you mean" in the
    form ``--config`` takes (a top-level key; a nested one as ``KEY={SUBKEY: VALUE}``); None for any other."""
    import re

    from .config import dotted_items, flow, load_schema, property_schema

    named = re.search(r"key '([^']+)'", problem)
    if not named:
        return None
    key = named.group(1)
    value = next(
        (
            v
            for path, v in dotted_items(given)
            if key == path or key.startswith(f"{path}.") or path.startswith(f"{key}.")
        ),
        _SAME,
    )
    if value is _SAME:
        return None
    hint = re.search(r" \(did you mean '([^']+)'\?\)", problem)
    if hint:
        root = load_schema("campaign")
        parent = key.rpartition(".")[0]
        known = [k for k in (f"{parent}.{hint.group(1)}" if parent else "", hint.group(1)) if k]
        full = next((k for k in known if property_schema(k, root, root) is not None), None)
        if full:
            top, *inner = full.split(".")
            for part in reversed(inner):
                value = {part: value}
            value = coerce_overrides({top: value}, FORMER_SPELLINGS)[top]  # as the suggested key takes it
            nested = " --config sets top-level keys: a nested one as KEY={SUBKEY: VALUE}" if inner else ""
            problem = problem.replace(hint.group(0), f" (did you mean --config '{top}={flow(value)}'?{nested})")
    return f"--config: {problem}"


def _given_on_command_line(config: Any, files: Any) -> Any:
    """The part of Snakemake's config that ``--config`` set over the ``--configfile`` files (their values merged)."""
    if isinstance(config, dict) and isinstance(files, dict):
        out = {}
        for key, value in config.items():
            diff = _given_on_command_line(value, files[key]) if key in files else value
            if diff is not _SAME:
                out[key] = diff
        return out or _SAME
    return _SAME if config == files else config


def _recheck(path) -> dict:
    """The checks of :func:`read_yaml` on a file Snakemake has already read as ``--configfile``; its data."""
    from .yamlfile import YTE_KEY

    try:
        data = read_yaml(path)
        return data if isinstance(data, dict) else {}
    except ConfigError as exc:
        if YTE_KEY in str(exc):  # too late to stop Snakemake: say so, and how to avoid it
            raise ConfigError(
                f"{exc} (Snakemake evaluated the template while reading --configfile, before this check; a campaign "
                f"given as --config {CAMPAIGN_KEY}=FILE is checked before anything in it is evaluated)"
            ) from None
        raise


RUN_ID_ENV = "LEM_RUN_ID"


def run_id() -> str:
    """The id of this campaign run: made when the main Snakemake process first parses the workflow (UTC start time
    and a random part) and kept in the environment, which every job it starts inherits (a local job's process, and a
    Slurm job through sbatch's exported environment), so all the measurements of one invocation share it."""
    if not os.environ.get(RUN_ID_ENV):
        os.environ[RUN_ID_ENV] = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    return os.environ[RUN_ID_ENV]


def runtime(p: Plan, verbosity: str | None = None) -> Runtime:
    """Campaign-level facts the jobs read from ``config[RUNTIME_KEY]`` (deliberately not params: no rerun trigger)."""
    ex = p.campaign["execution"]
    return Runtime(
        campaign_name=p.name,
        campaign_id=campaign_id(p.name),
        run_id=run_id(),
        results_root=p.results_root,
        config_gap_s=ex["config_gap_s"],
        cycle_gap_s=ex["cycle_gap_s"],
        cycles=p.target.min_cycles if p.target else ex["cycles"],
        precision=p.target.params() if p.target else None,
        notifications=p.campaign["notifications"],
        names=config_names(p),
        containers=p.campaign["containers"],
        cache_dir=str(host_cache_dir()),
        verbosity=verbosity,
    )


def host_cache_dir() -> Path:
    """The cache folder of the planning host (absolute): measurement jobs use it where they can see it."""
    from .thermal import host_state_dir

    return host_state_dir().parent.absolute()


def verbosity(workdir: str | Path = ".") -> str:
    """``LLM_ENERGY_VERBOSITY``, else ``.lem-config.yaml``'s ``verbosity``, else normal."""
    from .campaign import VERBOSITY_LEVELS, load_user_config

    level = os.environ.get("LLM_ENERGY_VERBOSITY")
    if level is not None and level not in VERBOSITY_LEVELS:
        allowed = ", ".join(VERBOSITY_LEVELS)
        raise ConfigError(f"environment variable LLM_ENERGY_VERBOSITY = {level!r} is not allowed; allowed: {allowed}")
    return level or load_user_config(workdir).get("verbosity") or "normal"


def describe(p: Plan, stream, level: str = "normal") -> None:
    """What the campaign expands to: nothing when quiet; every experiment when verbose."""
    if level == "quiet":
        return
    exp = p.expansion
    cycles = f"{p.target.min_cycles}-{p.target.max_cycles}" if p.target else p.campaign["execution"]["cycles"]
    print(
        f"Campaign '{p.name}': {len(exp.experiments)} experiments x {cycles} cycles, "
        f"{p.campaign['execution']['structure']} order, results in {p.results_root}/",
        file=stream,
    )
    if p.target:
        print(
            f"  precision target: cycles continue {p.target.describe()}. Scheduled now: the first "
            f"{p.target.min_cycles} cycles of every experiment ({len(p.order)} measurements); after each further "
            "cycle a decision adds one more to the experiments not yet that precise, so more cycles may follow.",
            file=stream,
        )
    for name, reason in exp.dropped:
        print(f"  dropped {name}: {reason}", file=stream)
    for name, exp_id in exp.duplicates:
        print(f"  duplicate {name}: same resolved config as {exp_id}, measured once", file=stream)
    for note in p.campaign.get("_notes", []) + exp.notes:
        print(f"  note: {note}", file=stream)
    if level == "verbose":
        for e in exp.experiments:
            print(f"  {e.experiment_id}  {e.config_name}  ({e.source})", file=stream)


# ----------------------------------------------------------------------------------------------- paths and targets


def all_raw(p: Plan) -> list[str]:
    """Every planned raw result (with a precision target: the minimum plan); in the pass over what completed (see
    :mod:`.failures`), those that exist (with a target, of any cycle up to the maximum)."""
    if p.completed_only:
        keys = sorted(p.priority, key=p.priority.get, reverse=True) if p.target else p.order  # campaign order
        return [x for x in (p.layout.raw(e, c) for e, c in keys) if os.path.exists(x)]
    return [p.layout.raw(e, c) for e, c in p.order]


def scheduled_raw(p: Plan) -> list[str]:
    """With a precision target, the raw results beyond the minimum plan that the decisions on disk have scheduled
    (taken under this target). Rule ``all`` asks for them like every planned raw result, so that one deleted after
    its decision is measured again: Snakemake checks a job that need not run for missing inputs only when it is a
    target job (snakemake/dag.py, update_needrun: the missing-output check sits in the ``job in self.targetjobs``
    branch; other jobs are reached only from a job that must run)."""
    if not p.target or p.completed_only:
        return []
    from .precision import decisions_on_disk

    extra = []
    for e in p.expansion.experiments:
        n, _ = decisions_on_disk(p.results_root, e.experiment_id, p.target)
        extra.extend(p.layout.raw(e.experiment_id, c) for c in range(p.target.min_cycles + 1, n + 1))
    return extra


def settled_decisions(p: Plan) -> list[str]:
    """With a precision target, the decisions that the raw results on disk call for: after every cycle from
    ``min_cycles`` whose raw result exists, up to the first decision on disk that stops the experiment under this
    target. Rule ``all`` asks for them, so that a decision deleted (a damaged one, as its error says) is taken again
    even when the aggregation is up to date: Snakemake looks for a missing file of a job that need not run only
    among the targets' inputs (see :func:`scheduled_raw`)."""
    if not p.target or p.completed_only:
        return []
    from .precision import DecisionError, read_decision

    wanted = p.target.params()
    out = []
    for e in p.expansion.experiments:
        eid = e.experiment_id
        for c in range(p.target.min_cycles, p.target.max_cycles + 1):
            if not os.path.exists(p.layout.raw(eid, c)):
                break
            path = p.layout.decision(eid, c)
            out.append(path)
            try:
                record = read_decision(path, eid, c)
            except DecisionError:
                continue  # missing or damaged: asked for, so it is taken (again)
            if record["decision"] == "stop" and record.get("target") == wanted:
                break
    return out


def set_aside_edited_decisions(p: Plan) -> list[str]:
    """With a precision target, before the DAG is built: every decision on disk that is not what the decision rule
    gives (edited by hand) is moved out of the way, so that the run takes it again (rule ``all`` asks for the
    decisions the raw results call for: :func:`settled_decisions`). One line each. Not in the pass over what
    completed, which takes no decision."""
    if not p.target or p.completed_only:
        return []
    from .precision import set_aside_edited_decisions as set_aside

    return set_aside(p.results_root, [e.experiment_id for e in p.expansion.experiments], p.target)


def aggregate_inputs(p: Plan, checkpoints=None) -> list[str]:
    """Inputs of the aggregation: the raw results. With a precision target, each experiment's decisions are walked
    from ``min_cycles`` through Snakemake's ``checkpoints.decide`` (see workflow/precision.smk) up to the one that
    stops it: its raw results up to there and that decision; an experiment whose next decision is still to be taken
    contributes that decision instead (the checkpoint target Snakemake would make of it), and the walk goes on with
    the next experiment. So the first evaluation already names every experiment's pending decision, and each one
    that is taken extends only its own experiment's part (Snakemake evaluates the function again after each; the
    walk, and why settled experiments are not walked again, is :func:`.snakemake_internals.walk_decisions`)."""
    if not p.target or p.completed_only:
        return all_raw(p)
    from .precision import decided_cycles

    ids = [e.experiment_id for e in p.expansion.experiments]
    inputs: list[str] = []
    for eid, walked in walk_decisions(checkpoints, p.results_root, ids, p.target, decided_cycles):
        if isinstance(walked, str):  # its next decision, still to be taken
            inputs.append(walked)
            continue
        inputs.extend(p.layout.raw(eid, c) for c in range(1, walked.cycles + 1))
        inputs.append(walked.last)
    return inputs


def decision_inputs(p: Plan, experiment_id: str, after_cycle: str | int) -> list[str]:
    """The raw results a decision reads: cycles 1..after_cycle of the experiment (min_cycles..max_cycles only)."""
    n = int(after_cycle)
    if not p.target or experiment_id not in p.by_id or not p.target.min_cycles <= n <= p.target.max_cycles:
        raise ValueError(f"no decision after cycle {n} of {experiment_id} in this campaign")
    return [p.layout.raw(experiment_id, c) for c in range(1, n + 1)]


def decision_priority(p: Plan) -> int:
    """Decisions outrank every measurement: taken as soon as their cycle is done, so that a cycle they add is
    known before the scheduler picks the next measurement (and, in grouped order, runs right after its
    experiment's previous cycle)."""
    return len(p.priority) + 1


def precision_params(p: Plan) -> dict:
    """The target as plain data (a decision's params: changing the target takes the decisions again)."""
    return p.target.params() if p.target else {}


def aggregated(p: Plan) -> list[str]:
    """The aggregated file of every experiment (in the pass over what completed: of those with a raw result)."""
    ids = [e.experiment_id for e in p.expansion.experiments]
    if p.completed_only:
        done = {experiment_of(x) for x in all_raw(p)}
        ids = [e for e in ids if e in done]
    return [p.layout.aggregated(e) for e in ids]


def experiment_config(p: Plan, experiment_id: str) -> dict:
    """The measurement job's params: the experiment's non-default values (plain data; completed in the job)."""
    return p.by_id[experiment_id].params


def model_input(p: Plan, experiment_id: str) -> dict:
    """The embedded model folder as input of a measurement (``ancient``: its timestamp never triggers a rerun,
    which the protected raw results would refuse anyway)."""
    config = p.by_id[experiment_id].config
    name = config["model_name"]
    if config["no_weights"] or not is_embedded(name):
        return {}
    return {"model": ancient(str(embedded_model_dir(p.campaign["results_dir"], name)))}


def gpus(p: Plan, experiment_id: str) -> int:
    """GPUs a measurement job asks the scheduler for (the ``gpu`` resource): every GPU the experiment lists, unless
    it is certain to run on the CPU (``device: cpu``; vLLM's ``auto`` where vLLM's CPU build is what is installed).
    PyTorch's ``auto`` takes CUDA wherever its node has it, so its job asks for the GPUs it would measure there; on a
    node without CUDA it runs on the CPU and its result says so.

    On Slurm the resource becomes ``sbatch --gpus=N`` (snakemake-executor-plugin-slurm 2.8,
    snakemake_executor_plugin_slurm/utils.py:403-406, ``set_gres_string``; the job step's ``srun`` gets the same,
    snakemake_executor_plugin_slurm_jobstep/__init__.py:319-331 in 0.6.1). A local Snakemake counts it only when
    given ``--resources gpu=N`` (9.27: snakemake/scheduling/job_scheduler.py:101-117 and 617-623 count the resources
    given there and no other), and then never starts measurements needing more GPUs than the host has; without it
    the resource holds back nothing, so a CPU-only host runs PyTorch's ``auto`` experiments on its CPU."""
    config = p.by_id[experiment_id].config
    if config["device"] == "cpu":
        return 0
    if config["backend"] == "vllm":
        from .backends.vllm import engine_device

        if engine_device(config) != "cuda":
            return 0
    return len(config["gpus"])


#: Apptainer's (and Singularity's) variables that put folders first on an image's PATH
PREPEND_PATH = ("APPTAINERENV_PREPEND_PATH", "SINGULARITYENV_PREPEND_PATH")


def container_path(basedir: str | Path, environ=None) -> str:
    """Make ``python`` a command in every backend image: Snakemake starts a containerised rule's script as
    ``python`` (snakemake/script/__init__.py, PythonScript.execute_script), and vLLM's official image names its
    interpreter ``python3`` only. The workflow's ``envs/bin``, which runs ``python3`` as ``python``, goes first on
    the image's PATH through Apptainer's ``APPTAINERENV_PREPEND_PATH`` (the host's PATH never enters an image), for
    the jobs Snakemake starts from this process (they inherit its environment). A user's own prepended folders
    stay, after it. The folder lies in the workflow's directory, which Snakemake mounts into the image."""
    environ = os.environ if environ is None else environ
    shim = str(Path(basedir).resolve() / "envs" / "bin")
    for name in PREPEND_PATH:
        current = [part for part in environ.get(name, "").split(os.pathsep) if part]
        if shim not in current:
            environ[name] = os.pathsep.join([shim, *current])
    return shim


def container(p: Plan, experiment_id: str) -> str:
    """Image of a measurement job (used with ``--sdm apptainer``): the campaign's image for the experiment's backend."""
    return p.campaign["containers"][p.by_id[experiment_id].backend]


def priority(p: Plan, experiment_id: str, cycle: str | int) -> int:
    return p.priority[(experiment_id, int(cycle))]


def models_dir(p: Plan) -> str:
    """Where embedded models are built: under ``results_dir``, shared by every campaign there."""
    return f"{p.campaign['results_dir']}/models"


def aggregated_with(p: Plan) -> dict | None:
    """The analysis settings (``confidence``, ``cv_threshold``) the aggregated files on disk were made with: those of
    the first experiment in campaign order that has one (one job writes them all, and a failed one leaves all of
    them as they were); None when there is none, or it cannot be read."""
    import json

    for e in p.expansion.experiments:
        path = p.layout.aggregated(e.experiment_id)
        if not os.path.exists(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                made = json.load(fh)["aggregation"]
            return {k: made[k] for k in ("confidence", "cv_threshold")}
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def stale_analysis(p: Plan) -> str | None:
    """One line when the aggregated files were made with other analysis settings than the campaign states, else
    None."""
    made, wanted = aggregated_with(p), analysis(p)
    if made is None or all(made[k] == wanted[k] for k in made):
        return None
    were = ", ".join(f"{k} {made[k]}" for k in made)
    now = ", ".join(f"{k} {wanted[k]}" for k in made)
    return f"{p.layout.aggregated_dir} was made with {were}; the campaign states {now}"


def stamp_analysis(p: Plan) -> str | None:
    """Write the aggregation's stamp (:attr:`~llenergymeasure.record.layout.Layout.analysis_stamp`) when the
    aggregated files on disk were made with other analysis settings than the campaign states: the stamp is then an
    input of the aggregation (:func:`analysis_stamp`), newer than its outputs, so Snakemake aggregates again. The
    params trigger alone does not: a failed aggregation leaves the previous files (and their settings) in place and
    Snakemake forgets the params they were made with, so its rerun would find nothing to do. Nothing is written
    while the files agree with the campaign (a dry run of a campaign in step writes nothing). Returns the line that
    says why it aggregates again, or None."""
    import json

    stamp = p.layout.analysis_stamp
    stale = stale_analysis(p)
    if stale is None:
        return None
    try:
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}.tmp"
        # with the time written: Snakemake takes an input newer than the outputs as unchanged when its checksum is
        # one it recorded for them (dag.py, update_needrun: is_same_checksum), which a rewrite with the same
        # settings as a failed attempt would be
        from .paths import utc_now_iso

        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"analysis": analysis(p), "written": utc_now_iso()}, fh, sort_keys=True)
        os.replace(tmp, stamp)
    except OSError as exc:
        return f"{stale}: cannot write {stamp} to aggregate again ({exc.strerror or exc})"
    return f"{stale}: aggregating again"


def analysis_stamp(p: Plan) -> list[str]:
    """The aggregation's stamp as its input, once one has been written (see :func:`stamp_analysis`)."""
    return [p.layout.analysis_stamp] if os.path.exists(p.layout.analysis_stamp) else []


def analysis(p: Plan) -> dict:
    """The campaign's ``analysis`` section (the aggregation's params: changing it re-aggregates)."""
    return p.campaign["analysis"]


def config_names(p: Plan) -> dict:
    """Experiment id -> config name, in campaign order (the aggregation's params: a rename re-aggregates only)."""
    return {e.experiment_id: e.config_name for e in p.expansion.experiments}


_STARTED_AT: float | None = None


def campaign_started(config: dict) -> None:
    """``onstart`` handler: hold the campaign's results folder for this run (another run on it, from any working
    directory, is refused in one line before any job starts) and note when the run started."""
    import time

    from .results import ResultsFolderBusy, hold_results_folder

    global _STARTED_AT
    _STARTED_AT = time.time()
    runtime_ = config.get(RUNTIME_KEY)
    if not runtime_:
        return
    try:
        hold_results_folder(Runtime.from_config(runtime_).results_root)
    except ResultsFolderBusy as exc:
        print(f"Refused: {exc}", file=sys.stderr)
        sys.exit(1)


def where_results_are(layout) -> list[str]:
    """The last lines of a run: where the summary and the report are, and whether the energy in the summary is
    measured, estimated or mixed (nothing when there is no readable summary)."""
    from .aggregate import AggregationError, campaign_energy, read_summary
    from .results import ResultValidationError

    if not os.path.isfile(layout.summary):
        return []
    try:
        rows = read_summary(layout.summary)
    except (AggregationError, ResultValidationError, OSError) as exc:
        return [f"Summary: {layout.summary} (not readable: {exc})"]
    return [
        f"Summary: {layout.summary} (lem results); report: {layout.report_dir}/ (HTML: snakemake --report report.html)",
        campaign_energy(rows),
    ]


def campaign_succeeded(config: dict) -> None:
    """``onsuccess`` handler: the run ends by saying where its results are and how their energy was obtained."""
    runtime_ = config.get(RUNTIME_KEY)
    if not runtime_:
        return
    layout = Runtime.from_config(runtime_).layout
    for line in where_results_are(layout) if layout else []:
        print(line, file=sys.stderr)


def campaign_failed(config: dict, workflow=None) -> None:
    """``onerror`` handler: after failed measurements, aggregate (summary, gap audit, report, campaign notification)
    what completed, in a second invocation whose jobs list the failures (:mod:`.failures`); otherwise (an
    interruption, a failed aggregation) tell the webhook that the campaign failed."""
    from .failures import failed_in_this_run
    from .jobs import campaign_failed as notify_failed

    runtime_ = config.get(RUNTIME_KEY)
    if not runtime_:
        return
    facts = Runtime.from_config(runtime_)
    root = facts.results_root
    failed = set(failed_in_this_run(root, facts.names, facts.max_cycles, _STARTED_AT or 0.0))
    if workflow is not None:  # also jobs killed before they could record anything
        failed |= {(e, c) for e, c in failed_measurements(workflow) if not os.path.exists(facts.layout.raw(e, c))}
    if failed and workflow is not None:
        print(f"{len(failed)} measurement(s) failed; aggregating the measurements that completed ...", file=sys.stderr)
        try:
            code = aggregate_completed(workflow, os.getcwd())
        except Exception as exc:  # noqa: BLE001 - the handler must not hide the failure it reports
            print(f"Could not aggregate the completed measurements: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        if code == 0:
            print(
                f"Results of every completed measurement: {facts.layout.summary}; the {len(failed)} failed ones "
                f"(error, log) are in {facts.layout.failures}. Rerun to retry exactly those.",
                file=sys.stderr,
            )
            for line in where_results_are(facts.layout)[1:] if facts.layout else []:
                print(line, file=sys.stderr)
            return
    notify_failed(runtime_, {"failed_measurements": [{"experiment_id": e, "cycle": c} for e, c in sorted(failed)]})


def report_captions(p: Plan) -> list[str]:
    """The captions the report_plots rule writes beside its plots (declared outputs of the rule)."""
    from .report import PLOTS

    return [p.layout.report(name, ".rst") for name in PLOTS]


def report_caption(p: Plan, name: str) -> str:
    """A caption as report() is given it: the absolute path of that output (Snakemake joins a relative caption
    path with the rule file's folder, not the working directory)."""
    return os.path.abspath(p.layout.report(name, ".rst"))
