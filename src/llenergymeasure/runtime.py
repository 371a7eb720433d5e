"""The facts a job needs beyond its inputs, outputs and params: one type on each side of the workflow.

:class:`Runtime` is what the workflow hands every job as ``config["_lem"]`` (:data:`RUNTIME_KEY`): the campaign's
name and id, its results folder, the thermal gaps, the cycles, the precision target, notifications, config names,
images, the planning host's cache folder and the console's verbosity. They are deliberately not params: changing a
gap or a webhook must not make Snakemake rerun a finished measurement. It travels as plain data (a job's process
gets a copy), and is read back with :meth:`Runtime.from_config`.

:class:`JobContext` is what one measurement needs of it (:func:`llenergymeasure.measure.run_experiment`), built from
a :class:`Runtime` in a workflow job, or from ``python -m llenergymeasure.run``'s arguments.

This module needs only the standard library (and :mod:`.record.layout`, which does too): the measurement job of a
stock engine image imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .record.layout import Layout

RUNTIME_KEY = "_lem"  # config[RUNTIME_KEY]: the runtime facts of the jobs


@dataclass(frozen=True)
class JobContext:
    """What a measurement knows of its campaign: names for the raw result, where the host's gap and lock state
    live, the gaps to wait before the window, the image it runs in, how often it reports progress."""

    campaign_name: str | None = None
    campaign_id: str | None = None
    run_id: str | None = None  # the campaign run (one snakemake invocation) that measures it
    state_dir: str | None = None
    config_gap_s: float = 0.0
    cycle_gap_s: float = 0.0
    container_uri: str | None = None
    progress_every_s: float = 10.0


@dataclass(frozen=True)
class Runtime:
    """``config["_lem"]``: the campaign-level facts every job reads (see the module docstring)."""

    campaign_name: str | None = None
    campaign_id: str | None = None
    run_id: str | None = None
    results_root: str | None = None
    config_gap_s: float = 0.0
    cycle_gap_s: float = 0.0
    cycles: int = 0  # every experiment's cycles; with a precision target, its min_cycles
    precision: dict | None = None  # the target's params (llenergymeasure.precision.Target.params)
    notifications: dict | None = None
    names: dict[str, str] = field(default_factory=dict)  # experiment id -> config name, in campaign order
    containers: dict[str, str] = field(default_factory=dict)
    cache_dir: str | None = None
    verbosity: str | None = None  # the console's (quiet, normal, verbose); None: LLM_ENERGY_VERBOSITY

    @property
    def layout(self) -> Layout | None:
        return Layout(self.results_root) if self.results_root else None

    @property
    def state_dir(self) -> str | None:
        return self.layout.state_dir if self.layout else None

    @property
    def max_cycles(self) -> int:
        """The most cycles an experiment may have been scheduled: the target's maximum, else ``cycles``."""
        return self.precision["max_cycles"] if self.precision else self.cycles

    def name_of(self, experiment_id: str) -> str:
        return self.names.get(experiment_id, experiment_id)

    def job_context(self, backend: str) -> JobContext:
        return JobContext(
            campaign_name=self.campaign_name,
            campaign_id=self.campaign_id,
            run_id=self.run_id,
            state_dir=self.state_dir,
            config_gap_s=self.config_gap_s,
            cycle_gap_s=self.cycle_gap_s,
            container_uri=self.containers.get(backend),
        )

    def as_config(self) -> dict[str, Any]:
        """Plain data for ``config["_lem"]`` (and what :meth:`from_config` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, data: Mapping | Runtime | None) -> Runtime:
        """The runtime facts of ``config["_lem"]`` (a copy of it in a job's process); an empty or missing one
        gives the defaults (a job started outside a campaign). Unknown keys are a TypeError naming them."""
        if isinstance(data, Runtime):
            return data
        data = dict(data or {})
        unknown = sorted(data.keys() - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"config[{RUNTIME_KEY!r}] holds keys this version does not know: {', '.join(unknown)}")
        return cls(**{k: _plain(v) for k, v in data.items()})


def _plain(value: Any) -> Any:
    """A mapping as a plain dict, all the way down (``config["_lem"]`` is a read-only mapping in the planner)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
