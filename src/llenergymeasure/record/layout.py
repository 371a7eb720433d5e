"""Where every file of a campaign lies under its results folder (``<results_dir>/<campaign_name>``), and what a
path there names. The workflow's rules take their output patterns from here (a wildcard is a name in braces:
``layout.raw("{experiment}", "{cycle}")``), so the package and the workflow cannot disagree on a path.

::

    raw/<experiment_id>/cycle_<n>.json               raw result of one measurement (protected)
    raw/<experiment_id>/cycle_<n>.tokens.json        its token times sidecar: each request's token arrivals
    raw/<experiment_id>/cycle_<n>.timeline.json      its timeline sidecar (timeline.save)
    decisions/<experiment_id>/after_cycle_<n>.json   precision target: stop or one more cycle
    aggregated/<experiment_id>.json                  one experiment across its cycles
    summary.csv, failures.json, thermal_gaps.json
    notifications/campaign_complete.json
    report/<plot>.svg, report/<plot>.rst
    logs/measure/<experiment_id>/cycle_<n>.log, logs/decide/<experiment_id>/after_cycle_<n>.log, logs/<rule>.log
    benchmarks/measure/<experiment_id>/cycle_<n>.tsv Snakemake's timing of the job
    .state/                                          campaign.lock, failures/<experiment_id>/cycle_<n>.json,
                                                     the thermal gap's last window, analysis.json (written when
                                                     the aggregated files' analysis settings are not the campaign's),
                                                     set_aside/decisions/ (decisions edited by hand, moved aside)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RAW_NAME = re.compile(r"^cycle_([1-9][0-9]*)\.json$")
SIDECAR_NAME = re.compile(r"^cycle_([1-9][0-9]*)\.timeline\.json$")
TOKEN_TIMES_NAME = re.compile(r"^cycle_([1-9][0-9]*)\.tokens\.json$")
DECISION_NAME = re.compile(r"^after_cycle_([1-9][0-9]*)\.json$")
SIDECAR_SUFFIX = ".timeline.json"
TOKEN_TIMES_SUFFIX = ".tokens.json"
#: the files written beside a raw result, before it (each names its cycle): timeline and token times sidecars
SIDECAR_NAMES = (SIDECAR_NAME, TOKEN_TIMES_NAME)


@dataclass(frozen=True)
class Located:
    """What a path under a results folder names: ``kind`` (raw, sidecar (the timeline's), token_times, decision,
    aggregated), its experiment and
    its cycle (for a decision: the cycle it was taken after; None for an aggregated result)."""

    kind: str
    experiment_id: str
    cycle: int | None


@dataclass(frozen=True)
class Layout:
    """The files of one campaign, under ``root`` (``<results_dir>/<campaign_name>``). Paths are strings joined with
    ``/``, relative when ``root`` is (Snakemake compares them as strings)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", str(self.root))  # a Path is taken as its string

    # measurements
    def raw(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.root}/raw/{experiment_id}/cycle_{cycle}.json"

    def sidecar(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.root}/raw/{experiment_id}/cycle_{cycle}{SIDECAR_SUFFIX}"

    def token_times(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.root}/raw/{experiment_id}/cycle_{cycle}{TOKEN_TIMES_SUFFIX}"

    def measure_log(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.root}/logs/measure/{experiment_id}/cycle_{cycle}.log"

    def measure_benchmark(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.root}/benchmarks/measure/{experiment_id}/cycle_{cycle}.tsv"

    def failure_record(self, experiment_id: str, cycle: int | str) -> str:
        return f"{self.state_dir}/failures/{experiment_id}/cycle_{cycle}.json"

    # precision-targeted campaigns
    def decision(self, experiment_id: str, after_cycle: int | str) -> str:
        return f"{self.root}/decisions/{experiment_id}/after_cycle_{after_cycle}.json"

    def decide_log(self, experiment_id: str, after_cycle: int | str) -> str:
        return f"{self.root}/logs/decide/{experiment_id}/after_cycle_{after_cycle}.log"

    def set_aside_decision(self, experiment_id: str, after_cycle: int | str, stamp: str) -> str:
        """Where a decision edited by hand is moved (``stamp``: when), so that it is taken again."""
        return f"{self.state_dir}/set_aside/decisions/{experiment_id}/after_cycle_{after_cycle}.{stamp}.json"

    # derived files
    @property
    def aggregated_dir(self) -> str:
        return f"{self.root}/aggregated"

    def aggregated(self, experiment_id: str) -> str:
        return f"{self.aggregated_dir}/{experiment_id}.json"

    @property
    def summary(self) -> str:
        return f"{self.root}/summary.csv"

    @property
    def failures(self) -> str:
        return f"{self.root}/failures.json"

    @property
    def thermal_gaps(self) -> str:
        return f"{self.root}/thermal_gaps.json"

    @property
    def campaign_notification(self) -> str:
        return f"{self.root}/notifications/campaign_complete.json"

    @property
    def report_dir(self) -> str:
        return f"{self.root}/report"

    def report(self, name: str, suffix: str = ".svg") -> str:
        return f"{self.report_dir}/{name}{suffix}"

    def log(self, rule: str) -> str:
        """The log of a campaign-level rule (aggregate, thermal_gaps, notify_campaign, report_plots)."""
        return f"{self.root}/logs/{rule}.log"

    # state
    @property
    def state_dir(self) -> str:
        return f"{self.root}/.state"

    @property
    def lock(self) -> str:
        return f"{self.state_dir}/campaign.lock"

    @property
    def analysis_stamp(self) -> str:
        """The campaign's analysis settings, written when the aggregated files were made with others (an input of
        the aggregation once written: a newer stamp makes Snakemake aggregate again)."""
        return f"{self.state_dir}/analysis.json"

    # reading the folder back
    def raw_files(self, experiment_id: str = "*") -> list[Path]:
        """The raw results on disk (sidecars excluded), sorted: every experiment's, or one experiment's."""
        return sorted(p for p in Path(self.root).glob(f"raw/{experiment_id}/cycle_*.json") if RAW_NAME.match(p.name))

    def aggregated_files(self) -> dict[str, Path]:
        """Experiment id -> its aggregated result on disk, sorted by id."""
        return {p.stem: p for p in sorted(Path(self.aggregated_dir).glob("*.json"))}


def locate(path: str | Path) -> Located | None:
    """What a path names, from its last parts alone (any results folder), or None when it is none of those files."""
    p = Path(path)
    parent, folder = p.parent.name, p.parent.parent.name
    for kind, name, where in (
        ("raw", RAW_NAME, "raw"),
        ("sidecar", SIDECAR_NAME, "raw"),
        ("token_times", TOKEN_TIMES_NAME, "raw"),
    ):
        match = name.match(p.name)
        if match and folder == where:
            return Located(kind, parent, int(match.group(1)))
    match = DECISION_NAME.match(p.name)
    if match and folder == "decisions":
        return Located("decision", parent, int(match.group(1)))
    if parent == "aggregated" and p.suffix == ".json":
        return Located("aggregated", p.stem, None)
    return None


def _beside(raw_path: str | Path, suffix: str) -> str:
    """``cycle_<n>.json`` -> ``cycle_<n><suffix>``; any other output name gets the suffix appended."""
    text = str(raw_path)
    return (text[: -len(".json")] if text.endswith(".json") else text) + suffix


def sidecar_of(raw_path: str | Path) -> str:
    """The timeline sidecar beside a raw result (``cycle_<n>.json`` -> ``cycle_<n>.timeline.json``)."""
    return _beside(raw_path, SIDECAR_SUFFIX)


def token_times_of(raw_path: str | Path) -> str:
    """The token times sidecar beside a raw result (``cycle_<n>.json`` -> ``cycle_<n>.tokens.json``)."""
    return _beside(raw_path, TOKEN_TIMES_SUFFIX)


def cycle_of(raw_path: str | Path) -> int:
    """The cycle a raw result's file name says (``cycle_<n>.json``); ValueError for another name."""
    match = RAW_NAME.match(Path(raw_path).name)
    if not match:
        raise ValueError(f"{raw_path} is not named cycle_<n>.json")
    return int(match.group(1))


def experiment_of(raw_path: str | Path) -> str:
    """The experiment a raw result's folder names (``raw/<experiment_id>/cycle_<n>.json``)."""
    return Path(raw_path).parent.name
