"""Every place the workflow relies on how Snakemake works inside, beyond its documented rule syntax, in one module.
``tests/test_snakemake_internals.py`` pins each behaviour relied on against the installed Snakemake, so that a
release that changes one fails there, by name, rather than in a campaign.

- The aggregation's input walk over the precision checkpoints (:func:`aggregate_inputs`): ``Checkpoint.get`` raises
  ``IncompleteCheckpointException`` whose ``targetfile`` is flagged as a checkpoint target until the checkpoint's
  output is among ``created_output``, which only grows during a run; the walk's cache relies on that.
- Per-job function signatures given once (:func:`fixed_signatures`): ``overwrite_function_params``.
- Threads of a local run (:func:`all_cores`): ``workflow.cores``, which raises without ``--cores`` on a cluster.
- The failed jobs of a run (:func:`failed_measurements`): ``workflow.scheduler.failed``, the jobs the scheduler saw
  fail, killed ones included.
- Backups of ``update()`` outputs left by a killed run (:func:`resolve_stale_backups`): Snakemake copies such an
  output to ``.snakemake/backups/<path>`` before its job runs (``FileBackupMixin.backup_output``) and a directory's
  copy is made with ``shutil.copytree``, which fails when the copy exists; its locks live in ``.snakemake/locks``.
- The pass over what completed (:func:`aggregate_completed`): a second, local invocation started from ``onerror``
  with the first one's Snakefile, ``--configfile`` files and ``--config`` values
  (``workflow.main_snakefile``, ``overwrite_configfiles``, ``config_settings.config_args``), told by
  :data:`COMPLETED_ONLY_ENV` to plan only the raw results that exist. The plan reads it once
  (:func:`completed_only_requested`, into :attr:`llenergymeasure.campaign.Plan.completed_only`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable

#: Set for the second invocation: the workflow then plans only the raw results that exist.
COMPLETED_ONLY_ENV = "LLM_ENERGY_COMPLETED_ONLY"


def completed_only_requested(environ=None) -> bool:
    """Whether this Snakemake process is the pass over what completed (read once, when the plan is made)."""
    environ = os.environ if environ is None else environ
    return environ.get(COMPLETED_ONLY_ENV, "") not in ("", "0")


# --------------------------------------------------------------------------------- the aggregation's input walk


@dataclasses.dataclass(frozen=True)
class Settled:
    """An experiment's walk that ended on a ``stop``: its cycles, that decision, and each decision file walked with
    its stamp (:func:`_stamp`) when it was read."""

    cycles: int
    last: str
    decisions: tuple[tuple[str, tuple[int, int, int] | None], ...]


# (checkpoints, results root, experiment id, target) -> its settled walk, for this process (see walk_decisions)
_SETTLED: dict[tuple, Settled] = {}


def _stamp(path: str) -> tuple[int, int, int] | None:
    """A file's identity and version: inode, size and modification time (None when it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def walk_decisions(checkpoints, root: str, experiment_ids: list[str], target, decided_cycles: Callable) -> list:
    """For each experiment, in order: ``(experiment_id, Settled)`` once its decisions end on a ``stop``, else
    ``(experiment_id, pending)`` with ``pending`` the next decision's file, flagged as a checkpoint target (what
    Snakemake itself makes of a raised ``IncompleteCheckpointException``). ``decided_cycles(get, experiment_id,
    target)`` walks one experiment's decisions through ``get(n)`` (:func:`llenergymeasure.precision.decided_cycles`).

    An experiment whose walk ended on a ``stop`` is not walked again while its decision files stay as they were
    (:data:`_SETTLED`): Snakemake evaluates the aggregation's input function after every decision, and each
    ``checkpoints.decide.get`` expands the rule's output and copies the set of every checkpoint output created so
    far (snakemake/checkpoints.py, ``Checkpoint.get``), so walking every settled experiment again made each
    decision cost time in proportion to the decisions already taken. A checkpoint output Snakemake has accepted
    stays accepted for the rest of the run (``created_output`` only grows), so what such a walk returned holds."""
    from snakemake.exceptions import IncompleteCheckpointException

    params = tuple(sorted(target.params().items()))
    out: list = []
    for eid in experiment_ids:
        key = (id(checkpoints), root, eid, params)
        settled = _SETTLED.get(key)
        if settled is None or not all(_stamp(path) == stamp for path, stamp in settled.decisions):
            walked: list[str] = []

            def get(n: int, eid: str = eid, walked: list[str] = walked) -> str:
                path = checkpoints.decide.get(experiment=eid, n=n).output[0]
                walked.append(path)
                return path

            try:
                n, last = decided_cycles(get, eid, target)
            except IncompleteCheckpointException as exc:
                out.append((eid, exc.targetfile))
                continue
            settled = Settled(n, last, tuple((path, _stamp(path)) for path in walked))
            if all(stamp is not None for _, stamp in settled.decisions):
                _SETTLED[key] = settled
        out.append((eid, settled))
    return out


# ------------------------------------------------------------------------------------------- rule declarations


