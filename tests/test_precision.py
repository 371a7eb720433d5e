"""Precision-targeted campaigns: the decision rule, the campaign keys, the plan, the aggregation and its summary,
the duration estimate, and (in tests/test_precision_workflow.py) real Snakemake runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import tiny_experiment
from conftest import write_cycles as shared_write_cycles
from llenergymeasure.aggregate import (
    PRECISION_COLUMNS,
    SUMMARY_COLUMNS,
    AggregationError,
    aggregate_experiment,
    read_summary,
    write_aggregated_all,
)
from llenergymeasure.campaign import measurement_order, plan, resolve_campaign
from llenergymeasure.errors import ConfigError
from llenergymeasure.measure import run_experiment
from llenergymeasure.precision import (
    DecisionError,
    Target,
    assess,
    decide,
    decided_cycles,
    decisions_on_disk,
    decisions_used,
    edited_decisions,
    planned_windows,
    read_decision,
    recorded_digests,
    set_aside_edited_decisions,
    status,
    unreproduced,
)
from llenergymeasure.record.layout import Layout

T = Target(relative_half_width=1.5, metric="energy_j", min_cycles=3, max_cycles=5, confidence=0.95)


def half_width(values, confidence=0.95, spread_bound=None):
    """The Student-t half-width of the mean relative to it; with ``spread_bound``, built on the one-sided upper
    confidence bound of the standard deviation (chi-squared)."""
    from scipy.stats import chi2, t

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if spread_bound is not None:
        sd *= math.sqrt((n - 1) / chi2.ppf(1 - spread_bound, n - 1))
    return t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) / abs(mean)


# ------------------------------------------------------------------------------------------------- the decision


def test_the_decision_rule():
    # [10, 12, 14]: mean 12, sd 2, t(0.975, 2) = 4.303: half-width 4.97, 41.4 % of the mean. The 90 % upper bound
    # of the spread with 2 degrees of freedom is sd * sqrt(2 / 0.2107) = 3.08 sd: judged half-width 127.6 %
    plain, judged = half_width([10, 12, 14]), half_width([10, 12, 14], spread_bound=0.9)
    assert (plain, judged) == (pytest.approx(0.4141, abs=1e-4), pytest.approx(1.2755, abs=1e-4))
    met = assess([10.0, 12.0, 14.0], T)  # target ±150 %
    assert (met["decision"], met["reason"], met["target_met"]) == ("stop", "target_met", True)
    # the target was met: the interval reported is the judged one, built on the spread's bound
    assert met["judged_relative_half_width"] == pytest.approx(judged)
    assert met["achieved_relative_half_width"] == pytest.approx(judged)
    assert met["ci_method"] == "student_t_chi2_spread_bound" and met["spread_bound_confidence"] == 0.9
    assert (met["ci_high"] - met["ci_low"]) / 2 / met["mean"] == pytest.approx(judged)
    # the observed interval (±41 %) is within ±50 %, its spread's upper bound is not: one more cycle, and the
    # interval reported so far is the plain one
    half = Target(0.5, "energy_j", 3, 5, 0.95)
    more = assess([10.0, 12.0, 14.0], half)
    assert (more["decision"], more["reason"], more["target_met"]) == ("continue", "target_not_met", False)
    assert more["achieved_relative_half_width"] == pytest.approx(plain) and more["ci_method"] == "student_t"
    # the plain rule (the spread itself judged), kept for comparison, stops there
    assert assess([10.0, 12.0, 14.0], dataclasses.replace(half, spread_bound_confidence=None))["target_met"] is True
    tight = Target(0.4, "energy_j", 3, 5, 0.95)
    last = assess([10.0, 20.0, 10.0, 20.0, 10.0], tight)  # 5 = max_cycles; ±48.6 % observed, ±94.2 % judged
    assert (last["decision"], last["reason"], last["target_met"]) == ("stop", "max_cycles_reached", False)
    assert last["achieved_relative_half_width"] == pytest.approx(half_width([10, 20, 10, 20, 10]))
    # a 99 % interval is wider: the same values meet ±150 % at 95 % but not at 99 %
    assert assess([10.0, 12.0, 14.0], Target(1.5, "energy_j", 3, 5, 0.99))["decision"] == "continue"
    # below the minimum there is no decision to stop, however tight the values
    assert assess([10.0, 10.0], T)["reason"] == "below_min_cycles"
    # an unavailable value (None) is left out of the interval and does not count toward min_cycles: two values
    # never meet a target, however wide
    wide = Target(100.0, "energy_j", 3, 5, 0.95)
    assert assess([10.0, None, 12.0], wide)["values"] == [10.0, None, 12.0]
    two = assess([10.0, None, 12.0], wide)
    assert (two["decision"], two["reason"], two["valid_values"]) == ("continue", "too_few_values", 2)
    assert assess([10.0, None, 12.0, 11.0], wide)["reason"] == "target_met"
    assert assess([10.0, None, 12.0, None, None], wide)["reason"] == "max_cycles_reached"
    # a zero mean has no relative width: never "met"
    assert assess([1.0, -1.0, 0.0], T)["achieved_relative_half_width"] is None
    assert assess([None, None, None], T)["decision"] == "continue"
    assert assess([None, None, None, None, None], T)["reason"] == "max_cycles_reached"


def test_a_decision_taken_under_another_rule_is_taken_again(tmp_path, template):
    """Decisions on disk taken by the plain rule (no spread bound) count as not taken under today's target."""
    layout = Layout(str(tmp_path))
    raws = write_cycles(tmp_path, template, [10.0, 12.0, 14.0], "e")
    plain = dataclasses.replace(T, spread_bound_confidence=None)
    decide(raws, "e", 3, plain, layout.decision("e", 3))
    assert decisions_on_disk(tmp_path, "e", plain) == (3, True)
    assert decisions_on_disk(tmp_path, "e", T) == (3, False)


