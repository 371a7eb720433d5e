"""Precision-targeted campaigns: cycles continue until each experiment's confidence interval is as tight as asked.

With ``execution.precision_target.relative_half_width`` set, an experiment runs ``min_cycles`` cycles; after each
cycle from then on, a decision reads the experiment's raw results so far and either stops it (the Student-t
interval of the mean of ``metric``, at ``analysis.confidence``, is within ± the target of the mean; or it has run
``max_cycles``) or asks for one more cycle. The decision is a pure function of those raw results and the target
(:func:`assess`), written to a file that is never rewritten while its inputs and the target stay the same: a
resumed campaign reads the decisions already taken instead of taking them again. The aggregation recomputes the
same function over the cycles it aggregates, so the status it reports is the one the decisions reached.

A decision records the sha256 of each raw result it read (``raw_sha256``, cycle 1 first). A decision file is only
ever used as :func:`assess` gives it: before a run plans anything, a decision that is not what :func:`assess`
gives for its own values, or a ``stop`` followed by a measured cycle that its raw results do not give, is moved
out of the way and taken again (:func:`set_aside_edited_decisions`); the aggregation checks every decision it uses
against the raw results (:func:`decisions_used`).

The stopping rule. Judging the observed interval itself (stop as soon as t * s / sqrt(n) is within the target) makes
"target met" least trustworthy exactly where it matters: when the per-cycle spread is close to or above what the
target allows, an experiment stops early precisely when its sample spread came out small by chance, and the intervals
of those experiments miss the true mean far more often than the confidence level says (simulated at 95 %, spread
3 % of the mean, target ±2 %, 3 to 10 cycles: 85 % coverage given "target met"). So the decision judges the interval
with an upper confidence bound of the spread instead of the spread: with n valid values and sample standard
deviation s, the bound is s * sqrt((n - 1) / chi2_{1-b}(n - 1)), one-sided at b = ``SPREAD_BOUND_CONFIDENCE``
(90 %), and the target is met when t * bound / sqrt(n) is within the target of the mean's magnitude
(``judged_relative_half_width``). Where the target is met, the intervals reported for the experiment are built on
the same bound (:func:`assess` says why), so the interval the claim is about is the one judged; where
``max_cycles`` came first, they are the ordinary Student-t intervals of every cycle run.
``achieved_relative_half_width`` is the relative half-width of the interval reported.

What this guarantees, and what it does not (``benchmarks/precision_coverage.py`` measures both on simulated cycles,
Normal per-cycle values with CV 1-10 %, targets 2-5 %, 3 to 10 cycles, 95 %):

- A false claim, "target met" while the reported interval misses the true mean, happens in far fewer than
  1 - confidence of experiments (measured: at most 1.6 %, against up to 8.1 % when judging the spread itself), and
  the intervals of all experiments cover at least at their nominal level less 0.5 point (94.6 % at 95 %).
- Where the target is within reach (met in most experiments), the intervals of the experiments that met it cover at
  least at the nominal level (measured: at least 96.9 %). Where it is out of reach within ``max_cycles``, no rule
  built on the observed spread can make "target met" trustworthy: only lucky experiments meet it. Those are few
  under this rule, and they are what the false-claim bound counts.
- The price is cycles: 0.8 to 2.9 more than judging the spread itself, where the target is within reach.

Only cycles with a value of the metric count: an unavailable value is left out of the interval and does not count
toward ``min_cycles``, so an experiment never stops "target met" on fewer valid values than that.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .record.layout import Layout, locate
from .record.metrics import METRICS
from .record.raw import RawResult

KEY = "execution.precision_target"

#: One-sided confidence of the spread's upper bound that the decision judges (see the module's docstring).
SPREAD_BOUND_CONFIDENCE = 0.90


@dataclass(frozen=True)
class Target:
    """A campaign's precision target (``execution.precision_target``) and the confidence level it applies at."""

    relative_half_width: float
    metric: str
    min_cycles: int
    max_cycles: int
    confidence: float
    #: One-sided confidence of the chi-squared upper bound of the spread that the decision judges; None judges the
    #: observed spread itself (the plain rule, kept for comparison in benchmarks/precision_coverage.py). A decision
    #: taken under another rule compares as taken under another target, and is taken again.
    spread_bound_confidence: float | None = SPREAD_BOUND_CONFIDENCE

    def params(self) -> dict:
        """Plain data for a rule's ``params`` (a changed target is a changed decision)."""
        return asdict(self)

    def describe(self) -> str:
        spread = (
            "the observed spread"
            if self.spread_bound_confidence is None
            else f"the {self.spread_bound_confidence:.0%} upper bound of the spread"
        )
        return (
            f"until the {self.confidence:.0%} Student-t interval of the mean {self.metric}, judged with {spread}, is "
            f"within ±{percent(self.relative_half_width)} of it, {self.min_cycles} to {self.max_cycles} cycles"
        )