def fixed_signatures(*functions) -> None:
    """Let Snakemake read each per-job function's signature once instead of once per job and directive (it calls
    ``inspect.signature`` every time otherwise: seconds on a 30,000-job campaign). ``overwrite_function_params``
    is Snakemake's own way to give a function's parameters (snakemake/common/__init__.py, lines 372-385 in 9.27:
    ``get_function_params`` returns what it stored); they are kept as ``inspect`` parameters, which is what
    ``get_input_function_aux_params`` reads from them (``param.kind`` of each value, lines 387-399)."""
    import inspect

    from snakemake.common import overwrite_function_params

    for func in functions:
        overwrite_function_params(func, inspect.signature(func).parameters)


def all_cores(workflow) -> int:
    """Threads of a measurement job: every core given to a local Snakemake, so nothing shares the CPU with a
    window. On a cluster there is no such total: 1, unless the profile sets ``set-threads: {measure: N}``."""
    try:
        cores = workflow.cores
    except Exception:  # noqa: BLE001 - WorkflowError: no --cores with a cluster executor
        return 1
    return int(cores) if isinstance(cores, (int, float)) and cores >= 1 else 1


@functools.lru_cache(maxsize=64)
def ancient(path: str):
    """A path whose timestamp never triggers a rerun (Snakemake's ``ancient``), made once per path."""
    from snakemake.io import ancient as mark

    return mark(path)


# ----------------------------------------------------------------------------------------------- after failures


def failed_measurements(workflow) -> list[tuple[str, int]]:
    """The (experiment, cycle) of every measurement job the scheduler saw fail in this run, killed ones included
    (they record nothing themselves)."""
    scheduler = getattr(workflow, "scheduler", None)
    out = []
    for job in getattr(scheduler, "failed", ()) or ():
        if getattr(getattr(job, "rule", None), "name", None) == "measure":
            out.append((job.wildcards.experiment, int(job.wildcards.cycle)))
    return out


def aggregate_completed(workflow, workdir: str) -> int:
    """Run the workflow's derived rules over the raw results that exist, in a second Snakemake invocation (local,
    one core, without Snakemake's lock: the first invocation still holds it and runs no more jobs), given the first
    one's Snakefile, ``--configfile`` files and ``--config`` values (what Snakemake passes its own job processes:
    ``workflow.config_settings.config_args``). Returns its exit code; its output goes to the console like the first
    one's."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(workflow.main_snakefile),
        "--directory",
        str(workdir),
        "--cores",
        "1",
        "--nolock",
        "--no-hooks",
        "--quiet",
        "rules",
        "host",
    ]
    if workflow.overwrite_configfiles:
        cmd += ["--configfiles", *map(str, workflow.overwrite_configfiles)]
    if workflow.config_settings.config_args:
        cmd += ["--config", *workflow.config_settings.config_args]
    env = {**os.environ, COMPLETED_ONLY_ENV: "1", "LLM_ENERGY_VERBOSITY": "quiet"}
    return subprocess.run(cmd, env=env, cwd=workdir, check=False).returncode


# --------------------------------------------------------------------------------- update() backups


def backup_of(path: str, workdir: str = ".") -> str:
    """Where Snakemake keeps its copy of an ``update()`` output while the job that updates it runs
    (``FileBackupMixin._get_backup_path``: under ``.snakemake/backups``, an absolute path without its root)."""
    rel = path.lstrip(os.sep) if os.path.isabs(path) else path
    return os.path.join(workdir, ".snakemake", "backups", rel)


def resolve_stale_backups(outputs: list[str], workdir: str = ".") -> list[str]:
    """Copies of ``update()`` outputs that a killed run left behind (kill -9, Ctrl-C, a lost node, a read-only
    folder during the aggregation). Snakemake removes its copy when the job ends and puts it back when the job
    fails; a run killed meanwhile leaves it, and the next time the job runs, copying a directory output onto it
    raises FileExistsError, run after run. With no Snakemake holding this folder (no lock in ``.snakemake/locks``),
    each leftover copy is put back where its output is missing, and dropped where the output exists (every file of
    the aggregation is written atomically, so what exists is complete). Returns one line per copy handled."""
    locks = os.path.join(workdir, ".snakemake", "locks")
    try:
        if os.listdir(locks):
            return []  # another run may be updating them now (or a killed one's locks await --unlock)
    except OSError:
        pass
    import shutil

    said = []
    for path in outputs:
        copy = backup_of(path, workdir)
        if not os.path.lexists(copy):
            continue
        target = path if os.path.isabs(path) else os.path.join(workdir, path)
        if os.path.lexists(target):
            if os.path.isdir(copy) and not os.path.islink(copy):
                shutil.rmtree(copy)
            else:
                os.unlink(copy)
            said.append(f"{path}: dropped the copy an interrupted run left in .snakemake/backups (the file is kept)")
        else:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            shutil.move(copy, target)
            said.append(f"{path}: put back from the copy an interrupted run left in .snakemake/backups")
    return said
