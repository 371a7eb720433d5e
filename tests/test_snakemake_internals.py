"""What the workflow relies on inside Snakemake (llenergymeasure/snakemake_internals.py), pinned against the
installed release: a Snakemake that changes one of these fails here, by name."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import snakemake.api  # noqa: F401 - imports snakemake.workflow in the order Snakemake itself does

from llenergymeasure import snakemake_internals as internals


class StubRule:
    """The part of a Snakemake ``Rule`` that ``Checkpoint.get`` uses: its wildcards and its output's expansion."""

    name = "decide"

    def __init__(self, root: str):
        self.root = root
        self.wildcard_names = {"experiment", "n"}

    def expand_output(self, wildcards):
        return [f"{self.root}/decisions/{wildcards['experiment']}/after_cycle_{wildcards['n']}.json"], {}


def real_checkpoints(root: str, created: list[str]):
    """Snakemake's own ``checkpoints`` object with a ``decide`` checkpoint whose outputs ``created`` exist."""
    from snakemake.checkpoints import Checkpoints

    top = Checkpoints()
    top.created_output.update(created)
    proxy = top.spawn_new_namespace()
    proxy.register(StubRule(root))
    return proxy


def test_a_checkpoint_output_not_yet_created_raises_its_flagged_target_and_once_created_is_returned():
    from snakemake.exceptions import IncompleteCheckpointException

    done = "r/decisions/e/after_cycle_3.json"
    checkpoints = real_checkpoints("r", [done])
    assert checkpoints.decide.get(experiment="e", n=3).output[0] == done
    with pytest.raises(IncompleteCheckpointException) as raised:
        checkpoints.decide.get(experiment="e", n=4)
    assert raised.value.targetfile == "r/decisions/e/after_cycle_4.json"
    assert raised.value.targetfile.flags.get("checkpoint_target")
    # created_output only grows: the set is Snakemake's record for the whole run, and nothing in its API removes
    assert not [name for name in vars(type(checkpoints.parent)) if "remove" in name or "discard" in name]


def test_the_walk_over_real_checkpoints_settles_each_experiment_and_caches_a_settled_one(tmp_path, monkeypatch):
    import json

    from llenergymeasure.precision import Target, decided_cycles

    monkeypatch.chdir(tmp_path)
    internals._SETTLED.clear()
    target = Target(0.05, "energy_j", 3, 5, 0.95)
    created = []
    for n, verdict in ((3, "continue"), (4, "stop")):
        path = f"r/decisions/a/after_cycle_{n}.json"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({"experiment_id": "a", "after_cycle": n, "decision": verdict}))
        created.append(path)
    checkpoints = real_checkpoints("r", created)
    walked = internals.walk_decisions(checkpoints, "r", ["a", "b"], target, decided_cycles)
    (a, settled), (b, pending) = walked
    assert (a, settled.cycles, settled.last) == ("a", 4, created[-1])
    assert (b, pending) == ("b", "r/decisions/b/after_cycle_3.json") and pending.flags.get("checkpoint_target")
    asked = []
    monkeypatch.setattr(checkpoints, "decide", SimpleNamespace(get=lambda **w: asked.append(w)))
    assert internals.walk_decisions(checkpoints, "r", ["a"], target, decided_cycles) == [("a", settled)]
    assert asked == []  # settled: not walked again while its decision files stay as they were
    (tmp_path / created[-1]).write_text((tmp_path / created[-1]).read_text() + " ")  # a decision file changed
    monkeypatch.setattr(checkpoints, "decide", real_checkpoints("r", created).decide)
    assert internals.walk_decisions(checkpoints, "r", ["a"], target, decided_cycles)[0][1].cycles == 4


def test_per_job_functions_give_snakemake_their_parameters_once(monkeypatch):
    """Snakemake reads a per-job function's parameters from what fixed_signatures stored (no inspection per job),
    and passes it exactly the arguments the function takes."""
    import snakemake.common
    from snakemake.common import get_function_params, get_input_function_aux_params

    def by_wildcards(wildcards):
        return wildcards

    def with_threads(wildcards, threads):
        return threads

    internals.fixed_signatures(by_wildcards, with_threads)
    expected = inspect.signature(by_wildcards).parameters

    def no_inspection(func):
        raise AssertionError(f"Snakemake inspected {func.__name__} again")

    monkeypatch.setattr(snakemake.common.inspect, "signature", no_inspection)
    assert get_function_params(by_wildcards) == expected
    offered = {"wildcards": 1, "threads": 2, "input": 3}
    assert get_input_function_aux_params(by_wildcards, offered) == {"wildcards": 1}
    assert get_input_function_aux_params(with_threads, offered) == {"wildcards": 1, "threads": 2}


def test_cores_and_the_first_invocation_are_read_from_the_workflow_object():
    from snakemake.settings.types import ConfigSettings
    from snakemake.workflow import Workflow

    for name in ("cores", "main_snakefile", "overwrite_configfiles"):
        assert isinstance(inspect.getattr_static(Workflow, name), property), name
    assert "config_settings" in {f.name for f in dataclasses.fields(Workflow)}
    assert "config_args" in {f.name for f in dataclasses.fields(ConfigSettings)}

    class NoCores:
        @property
        def cores(self):
            raise RuntimeError("no --cores with a cluster executor")

    assert internals.all_cores(NoCores()) == 1
    assert internals.all_cores(SimpleNamespace(cores=6)) == 6