def test_decisions_are_files_read_back_and_walked(tmp_path):
    recorded = {}

    def get(n):
        if n not in recorded:
            raise LookupError(n)  # stands for Snakemake's IncompleteCheckpointException: not decided yet
        return recorded[n]

    for n, verdict in ((3, "continue"), (4, "continue"), (5, "stop")):
        path = tmp_path / "decisions" / "e" / f"after_cycle_{n}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"experiment_id": "e", "after_cycle": n, "decision": verdict, "reason": "x", "target": T.params()}
            )
        )
        recorded[n] = str(path)
    assert decided_cycles(get, "e", T) == (5, recorded[5])
    assert decisions_on_disk(tmp_path, "e", T) == (5, True)
    # decisions taken under another target (or confidence level) are not the campaign's: they will be taken again
    assert decisions_on_disk(tmp_path, "e", Target(T.relative_half_width / 2, T.metric, 3, 5, T.confidence)) == (
        3,
        False,
    )
    del recorded[5]
    with pytest.raises(LookupError):
        decided_cycles(get, "e", T)
    (tmp_path / "decisions" / "e" / "after_cycle_5.json").unlink()
    assert decisions_on_disk(tmp_path, "e", T) == (5, False)  # cycle 5 scheduled, its decision still to come
    assert decisions_on_disk(tmp_path, "other", T) == (3, False)
    (tmp_path / "decisions" / "e" / "after_cycle_4.json").write_text('{"truncated')
    with pytest.raises(
        DecisionError, match=r"after_cycle_4\.json is not the decision after cycle 4 of e .damaged.*delete it and rerun"
    ):
        read_decision(tmp_path / "decisions" / "e" / "after_cycle_4.json", "e", 4)


@pytest.fixture(scope="module")
def template(tiny_model):
    return run_experiment(tiny_experiment(warmup={"enabled": False}), "exp-p", 1, tiny_model, None)


def write_cycles(root, template, energies, exp_id="exp-p"):
    return shared_write_cycles(root, template, energies, exp_id)


def test_decide_reads_the_raw_results_it_is_given(tmp_path, template):
    paths = write_cycles(tmp_path, template, [10.0, 12.0, 14.0])
    out = tmp_path / "decisions" / "exp-p" / "after_cycle_3.json"
    record = decide(paths, "exp-p", 3, T, str(out))
    assert json.loads(out.read_text()) == record
    assert record["values"] == [10.0, 12.0, 14.0] and record["decision"] == "stop" and record["target"] == T.params()
    with pytest.raises(DecisionError, match="holds exp-p cycle 1, expected exp-p cycle 2"):
        decide([paths[0], paths[0], paths[2]], "exp-p", 3, T, str(tmp_path / "x.json"))
    per_token = Target(0.5, "j_per_output_token", 3, 5, 0.95)
    record = decide(paths, "exp-p", 3, per_token, str(tmp_path / "y.json"))
    n = template["tokens"]["output_tokens"]
    assert record["values"] == pytest.approx([10.0 / n, 12.0 / n, 14.0 / n])


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def edit_raw(path, energy_j: float) -> None:
    """A raw result changed by hand: same measurement (window start), another gross energy."""
    data = json.loads(Path(path).read_text())
    data["energy"]["total"]["gross_energy_j"] = energy_j
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def test_a_decision_records_the_digest_of_each_raw_result_it_read(tmp_path, template):
    paths = write_cycles(tmp_path, template, [10.0, 12.0, 14.0])
    record = decide(paths, "exp-p", 3, T, str(tmp_path / "decisions" / "exp-p" / "after_cycle_3.json"))
    assert record["raw_sha256"] == [sha256(p) for p in paths]
    assert recorded_digests(record, 3) == record["raw_sha256"] and recorded_digests(record, 4) is None