def percent(fraction: float | None) -> str:
    """A relative half-width for people: 0.0213 -> '2.13 %' (three significant digits)."""
    return "n/a" if fraction is None else f"{100 * fraction:.3g} %"


def target_of(campaign: dict) -> Target | None:
    """The target of a resolved campaign, or None when it runs a fixed number of cycles."""
    pt = (campaign.get("execution") or {}).get("precision_target") or {}
    if pt.get("relative_half_width") is None:
        return None
    return Target(
        float(pt["relative_half_width"]),
        pt["metric"],
        int(pt["min_cycles"]),
        int(pt["max_cycles"]),
        float(campaign["analysis"]["confidence"]),
    )


def from_params(params: dict | None) -> Target | None:
    return Target(**params) if params else None


def campaign_problem(campaign: dict) -> str | None:
    """What cannot hold in a schema-valid campaign's ``execution`` (as the user wrote it, before defaults), or None:
    target settings without a target (they would change nothing), a maximum below the minimum, and a fixed
    ``execution.cycles`` that contradicts the minimum of a target."""
    execution = campaign.get("execution") or {}
    pt = execution.get("precision_target") or {}
    target = pt.get("relative_half_width")
    if target is None:
        for key in ("metric", "min_cycles", "max_cycles"):
            if key in pt:
                return (
                    f"{KEY}.{key} = {json.dumps(pt[key])} has no effect: {KEY}.relative_half_width is null (every "
                    "experiment runs execution.cycles cycles); set a target, or remove the key"
                )
        return None
    from .config import load_schema

    defaults = {k: v["default"] for k, v in load_schema("campaign")["$defs"]["precision_target"]["properties"].items()}
    low, high = pt.get("min_cycles", defaults["min_cycles"]), pt.get("max_cycles", defaults["max_cycles"])
    if high < low:
        return f"key '{KEY}.max_cycles' = {high} is smaller than {KEY}.min_cycles = {low}; allowed: >= {low}"
    if "cycles" in execution and execution["cycles"] != low:
        return (
            f"key 'execution.cycles' = {execution['cycles']} contradicts {KEY}.min_cycles = {low}: with a "
            f"precision target every experiment runs {KEY}.min_cycles to max_cycles cycles; remove "
            "execution.cycles (or make it equal to min_cycles)"
        )
    return None


# ----------------------------------------------------------------------------------------------------- decisions


def assess(values: list[float | None], target: Target) -> dict:
    """The decision after ``len(values)`` cycles, from the target metric's value in each (None: unavailable).

    ``judged_relative_half_width`` is the Student-t half-width of the mean, computed with the spread's upper
    confidence bound (``target.spread_bound_confidence``; the spread itself when that is None), divided by the
    mean's magnitude: what the target is compared with. ``decision`` is ``stop`` when at least ``min_cycles`` values
    are available and it is within the target (``reason`` ``target_met``), or when ``max_cycles`` cycles have run
    (``max_cycles_reached``), else ``continue`` (``below_min_cycles`` while fewer than ``min_cycles`` cycles have
    run, ``too_few_values`` when they have but some values are unavailable, else ``target_not_met``).

    ``ci_low``/``ci_high`` is the interval reported for the metric over these cycles: the judged interval when the
    target is met, the plain Student-t interval otherwise; ``achieved_relative_half_width`` is its half-width
    relative to the mean. Half-widths are None with fewer than two values or a zero mean.

    Why the judged interval is the one reported when the target was met: the number of cycles then depended on how
    small their spread came out, and the plain Student-t interval of those cycles covers the true mean less often
    than its confidence level says; the judged one, built on the spread's upper confidence bound, covers. The
    aggregation applies this to every metric of the experiment, not only the target metric: metrics that move with
    it (energy with J/token, at a fixed output length) share its selection. An experiment that stopped at
    ``max_cycles`` ran every cycle it could; its plain interval covers at least at its level (it continued because
    its spread was large)."""
    from .stats import summarise

    n = len(values)
    plain = summarise(values, target.confidence)
    bounded = summarise(values, target.confidence, target.spread_bound_confidence)
    judged = _relative_half_width(bounded)
    met = plain["n"] >= target.min_cycles and judged is not None and judged <= target.relative_half_width
    if met:
        decision, reason = "stop", "target_met"
    elif n >= target.max_cycles:
        decision, reason = "stop", "max_cycles_reached"
    elif n < target.min_cycles:
        decision, reason = "continue", "below_min_cycles"
    elif plain["n"] < target.min_cycles:
        decision, reason = "continue", "too_few_values"
    else:
        decision, reason = "continue", "target_not_met"
    s = bounded if met else plain
    achieved = _relative_half_width(s)
    return {
        "cycles": n,
        "decision": decision,
        "reason": reason,
        "metric": target.metric,
        "values": s["values"],
        "valid_values": s["n"],
        "mean": s["mean"],
        "ci_low": s["ci_low"],
        "ci_high": s["ci_high"],
        "confidence": target.confidence,
        "ci_method": s["ci_method"],
        "achieved_relative_half_width": achieved,
        "judged_relative_half_width": judged,
        "spread_bound_confidence": target.spread_bound_confidence,
        "target_met": met,
    }


