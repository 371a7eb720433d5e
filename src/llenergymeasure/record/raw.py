"""Typed records of a raw result: the sections that other parts of the tool read back, as frozen dataclasses.

The measurement builds these sections as records and writes them through the raw result schema; everything that
reads a raw result back (the aggregation, the precision decisions, the report) reads them as records, after the
file has passed the same schema (:func:`llenergymeasure.results.read_result`). The JSON on disk is exactly what it
was: each record's fields are its section's keys, in the order they are written. A key that results written by
earlier versions lack reads as None. Sections that only people and plots read (timeline, memory, model details,
environment) stay plain mappings, in :attr:`RawResult.document`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class Section:
    """A section of a raw result: written with :meth:`to_dict`, read with :meth:`from_dict`."""

    #: keys a valid raw result may lack (written by earlier versions): None when absent
    OPTIONAL: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping):
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = data[f.name]
            elif f.name in cls.OPTIONAL:
                values[f.name] = None
            else:
                raise KeyError(f"{cls.__name__}: no {f.name!r}")
        return cls(**values)


@dataclass(frozen=True)
class Timestamps(Section):
    job_start: str
    window_start: str
    window_end: str
    window_duration_s: float
    job_end: str


@dataclass(frozen=True)
class Tokens(Section):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    padded_input_tokens: int | None
    num_requests: int
    num_batches: int
    mean_batch_size: float | None
    workload_repetitions: int | None
    scheduling: str | None
    requests_at_max_output_tokens: int | None
    counting: str | None

    OPTIONAL = frozenset(
        {
            "padded_input_tokens",
            "mean_batch_size",
            "workload_repetitions",
            "scheduling",
            "requests_at_max_output_tokens",
            "counting",
        }
    )


@dataclass(frozen=True)
class Throughput(Section):
    output_tokens_per_s: float | None
    total_tokens_per_s: float | None
    requests_per_s: float | None
    generate_time_s: float | None
    denominator: str | None

    OPTIONAL = frozenset({"generate_time_s", "denominator"})


@dataclass(frozen=True)
class Efficiency(Section):
    j_per_output_token: float | None
    net_j_per_output_token: float | None
    j_per_total_token: float | None
    j_per_request: float | None
    method: str


@dataclass(frozen=True)
class EnergyTotal(Section):
    gross_energy_j: float | None
    net_energy_j: float | None
    net_energy_uncertainty_j: float | None
    method: str
    components: list[str]
    includes_estimate: bool
    mean_power_w: float | None

    OPTIONAL = frozenset({"net_energy_uncertainty_j", "components"})


@dataclass(frozen=True)
class RaisedFlag(Section):
    """A validity flag raised on a window (:mod:`llenergymeasure.record.flags` says what each code means)."""

    code: str
    message: str


@dataclass(frozen=True)
class Provenance(Section):
    package: str | None
    package_version: str
    git: str | None
    config_sha256: str
    prompts_sha256: str
    model_path: str | None

    OPTIONAL = frozenset({"package", "model_path"})


@dataclass(frozen=True)
class RawResult:
    """One measurement as the tool reads it back: identity, the typed sections, and the whole document."""

    experiment_id: str
    cycle: int
    backend: str
    model_name: str
    campaign_name: str | None
    num_processes: int
    timestamps: Timestamps
    tokens: Tokens
    throughput: Throughput
    efficiency: Efficiency
    energy_total: EnergyTotal
    flags: tuple[RaisedFlag, ...]
    provenance: Provenance
    document: Mapping[str, Any]  # the whole raw result, read-only

    @classmethod
    def from_dict(cls, data: Mapping) -> RawResult:
        """The record of a raw result that has passed the raw result schema."""
        return cls(
            experiment_id=data["experiment_id"],
            cycle=data["cycle"],
            backend=data["backend"],
            model_name=data["model_name"],
            campaign_name=data.get("campaign_name"),
            num_processes=data["num_processes"],
            timestamps=Timestamps.from_dict(data["timestamps"]),
            tokens=Tokens.from_dict(data["tokens"]),
            throughput=Throughput.from_dict(data["throughput"]),
            efficiency=Efficiency.from_dict(data["efficiency"]),
            energy_total=EnergyTotal.from_dict(data["energy"]["total"]),
            flags=tuple(RaisedFlag.from_dict(f) for f in data["flags"]),
            provenance=Provenance.from_dict(data["provenance"]),
            document=MappingProxyType(data),
        )

    @property
    def flag_codes(self) -> list[str]:
        return [f.code for f in self.flags]