def test_an_edited_decision_is_set_aside_and_never_drops_a_measured_cycle(tmp_path, template):
    """A decision edited by hand is found before a run plans anything, whether its verdict no longer follows from
    its values or its values were edited too (a stop followed by a measured cycle is checked against the raw
    results), and moved out of the way so that it is taken again; decisions as taken are left alone."""
    t = Target(0.05, "energy_j", 3, 4, 0.95)
    paths = write_cycles(tmp_path, template, [10.0, 20.0, 10.0, 20.0])
    layout = Layout(str(tmp_path))
    after = {n: layout.decision("exp-p", n) for n in (3, 4)}
    taken = {n: decide(paths[:n], "exp-p", n, t, after[n]) for n in (3, 4)}
    assert [taken[n]["decision"] for n in (3, 4)] == ["continue", "stop"]
    assert edited_decisions(tmp_path, ["exp-p"], t) == []

    # the verdict edited: it no longer follows from the values the decision records
    Path(after[3]).write_text(json.dumps({**taken[3], "decision": "stop", "reason": "target_met"}))
    ((path, problem),) = edited_decisions(tmp_path, ["exp-p"], t)
    assert path == after[3] and problem == "it says stop (target_met), its values give continue (target_not_met)"
    # the values edited as well, so that the file agrees with itself: cycle 4 was measured, so the raw results
    # that the stop rests on are read, and they give another decision
    steady = {**taken[3], **assess([10.0, 10.0, 10.0], t)}
    Path(after[3]).write_text(json.dumps(steady))
    assert unreproduced(steady, 3) is None
    ((path, problem),) = edited_decisions(tmp_path, ["exp-p"], t)
    assert problem == "it says stop (target_met), its raw results give continue (target_not_met)"
    (line,) = set_aside_edited_decisions(tmp_path, ["exp-p"], t)
    (moved,) = (tmp_path / ".state" / "set_aside" / "decisions" / "exp-p").iterdir()
    assert not Path(after[3]).exists() and json.loads(moved.read_text()) == steady
    assert line.startswith(f"{after[3]} is not the decision its values and raw results give (it says stop")
    assert line.endswith(f"edited by hand?): moved to {moved}, taken again from the raw results")
    # a stop that is what the raw results give stays, measured cycles after it or not
    decide(paths[:3], "exp-p", 3, Target(0.9, "energy_j", 3, 4, 0.95), after[3])
    assert edited_decisions(tmp_path, ["exp-p"], Target(0.9, "energy_j", 3, 4, 0.95)) == []


def test_the_aggregation_checks_the_decisions_against_the_raw_results(tmp_path, template):
    """A raw result changed after a decision read it is flagged raw_result_changed, naming the cycle, the decision
    and the digest it recorded; a decision that read the very bytes aggregated but is not the one they give (edited
    by hand, consistently) stops the aggregation in one line."""
    paths = write_cycles(tmp_path, template, [10.0, 12.0, 14.0])
    out = Layout(str(tmp_path)).decision("exp-p", 3)
    record = decide(paths, "exp-p", 3, T, out)
    agg = aggregate_experiment(paths, "p", 0.5, 0.95, target=T, decisions=decisions_used(tmp_path, "exp-p", T, 3))
    assert "raw_result_changed" not in agg["flags"] and [c["raw_sha256"] for c in agg["per_cycle"]] == [
        sha256(p) for p in paths
    ]
    edit_raw(paths[1], 13.0)
    agg = aggregate_experiment(paths, "p", 0.5, 0.95, target=T, decisions=decisions_used(tmp_path, "exp-p", T, 3))
    assert agg["flags"]["raw_result_changed"] == 1
    second = agg["per_cycle"][1]
    assert second["raw_sha256"] == sha256(paths[1]) != record["raw_sha256"][1]
    assert (second["raw_sha256_recorded"], second["raw_sha256_recorded_in"]) == (record["raw_sha256"][1], out)
    assert all("raw_sha256_recorded" not in c for c in (agg["per_cycle"][0], agg["per_cycle"][2]))
    assert agg["metrics"]["energy_j"]["values"] == [10.0, 13.0, 14.0]  # the numbers are those read, flagged

    # a decision edited to agree with itself, on the bytes it recorded
    fresh = write_cycles(tmp_path / "b", template, [10.0, 20.0, 10.0])
    out = Layout(str(tmp_path / "b")).decision("exp-p", 3)
    tight = Target(0.05, "energy_j", 3, 5, 0.95)
    taken = decide(fresh, "exp-p", 3, tight, out)
    Path(out).write_text(json.dumps({**taken, **assess([10.0, 10.0, 10.0], tight)}))
    with pytest.raises(AggregationError) as exc:
        aggregate_experiment(
            fresh, "p", 0.5, 0.95, target=tight, decisions=decisions_used(tmp_path / "b", "exp-p", tight, 3)
        )
    assert str(exc.value) == (
        f"{out} is not the decision its raw results give (it says stop (target_met), its raw results give continue "
        "(target_not_met); edited by hand?): delete it and rerun, which takes it again from them"
    )