def _relative_half_width(s: dict) -> float | None:
    """Half the width of a :func:`stats.summarise` interval over the mean's magnitude (None: no interval, zero mean)."""
    return (s["ci_high"] - s["ci_low"]) / 2 / abs(s["mean"]) if s["ci_low"] is not None and s["mean"] else None


def metric_values(raws: list[dict], metric: str) -> list[float | None]:
    """The target metric of each raw result (read as the aggregation reads it)."""
    return [METRICS[metric].read(r) for r in raws]


class DecisionError(ValueError):
    pass


def read_raws(raw_paths: list[str], experiment_id: str) -> tuple[list[dict], list[str]]:
    """Cycles 1..n of one experiment, checked: each file holds the experiment and the cycle its name says; and the
    sha256 of each file's bytes, as read."""
    from .results import RAW_SCHEMA, read_result_and_digest

    raws, digests = [], []
    for expected, path in enumerate(raw_paths, 1):
        data, digest = read_result_and_digest(path, RAW_SCHEMA)
        rec = RawResult.from_dict(data)
        if rec.experiment_id != experiment_id or rec.cycle != expected:
            raise DecisionError(
                f"{path}: holds {rec.experiment_id} cycle {rec.cycle}, expected {experiment_id} cycle {expected}"
            )
        raws.append(rec.document)
        digests.append(digest)
    return raws, digests


def decide(raw_paths: list[str], experiment_id: str, after_cycle: int, target: Target, output: str) -> dict:
    """Take the decision after cycle ``after_cycle`` (raw results of cycles 1..after_cycle) and write it, with the
    sha256 of each raw result it read (``raw_sha256``, cycle 1 first)."""
    from .paths import utc_now_iso
    from .results import SCHEMA_VERSION, write_json_atomic

    if len(raw_paths) != after_cycle:
        raise DecisionError(f"decision after cycle {after_cycle} of {experiment_id} given {len(raw_paths)} raw results")
    raws, digests = read_raws(raw_paths, experiment_id)
    verdict = assess(metric_values(raws, target.metric), target)
    record = {
        "schema_version": SCHEMA_VERSION,
        "experiment_id": experiment_id,
        "after_cycle": after_cycle,
        **verdict,
        "target": target.params(),
        "raw_results": list(raw_paths),
        "raw_sha256": digests,
        "decided_at": utc_now_iso(),
    }
    write_json_atomic(output, record, durable=True)
    return record