def test_the_scheduler_keeps_every_failed_job_and_the_failed_measurements_are_read_from_it():
    from snakemake.scheduling.job_scheduler import JobScheduler

    source = inspect.getsource(JobScheduler)
    assert "self.failed = set()" in source and "self.failed.add(job)" in source
    job = SimpleNamespace(rule=SimpleNamespace(name="measure"), wildcards=SimpleNamespace(experiment="e", cycle="2"))
    other = SimpleNamespace(rule=SimpleNamespace(name="aggregate"), wildcards=SimpleNamespace())
    workflow = SimpleNamespace(scheduler=SimpleNamespace(failed=[other, job]))
    assert internals.failed_measurements(workflow) == [("e", 2)]
    assert internals.failed_measurements(SimpleNamespace(scheduler=None)) == []


def test_the_pass_over_what_completed_is_a_command_line_snakemake_accepts_and_a_field_of_its_plan(
    tmp_path, monkeypatch
):
    import subprocess

    from snakemake.cli import get_argument_parser

    seen = {}

    def run(cmd, env, cwd, check):
        seen.update(cmd=cmd, env=env)
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", run)
    workflow = SimpleNamespace(
        main_snakefile="Snakefile",
        overwrite_configfiles=["c.yaml"],
        config_settings=SimpleNamespace(config_args=["execution={'cycles': 2}"]),
    )
    assert internals.aggregate_completed(workflow, str(tmp_path)) == 0
    args = get_argument_parser().parse_args(seen["cmd"][3:])
    assert args.nolock and args.no_hooks and list(map(str, args.configfile)) == ["c.yaml"] and args.config
    assert internals.completed_only_requested(seen["env"])
    assert not internals.completed_only_requested({}) and not internals.completed_only_requested(
        {internals.COMPLETED_ONLY_ENV: "0"}
    )
    # the plan reads it once: the workflow's planning functions read the field, never the environment
    import llenergymeasure.workflow as lem

    (tmp_path / "c.yaml").write_text("campaign_name: c\nmodel: lem-tiny-llama\ngrid: {backends: [pytorch]}\n")
    monkeypatch.setenv(internals.COMPLETED_ONLY_ENV, "1")
    p = lem.load({"campaign": "c.yaml"}, [], workdir=tmp_path, announce=False)
    monkeypatch.delenv(internals.COMPLETED_ONLY_ENV)
    assert p.completed_only and lem.all_raw(p) == [] and lem.aggregated(p) == []


def test_the_runtime_facts_travel_as_plain_data_and_come_back_as_one_type(tmp_path):
    """config["_lem"] is the Runtime's plain data; the jobs read it back as a Runtime (unknown keys refused), and a
    measurement job's context is made from it."""
    import pickle

    import llenergymeasure.workflow as lem
    from llenergymeasure.runtime import RUNTIME_KEY, JobContext, Runtime

    (tmp_path / "c.yaml").write_text(
        "campaign_name: c\nmodel: lem-tiny-llama\ngrid: {backends: [pytorch]}\nexecution: {cycle_gap_s: 2}\n"
    )
    config = {"campaign": "c.yaml"}
    p = lem.load(config, [], workdir=tmp_path, announce=False)
    copied = pickle.loads(pickle.dumps(config[RUNTIME_KEY]))  # what a script job's process gets
    assert type(copied) is dict
    facts = Runtime.from_config(copied)
    assert facts == lem.runtime(p, facts.verbosity) and facts.as_config() == copied
    assert facts.layout == p.layout and facts.state_dir == f"{p.results_root}/.state"
    assert facts.job_context("pytorch") == JobContext(
        campaign_name="c",
        campaign_id=facts.campaign_id,
        run_id=facts.run_id,
        state_dir=facts.state_dir,
        config_gap_s=p.campaign["execution"]["config_gap_s"],
        cycle_gap_s=2,
        container_uri=p.campaign["containers"]["pytorch"],
    )
    assert facts.run_id == os.environ["LEM_RUN_ID"]  # kept where every job this process starts inherits it
    assert Runtime.from_config(None) == Runtime()
    with pytest.raises(TypeError, match="keys this version does not know: stale"):
        Runtime.from_config({**copied, "stale": 1})


def test_a_leftover_copy_of_a_directory_output_fails_snakemakes_next_backup_where_the_fix_looks(tmp_path, monkeypatch):
    """Snakemake backs up an update() output under .snakemake/backups/<path> (an absolute path without its root)
    with shutil.copytree for a folder, so a copy a killed run left makes the next backup fail: where
    resolve_stale_backups looks, and why it must."""
    from snakemake.persistence import FileBackupMixin

    from llenergymeasure.snakemake_internals import backup_of, resolve_stale_backups

    class Backups(FileBackupMixin):
        path = Path(".snakemake")

    monkeypatch.chdir(tmp_path)
    backups = Backups()
    assert backups._get_backup_path(Path("results/c/aggregated")) == Path(backup_of("results/c/aggregated"))
    assert backups._get_backup_path(Path("/srv/r/c/summary.csv")) == Path(backup_of("/srv/r/c/summary.csv"))
    out = Path("results/c/aggregated")
    out.mkdir(parents=True)
    (out / "e.json").write_text("{}")
    backups.backup_output(out)
    with pytest.raises(FileExistsError):
        backups.backup_output(out)  # what every rerun met before
    assert resolve_stale_backups([str(out)]) == [
        "results/c/aggregated: dropped the copy an interrupted run left in .snakemake/backups (the file is kept)"
    ]
    backups.backup_output(out)  # the next run's backup goes through
    # a folder a run holds (its lock) is left alone
    Path(".snakemake/locks").mkdir()
    Path(".snakemake/locks/0.output.lock").write_text("")
    assert resolve_stale_backups([str(out)]) == [] and Path(backup_of(str(out))).is_dir()