# --------------------------------------------------------------------------------------------- campaign keys

BASE = {"campaign_name": "p", "model": "lem-tiny-llama", "grid": {"backends": ["pytorch"]}}


def resolve(execution, tmp_path, **extra):
    return resolve_campaign({**BASE, "execution": execution, **extra}, tmp_path, tmp_path, env={})


def test_keys_have_defaults_and_mean_off_without_a_target(tmp_path):
    from llenergymeasure.config import load_schema
    from llenergymeasure.record.metrics import TARGET_METRICS

    leaves = load_schema("campaign")["$defs"]["precision_target"]["properties"]
    assert all("default" in v and v.get("description") for v in leaves.values())
    assert sorted(leaves["metric"]["enum"]) == sorted(TARGET_METRICS)  # the registry's metrics marked target
    c = resolve({}, tmp_path)
    assert c["execution"]["precision_target"] == {
        "relative_half_width": None,
        "metric": "j_per_output_token",
        "min_cycles": 3,
        "max_cycles": 10,
    }
    assert plan(c).target is None
    c = resolve({"precision_target": {"relative_half_width": 0.02}}, tmp_path, analysis={"confidence": 0.9})
    assert plan(c).target == Target(0.02, "j_per_output_token", 3, 10, 0.9)
    # execution.cycles equal to the minimum is consistent (the default campaign file sets cycles: 3)
    assert (
        plan(resolve({"cycles": 3, "precision_target": {"relative_half_width": 0.02}}, tmp_path)).target.min_cycles == 3
    )


@pytest.mark.parametrize(
    "pt, extra, expected",
    [
        (
            {"relative_half_width": 0},
            {},
            "key 'execution.precision_target.relative_half_width' = 0 is out of range; allowed: > 0",
        ),
        (
            {"relative_half_width": 2},
            {},
            "key 'execution.precision_target.relative_half_width' = 2 is out of range; allowed: <= 1",
        ),
        (
            {"relative_half_width": "2%"},
            {},
            "key 'execution.precision_target.relative_half_width' = '2%' has the wrong type; allowed: number or null",
        ),
        (
            {"relative_half_width": 0.05, "metric": "latency"},
            {},
            "key 'execution.precision_target.metric' = 'latency' is not allowed; allowed: j_per_output_token, energy_j, output_tokens_per_s",
        ),
        (
            {"relative_half_width": 0.05, "min_cycles": 2},
            {},
            "key 'execution.precision_target.min_cycles' = 2 is out of range; allowed: >= 3",
        ),
        (
            {"relative_half_width": 0.05, "max_cycles": 101},
            {},
            "key 'execution.precision_target.max_cycles' = 101 is out of range; allowed: <= 100",
        ),
        (
            {"relative_half_width": 0.05, "min_cycles": 5, "max_cycles": 4},
            {},
            "key 'execution.precision_target.max_cycles' = 4 is smaller than execution.precision_target.min_cycles = 5; allowed: >= 5",
        ),
        (
            {"relative_half_width": 0.05, "max_cycles": 2},
            {},
            "key 'execution.precision_target.max_cycles' = 2 is out of range; allowed: >= 3",
        ),
        (
            {"relative_half_width": 0.05},
            {"cycles": 5},
            "key 'execution.cycles' = 5 contradicts execution.precision_target.min_cycles = 3: with a precision target every "
            "experiment runs execution.precision_target.min_cycles to max_cycles cycles; remove execution.cycles (or make it equal to min_cycles)",
        ),
        (
            {"max_cycles": 20},
            {},
            "execution.precision_target.max_cycles = 20 has no effect: execution.precision_target.relative_half_width is null "
            "(every experiment runs execution.cycles cycles); set a target, or remove the key",
        ),
        (
            {"relative_half_width": None, "metric": "energy_j"},
            {},
            'execution.precision_target.metric = "energy_j" has no effect',
        ),
        (
            {"relative_half_width": 0.05, "min_cycle": 4},
            {},
            "unknown key 'execution.precision_target.min_cycle' (value 4); allowed keys here: "
            "max_cycles, metric, min_cycles, relative_half_width (did you mean 'min_cycles'?)",
        ),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, pt, extra, expected):
    with pytest.raises(ConfigError) as info:
        resolve({"precision_target": pt, **extra}, tmp_path)
    text = str(info.value)
    assert expected in text and "\n" not in text


# ------------------------------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize("structure", ["interleaved", "grouped", "shuffled"])
def test_the_minimum_plan_and_the_order_of_cycles_added_later(tmp_path, structure):
    grid = {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2, 4]}}}
    fixed = plan(resolve({"cycles": 3, "structure": structure, "seed": 7}, tmp_path, grid=grid))
    targeted = plan(
        resolve(
            {"structure": structure, "seed": 7, "precision_target": {"relative_half_width": 0.05, "max_cycles": 6}},
            tmp_path,
            grid=grid,
        )
    )
    ids = [e.experiment_id for e in targeted.expansion.experiments]
    # scheduled up front: the first min_cycles of every experiment, in exactly the order of a 3-cycle campaign
    assert targeted.order == fixed.order and len(targeted.order) == 9
    # ranked: every cycle up to the maximum by the order rule, so that a cycle added later keeps its place
    ranked = sorted(targeted.priority, key=targeted.priority.get, reverse=True)
    assert ranked == measurement_order(ids, 6, structure, 7)
    if structure == "interleaved":  # A4 B4 C4 after A3 B3 C3
        assert ranked[9:12] == [(ids[0], 4), (ids[1], 4), (ids[2], 4)]
    if structure == "grouped":  # A's added cycles before B's first
        assert ranked[:6] == [(ids[0], c) for c in range(1, 7)]
    if structure == "shuffled":  # cycle by cycle, each cycle in its own seeded order
        assert [c for _, c in ranked] == sorted(c for _, c in ranked)