def read_decision(path: str | Path, experiment_id: str, after_cycle: int) -> dict:
    """A decision file, checked; a damaged one is a one-line :class:`DecisionError` saying what to do."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        ok = (
            isinstance(record, dict)
            and record.get("experiment_id") == experiment_id
            and record.get("after_cycle") == after_cycle
            and record.get("decision") in ("stop", "continue")
        )
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise DecisionError(
            f"{path} is not the decision after cycle {after_cycle} of {experiment_id} (damaged?): delete "
            "it and rerun, which takes the decision again from the same raw results"
        )
    return record


def unreproduced(record: dict, after_cycle: int, values: list | None = None) -> str | None:
    """What makes a decision record other than what :func:`assess` gives under the target it records, for the
    values it records (or for ``values``, read from its raw results): None when it is exactly that."""
    what = "its values give" if values is None else "its raw results give"
    try:
        # a decision recorded before the spread's bound existed was taken by the plain rule (spread judged itself)
        target = Target(**{"spread_bound_confidence": None, **record["target"]})
        expected = assess(list(record["values"] if values is None else values), target)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "its target or values cannot be read"
    if expected["cycles"] != after_cycle:
        return f"it holds {expected['cycles']} values after cycle {after_cycle}"
    said = (record.get("decision"), record.get("reason"))
    if said != (expected["decision"], expected["reason"]):
        return f"it says {said[0]} ({said[1]}), {what} {expected['decision']} ({expected['reason']})"
    differ = [key for key, value in expected.items() if record.get(key) != value]
    return f"its {', '.join(differ)} differ from what {what}" if differ else None


def recorded_digests(record: dict, after_cycle: int) -> list[str] | None:
    """The sha256 of raw results 1..after_cycle that a decision recorded, or None (a decision of a version that
    recorded none, or a list that is not one digest per cycle)."""
    digests = record.get("raw_sha256")
    if isinstance(digests, list) and len(digests) == after_cycle and all(isinstance(d, str) for d in digests):
        return digests
    return None


def against_raws(record: dict, raws: list[dict], digests: list[str]) -> str | None:
    """What makes a decision other than the one raw results 1..n (``raws``, whose bytes had the sha256 ``digests``)
    give; None when it is that one, when they are not the bytes it recorded (the raw results changed since: flagged
    ``raw_result_changed``), or when its target cannot be read."""
    recorded = recorded_digests(record, len(raws))
    if recorded is not None and recorded != digests:
        return None
    try:
        metric = Target(**record["target"]).metric
    except (KeyError, TypeError):
        return None
    return unreproduced(record, len(raws), metric_values(raws, metric))


def check_against_raws(record: dict, raw_paths: list[str], experiment_id: str) -> str | None:
    """:func:`against_raws` for the raw result files of cycles 1..n (None as well when they cannot be read: the
    aggregation says so)."""
    from .results import ResultValidationError

    try:
        raws, digests = read_raws(raw_paths, experiment_id)
    except (DecisionError, ResultValidationError):
        return None
    return against_raws(record, raws, digests)


def readable_decisions(layout: Layout, experiment_id: str, first: int, last: int):
    """(n, path, record) of each decision after cycles ``first``..``last`` of an experiment that is on disk and reads
    as one (:func:`read_decision`); missing and damaged ones are skipped."""
    for n in range(first, last + 1):
        path = layout.decision(experiment_id, n)
        if not os.path.exists(path):
            continue
        try:
            record = read_decision(path, experiment_id, n)
        except DecisionError:
            continue
        yield n, path, record


def edited_decisions(root: str | Path, experiment_ids: list[str], target: Target) -> list[tuple[str, str]]:
    """The decision files on disk that are not what :func:`assess` gives, with why: one that does not follow from
    the values it records, or (under this target) a ``stop`` while a later cycle's raw result exists, which its
    raw results do not give. Such a file was edited by hand (or written by another version): used, it would stop an
    experiment or leave out a measured cycle on grounds no measurement gave. Damaged files are left to the walk's
    own error. Cheap for a campaign of any size: only a stop followed by a measured cycle reads raw results."""
    layout = Layout(str(root))
    wanted = target.params()
    found = []
    for eid in experiment_ids:
        for n, path, record in readable_decisions(layout, eid, target.min_cycles, target.max_cycles):
            problem = unreproduced(record, n)
            if (
                problem is None
                and record["decision"] == "stop"
                and record.get("target") == wanted
                and os.path.exists(layout.raw(eid, n + 1))
            ):
                problem = check_against_raws(record, [layout.raw(eid, c) for c in range(1, n + 1)], eid)
            if problem:
                found.append((path, problem))
    return found


def set_aside_edited_decisions(root: str | Path, experiment_ids: list[str], target: Target) -> list[str]:
    """Move every decision :func:`edited_decisions` finds to ``.state/set_aside/decisions/`` (kept, with the time
    it was moved), so that the run takes it again from the raw results; one line each, saying why and where."""
    from .paths import utc_now_iso

    layout = Layout(str(root))
    stamp = utc_now_iso().replace("-", "").replace(":", "")
    lines = []
    for path, problem in edited_decisions(root, experiment_ids, target):
        found = locate(path)
        dest = Path(layout.set_aside_decision(found.experiment_id, found.cycle, stamp))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        except OSError as exc:
            lines.append(
                f"{path} is not the decision its values and raw results give ({problem}) and cannot be moved "
                f"({exc.strerror or exc}): delete it and rerun, which takes it again"
            )
            continue
        lines.append(
            f"{path} is not the decision its values and raw results give ({problem}; edited by hand?): moved to "
            f"{dest}, taken again from the raw results"
        )
    return lines


def decisions_used(root: str | Path, experiment_id: str, target: Target, last_cycle: int) -> list[tuple[str, dict]]:
    """The decisions on disk after cycles ``min_cycles``..``last_cycle`` of an experiment taken under this target
    (path and record): those an aggregation of cycles 1..last_cycle rests on."""
    last = min(last_cycle, target.max_cycles)
    return [
        (path, record)
        for _, path, record in readable_decisions(Layout(str(root)), experiment_id, target.min_cycles, last)
        if record.get("target") == target.params()
    ]


def decided_cycles(get_decision, experiment_id: str, target: Target) -> tuple[int, str]:
    """Walk an experiment's decisions from ``min_cycles``: the number of cycles they settled on and the path of the
    last one (a ``stop``). ``get_decision(n)`` returns the path of the decision after cycle n; in the workflow it is
    Snakemake's ``checkpoints.decide.get(...)``, which raises IncompleteCheckpointException while that decision is
    still to be taken (Snakemake then schedules it, and calls the walk again once it exists)."""
    n = target.min_cycles
    while True:
        path = get_decision(n)
        record = read_decision(path, experiment_id, n)
        if record["decision"] == "stop":
            return n, path
        if n >= target.max_cycles:
            raise DecisionError(
                f"{path} asks for cycle {n + 1}, beyond max_cycles = {target.max_cycles}: delete the "
                "experiment's decisions and rerun"
            )
        n += 1


def decisions_on_disk(root: str | Path, experiment_id: str, target: Target) -> tuple[int, bool]:
    """What the decisions already taken (files under ``<root>/decisions/``) have scheduled for one experiment: the
    number of cycles, and whether a decision stopped it. Unreadable or foreign files, and decisions taken under
    another target, count as not yet taken."""
    n = target.min_cycles
    while True:
        try:
            record = read_decision(Layout(str(root)).decision(experiment_id, n), experiment_id, n)
        except DecisionError:
            return n, False
        if record.get("target") != target.params():  # taken under another target: it will be taken again
            return n, False
        if record["decision"] == "stop" or n >= target.max_cycles:
            return n, True
        n += 1


def status(values: list[float | None], cycle_numbers: list[int], target: Target) -> dict:
    """The precision block of an aggregated result: what the decisions reach on these cycles (:func:`assess`), or
    ``incomplete`` when the cycles are not 1..n with n at least ``min_cycles`` or the decision after them would ask
    for more (cycles failed or were still to come when the campaign stopped)."""
    verdict = assess(values, target)
    contiguous = cycle_numbers == list(range(1, len(cycle_numbers) + 1))
    settled = contiguous and verdict["decision"] == "stop"
    state = verdict["reason"] if settled else "incomplete"
    return {
        "metric": target.metric,
        "confidence": target.confidence,
        "target_relative_half_width": target.relative_half_width,
        "achieved_relative_half_width": verdict["achieved_relative_half_width"],
        "judged_relative_half_width": verdict["judged_relative_half_width"],
        "spread_bound_confidence": target.spread_bound_confidence,
        "target_met": verdict["target_met"],
        "max_cycles_reached": state == "max_cycles_reached",
        "status": state,
        "cycles_run": len(values),
        "min_cycles": target.min_cycles,
        "max_cycles": target.max_cycles,
    }


def planned_windows(root: str | Path, ranked: list[tuple[str, int]], target: Target) -> tuple[list, list]:
    """The measurements of a precision-targeted campaign, fewest and most, in campaign order (``ranked``: every
    (experiment, cycle) up to max_cycles, best first): the cycles the decisions taken so far have scheduled, and
    those plus every cycle up to max_cycles of the experiments that no decision has stopped yet."""
    state = {e: decisions_on_disk(root, e, target) for e in dict.fromkeys(e for e, _ in ranked)}
    least = [(e, c) for e, c in ranked if c <= state[e][0]]
    most = [(e, c) for e, c in ranked if c <= (state[e][0] if state[e][1] else target.max_cycles)]
    return least, most