def test_no_target_leaves_the_plan_as_it_was(tmp_path):
    grid = {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}}
    p = plan(resolve({"cycles": 4, "structure": "shuffled", "seed": 3}, tmp_path, grid=grid))
    ids = [e.experiment_id for e in p.expansion.experiments]
    assert p.order == measurement_order(ids, 4, "shuffled", 3) and p.target is None
    assert p.priority == {k: len(p.order) - i for i, k in enumerate(p.order)}


# ----------------------------------------------------------------------------------------------- aggregation


def test_aggregated_precision_and_summary_columns(tmp_path, template):
    met = write_cycles(tmp_path, template, [10.0, 12.0, 14.0], "exp-met")
    maxed = write_cycles(tmp_path, template, [10.0, 40.0, 10.0, 40.0, 10.0], "exp-max")
    agg = aggregate_experiment(met, "met", 0.5, 0.95, target=T)
    p = agg["precision"]
    assert p == {
        "metric": "energy_j",
        "confidence": 0.95,
        "target_relative_half_width": 1.5,
        "achieved_relative_half_width": pytest.approx(half_width([10, 12, 14], spread_bound=0.9)),
        "judged_relative_half_width": pytest.approx(half_width([10, 12, 14], spread_bound=0.9)),
        "spread_bound_confidence": 0.9,
        "target_met": True,
        "max_cycles_reached": False,
        "status": "target_met",
        "cycles_run": 3,
        "min_cycles": 3,
        "max_cycles": 5,
    }
    # the achieved width is the one of the interval the result reports
    m = agg["metrics"]["energy_j"]
    assert p["achieved_relative_half_width"] == pytest.approx((m["ci_high"] - m["ci_low"]) / 2 / m["mean"])
    # the target was met: every metric's interval is built on its spread's upper bound, the spread stays its own
    assert {s["ci_method"] for s in agg["metrics"].values()} == {"student_t_chi2_spread_bound"}
    assert m["std"] == pytest.approx(2.0)
    assert "precision_target_not_met" not in agg["flags"]
    agg = aggregate_experiment(maxed, "max", 0.5, 0.95, target=Target(0.1, "energy_j", 3, 5, 0.95))
    assert agg["precision"]["status"] == "max_cycles_reached" and agg["precision"]["max_cycles_reached"] is True
    # it ran to max_cycles: plain intervals
    assert {s["ci_method"] for s in agg["metrics"].values()} == {"student_t"}
    assert agg["flags"]["precision_target_not_met"] == 1
    # cycles 1 and 3 only (2 failed): whatever the width, the decisions did not conclude
    agg = aggregate_experiment(
        [met[0], met[2]], "gap", 0.5, 0.95, planned_cycles=3, target=Target(0.99, "energy_j", 3, 5, 0.95)
    )
    assert agg["precision"]["status"] == "incomplete" and agg["flags"]["missing_cycles"] == 1
    # without a target the aggregated result is as before: no precision block
    assert "precision" not in aggregate_experiment(met, "met", 0.5, 0.95)

    names = {"exp-met": "met", "exp-max": "max"}
    rows = write_aggregated_all(
        {"exp-met": met, "exp-max": maxed},
        names,
        str(tmp_path / "agg"),
        str(tmp_path / "s.csv"),
        0.5,
        0.95,
        {"exp-met": 3, "exp-max": 5},
        T,
    )
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header == SUMMARY_COLUMNS + list(PRECISION_COLUMNS)
    back = read_summary(str(tmp_path / "s.csv"))
    assert [
        (r["cycles"], r["precision_target_met"], r["precision_max_cycles_reached"], r["precision_status"]) for r in back
    ] == [(3, True, False, "target_met"), (5, False, True, "max_cycles_reached")]
    assert back[0]["precision_achieved_rel_half_width"] == pytest.approx(rows[0]["precision_achieved_rel_half_width"])
    assert back[1]["flags"] == "precision_target_not_met" or "precision_target_not_met" in back[1]["flags"].split(";")
    write_aggregated_all({"exp-met": met}, names, str(tmp_path / "agg2"), str(tmp_path / "s2.csv"), 0.5, 0.95)
    assert (tmp_path / "s2.csv").read_text().splitlines()[0].split(",") == SUMMARY_COLUMNS  # as before


def test_status_is_what_the_decisions_reach():
    assert status([10.0, 12.0, 14.0], [1, 2, 3], T)["status"] == "target_met"
    assert status([10.0, 12.0, 14.0], [1, 2, 4], T)["status"] == "incomplete"
    assert status([10.0, 20.0, 10.0, 20.0], [1, 2, 3, 4], Target(0.1, "energy_j", 3, 5, 0.95))["status"] == "incomplete"


def test_report_shows_the_precision_beside_each_point(tmp_path, template):
    from llenergymeasure.report import write_report_files

    met = write_cycles(tmp_path, template, [10.0, 10.5, 11.0], "exp-met")
    maxed = write_cycles(tmp_path, template, [10.0, 20.0, 10.0, 20.0, 10.0], "exp-max")
    target = Target(0.45, "energy_j", 3, 5, 0.95)
    write_aggregated_all(
        {"exp-met": met, "exp-max": maxed},
        {"exp-met": "met", "exp-max": "max"},
        str(tmp_path / "agg"),
        str(tmp_path / "s.csv"),
        0.5,
        0.95,
        None,
        target,
    )
    aggs = [str(tmp_path / "agg" / f"{e}.json") for e in ("exp-met", "exp-max")]
    write_report_files(aggs, met + maxed, str(tmp_path / "report"))
    svg = (tmp_path / "report" / "efficiency.svg").read_text()
    caption = (tmp_path / "report" / "efficiency.rst").read_text()
    assert "36.4% (3 cycles) ✓" in svg and "(5 cycles) ✗ max" in svg
    assert (
        "Precision target: cycles continued until the 95% interval of the mean energy_j, judged with the 90% upper "
        "bound of the spread, was within ±45 % of it" in caption
    )
    assert "- **met**: 3 cycles, ±36.4 %: target met" in caption and "- **max**: 5 cycles, ±48.6 %" in caption
    assert "max_cycles reached before the target" in caption


# ---------------------------------------------------------------------------------------- failures and duration


def test_failures_are_counted_against_the_cycles_scheduled(tmp_path):
    from llenergymeasure.failures import report

    rec = report(
        tmp_path,
        {"a": "A", "b": "B"},
        {"a": 5, "b": 3},
        {("a", c) for c in (1, 2, 3, 4)} | {("b", c) for c in (1, 2, 3)},
    )
    assert rec["planned_measurements"] == 8 and rec["failed_measurements"] == 1
    assert [(f["experiment_id"], f["cycle"]) for f in rec["failures"]] == [("a", 5)]
    assert report(tmp_path, {"a": "A"}, 2, set())["planned_measurements"] == 2


def test_validate_estimates_a_duration_range(tmp_path, capsys):
    from llenergymeasure.cli import main

    campaign = {
        **BASE,
        "results_dir": str(tmp_path / "results"),
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        "execution": {
            "config_gap_s": 10,
            "cycle_gap_s": 20,
            "precision_target": {"relative_half_width": 0.05, "min_cycles": 3, "max_cycles": 6},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(campaign))
    assert main(["--json", "validate", str(tmp_path / "c.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    est = out["duration"]
    assert (est["jobs_to_run"], est["jobs_to_run_max"]) == (6, 12)
    # 60 s per job assumed: 6 jobs, 3 config gaps and 2 cycle gaps; 12 jobs, 6 config and 5 cycle gaps
    assert est["estimated_s"] == pytest.approx(6 * 60 + 3 * 10 + 2 * 20)
    assert est["estimated_max_s"] == pytest.approx(12 * 60 + 6 * 10 + 5 * 20)
    assert out["precision_target"]["max_cycles"] == 6
    # decisions already taken narrow the range: the first experiment stopped after 4 cycles
    ids = [e["experiment_id"] for e in out["experiments"]]
    target = plan(resolve_campaign(campaign, tmp_path, tmp_path, env={})).target.params()
    for n, verdict in ((3, "continue"), (4, "stop")):
        path = tmp_path / "results" / "p" / "decisions" / ids[0] / f"after_cycle_{n}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"experiment_id": ids[0], "after_cycle": n, "decision": verdict, "target": target}))
    p = plan(resolve_campaign(campaign, tmp_path, tmp_path, env={}))
    least, most = planned_windows(p.results_root, sorted(p.priority, key=p.priority.get, reverse=True), p.target)
    assert (len(least), len(most)) == (7, 10)
    assert main(["validate", str(tmp_path / "c.yaml")]) == 0
    text = capsys.readouterr().out
    assert (
        "2 experiments x 3-6 cycles" in text
        and "Precision target: cycles continue until the 95% Student-t interval" in text
    )
    assert "7 to 10 measurements to run (of 7 to 10)" in text


# ------------------------------------------------------------------------------------------ workflow helpers


class Checkpoints:
    """Snakemake's ``checkpoints`` as an input function sees it: ``decide.get`` returns the decisions already taken
    (given as {(experiment, n): path}) and raises IncompleteCheckpointException for the others, as
    snakemake/checkpoints.py's Checkpoint.get does."""

    def __init__(self, root: str, taken: dict):
        self.decide = self
        self.root, self.taken = root, taken

    def get(self, experiment: str, n: int):
        from types import SimpleNamespace

        from snakemake.exceptions import IncompleteCheckpointException
        from snakemake.io import checkpoint_target

        if (experiment, n) in self.taken:
            return SimpleNamespace(output=[self.taken[(experiment, n)]])
        raise IncompleteCheckpointException(
            None, checkpoint_target(f"{self.root}/decisions/{experiment}/after_cycle_{n}.json")
        )


def two_experiments(tmp_path, width: float, results_dir: str = "results"):
    """The plan of a campaign of two experiments (batch sizes 1 and 2) with a target of ±width, max_cycles 5."""
    grid = {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}}
    target = {"precision_target": {"relative_half_width": width, "max_cycles": 5}}
    return plan(resolve(target, tmp_path, grid=grid, results_dir=results_dir))


def test_a_settled_experiment_is_not_walked_again_until_its_decisions_change(tmp_path, monkeypatch):
    """After every decision Snakemake calls the aggregation's input function again: an experiment whose walk ended on
    a stop is answered from what that walk read, without asking Snakemake for its checkpoints again, as long as its
    decision files are the files that were read."""
    import llenergymeasure.workflow as lem
    from llenergymeasure.results import write_json_atomic

    monkeypatch.chdir(tmp_path)
    p = two_experiments(tmp_path, 0.05)
    a, b = (e.experiment_id for e in p.expansion.experiments)
    root = p.results_root

    def decision(experiment: str, n: int, verdict: str) -> str:
        path = f"{root}/decisions/{experiment}/after_cycle_{n}.json"
        record = {"experiment_id": experiment, "after_cycle": n, "decision": verdict, "target": p.target.params()}
        write_json_atomic(path, record)
        return path

    class Counting(Checkpoints):
        def get(self, experiment: str, n: int):
            self.asked.append((experiment, n))
            return super().get(experiment, n)

    decisions = {(a, 3): decision(a, 3, "continue"), (a, 4): decision(a, 4, "stop")}
    checkpoints = Counting(root, decisions)
    checkpoints.asked = []
    first = lem.aggregate_inputs(p, checkpoints)
    assert first == [
        *(Layout(root).raw(a, c) for c in (1, 2, 3, 4)),
        decisions[(a, 4)],
        f"{root}/decisions/{b}/after_cycle_3.json",
    ]
    assert checkpoints.asked == [(a, 3), (a, 4), (b, 3)]
    # b's decision is taken: only b is walked again
    decisions[(b, 3)] = decision(b, 3, "stop")
    checkpoints.asked = []
    second = lem.aggregate_inputs(p, checkpoints)
    assert second == [*first[:5], *(Layout(root).raw(b, c) for c in (1, 2, 3)), decisions[(b, 3)]]
    assert checkpoints.asked == [(b, 3)]
    checkpoints.asked = []
    assert lem.aggregate_inputs(p, checkpoints) == second and checkpoints.asked == []
    # a decision file replaced (taken again, here asking for one more cycle): that experiment is walked again
    decisions[(a, 4)] = decision(a, 4, "continue")
    decisions[(a, 5)] = decision(a, 5, "stop")
    checkpoints.asked = []
    assert lem.aggregate_inputs(p, checkpoints)[:6] == [
        *(Layout(root).raw(a, c) for c in range(1, 6)),
        decisions[(a, 5)],
    ]
    assert checkpoints.asked == [(a, 3), (a, 4), (a, 5)]
    # another target is another walk, even over the same files
    other = two_experiments(tmp_path, 0.1)
    checkpoints.asked = []
    lem.aggregate_inputs(other, checkpoints)
    assert checkpoints.asked == [(a, 3), (a, 4), (a, 5), (b, 3)]


def test_what_the_workflow_asks_for_with_a_target(tmp_path, monkeypatch):
    import llenergymeasure.workflow as lem

    def target_plan(width: float):
        return two_experiments(tmp_path, width, results_dir=str(tmp_path / "results"))

    p = target_plan(0.05)
    a, b = (e.experiment_id for e in p.expansion.experiments)
    root = p.results_root
    assert lem.all_raw(p) == [Layout(root).raw(e, c) for c in (1, 2, 3) for e in (a, b)]  # the minimum plan
    # before any decision: the aggregation waits for every experiment's first decision, each flagged as a checkpoint
    # target (one call names them all)
    pending = lem.aggregate_inputs(p, Checkpoints(root, {}))
    assert pending == [f"{root}/decisions/{a}/after_cycle_3.json", f"{root}/decisions/{b}/after_cycle_3.json"]
    assert all(f.flags.get("checkpoint_target") for f in pending)
    assert lem.decision_inputs(p, a, "4") == [Layout(root).raw(a, c) for c in (1, 2, 3, 4)]
    for bad in ("2", "6"):
        with pytest.raises(ValueError, match=f"no decision after cycle {bad}"):
            lem.decision_inputs(p, a, bad)
    assert lem.decision_priority(p) > max(p.priority.values())
    # a decided on 5 cycles (continue after 3 and 4, stop after 5); b's first decision still to be taken
    decisions = {}
    for n, verdict in ((3, "continue"), (4, "continue"), (5, "stop")):
        path = tmp_path / f"{root}/decisions/{a}/after_cycle_{n}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"experiment_id": a, "after_cycle": n, "decision": verdict, "target": p.target.params()})
        )
        decisions[(a, n)] = str(path)
    monkeypatch.chdir(tmp_path)
    assert lem.aggregate_inputs(p, Checkpoints(root, decisions)) == [
        *(Layout(root).raw(a, c) for c in range(1, 6)),
        str(tmp_path / f"{root}/decisions/{a}/after_cycle_5.json"),
        f"{root}/decisions/{b}/after_cycle_3.json",
    ]
    # rule all also asks for the cycles 4 and 5 those decisions scheduled (read from disk, under this target only)
    assert lem.scheduled_raw(p) == [Layout(root).raw(a, 4), Layout(root).raw(a, 5)]
    assert lem.scheduled_raw(target_plan(0.1)) == []  # decisions taken under another target are taken again
    # the pass over what completed (after failed measurements) aggregates the raw results that exist, any cycle
    for e, c in ((a, 1), (b, 1), (a, 2), (a, 4)):
        path = tmp_path / Layout(root).raw(e, c)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    monkeypatch.chdir(tmp_path)
    root_rel = "results/p"
    p = dataclasses.replace(two_experiments(tmp_path, 0.05), completed_only=True)
    existing = [
        Layout(root_rel).raw(a, 1),
        Layout(root_rel).raw(b, 1),
        Layout(root_rel).raw(a, 2),
        Layout(root_rel).raw(a, 4),
    ]
    assert lem.all_raw(p) == lem.aggregate_inputs(p) == existing
    assert lem.scheduled_raw(p) == []


def test_lem_results_shows_the_precision(tmp_path, template, capsys):
    from llenergymeasure.cli import main

    met = write_cycles(tmp_path, template, [10.0, 12.0, 14.0], "exp-met")
    write_aggregated_all(
        {"exp-met": met}, {"exp-met": "met"}, str(tmp_path / "agg"), str(tmp_path / "s.csv"), 0.5, 0.95, None, T
    )
    assert main(["results", "--summary", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "precision_achieved_rel_half_width" in out.splitlines()[0] and "1.276 " in out
    assert main(["results", "--summary", str(tmp_path / "s.csv"), "--columns", "config_name,precision_status"]) == 0
    assert "target_met" in capsys.readouterr().out
