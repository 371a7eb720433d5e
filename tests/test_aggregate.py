"""Aggregation across cycles, summary CSV and the thermal-gap audit, on raw results from a real measurement."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from conftest import tiny_experiment
from conftest import write_cycles as shared_write_cycles
from llenergymeasure.aggregate import (
    SUMMARY_COLUMNS,
    AggregationError,
    aggregate_experiment,
    read_summary,
    write_aggregated_all,
)
from llenergymeasure.measure import run_experiment
from llenergymeasure.results import ResultValidationError, read_result, write_json_atomic
from llenergymeasure.thermal import thermal_audit


@pytest.fixture(scope="module")
def template(tiny_model):
    return run_experiment(tiny_experiment(warmup={"enabled": False}), "exp-agg", 1, tiny_model, None)


def write_cycles(root, template, energies, exp_id="exp-agg"):
    return shared_write_cycles(root, template, energies, exp_id)


def test_statistics_across_cycles(tmp_path, template):
    paths = write_cycles(tmp_path, template, [10.0, 12.0, 14.0])
    agg = aggregate_experiment(paths, "name", cv_threshold=0.5, confidence=0.95)
    m = agg["metrics"]["energy_j"]
    assert m["values"] == [10.0, 12.0, 14.0] and m["mean"] == 12.0 and m["std"] == pytest.approx(2.0)
    assert m["ci_low"] == pytest.approx(12 - 4.303 * 2 / 3**0.5, abs=1e-3)
    assert agg["cv_flag"] is False and agg["cycles"] == 3
    assert agg["latency_pooled_ms"]["e2e_ms"]["n"] == 3 * template["tokens"]["num_requests"]
    flagged = aggregate_experiment(paths, "name", cv_threshold=0.1, confidence=0.95)
    assert flagged["cv_flag"] is True and "high_cv_across_cycles" in flagged["flags"]


def test_inconsistent_inputs_are_refused(tmp_path, template):
    paths = write_cycles(tmp_path, template, [1.0, 2.0])
    other = json.loads(Path(paths[1]).read_text())
    other["provenance"]["config_sha256"] = "0" * 64
    os.unlink(paths[1])  # a finished raw result is never written over
    write_json_atomic(paths[1], other, "raw_result")
    with pytest.raises(AggregationError, match="config differs"):
        aggregate_experiment(paths, "n", 0.1, 0.95)
    wrong = tmp_path / "raw" / "exp-agg" / "cycle_7.json"
    wrong.write_text(Path(paths[0]).read_text())
    with pytest.raises(AggregationError, match="holds cycle 1, file name says 7"):
        aggregate_experiment([str(wrong)], "n", 0.1, 0.95)


def test_every_cycle_counted_once(tmp_path, template):
    """B16: aggregation is over exactly the expected results; a repeated cycle is refused, not averaged in."""
    paths = write_cycles(tmp_path, template, [1.0, 2.0, 3.0])
    agg = aggregate_experiment(paths, "n", 0.1, 0.95)
    assert agg["cycles"] == 3 and agg["cycle_numbers"] == [1, 2, 3]
    copy_of_first = tmp_path / "elsewhere" / "cycle_1.json"
    copy_of_first.parent.mkdir()
    copy_of_first.write_text(Path(paths[0]).read_text())
    with pytest.raises(AggregationError, match="cycle numbers repeat"):
        aggregate_experiment([*paths, str(copy_of_first)], "n", 0.1, 0.95)


def test_invalid_raw_file_is_refused(tmp_path, template):
    bad = copy.deepcopy(template)
    bad["energy"]["components"][0]["method"] = "guess"
    with pytest.raises(ResultValidationError):
        write_json_atomic(tmp_path / "x.json", bad, "raw_result")
    assert not (tmp_path / "x.json").exists()


def test_summary_csv_roundtrip(tmp_path, template):
    a = write_cycles(tmp_path, template, [10.0, 11.0, 12.0], "exp-a")
    b = write_cycles(tmp_path, template, [20.0, 21.0, 22.0], "exp-b")
    write_aggregated_all(
        {"exp-a": a, "exp-b": b},
        {"exp-a": "A", "exp-b": "B"},
        str(tmp_path / "agg"),
        str(tmp_path / "s.csv"),
        0.1,
        0.95,
    )
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header == SUMMARY_COLUMNS
    required = {
        "experiment_id",
        "backend",
        "model",
        "batch_size",
        "fp_precision",
        "cycles",
        "output_tokens_mean",
        "energy_j_mean",
        "energy_j_ci_low",
        "energy_j_ci_high",
        "energy_net_j_mean",
        "j_per_output_token_mean",
        "j_per_output_token_ci_low",
        "j_per_output_token_ci_high",
        "output_tokens_per_s_mean",
        "energy_method",
        "cv_flag",
    }
    assert required <= set(header)
    rows = read_summary(str(tmp_path / "s.csv"))
    assert [r["experiment_id"] for r in rows] == ["exp-a", "exp-b"]
    assert rows[1]["energy_j_mean"] == pytest.approx(21.0) and rows[0]["batch_size"] == 2 and rows[0]["cycles"] == 3
    assert rows[0]["energy_method"] == template["energy"]["total"]["method"]


def test_thermal_audit_flags_short_gaps(tmp_path, template):
    r1 = copy.deepcopy(template)
    r2 = copy.deepcopy(template)
    r2["cycle"] = 2
    r2["timestamps"]["window_start"] = "2099-01-01T00:00:00Z"
    r2["timestamps"]["window_end"] = "2099-01-01T00:00:01Z"
    r2["thermal"].update(gap_kind="cycle", gap_required_s=300.0, since_previous_window_s=12.0)
    paths = []
    for i, r in enumerate((r1, r2), 1):
        p = tmp_path / f"cycle_{i}.json"
        write_json_atomic(p, r, "raw_result")
        paths.append(str(p))
    exp = r1["experiment_id"]
    write_aggregated_all({exp: paths}, {exp: "n"}, str(tmp_path / "agg"), str(tmp_path / "s.csv"), 0.1, 0.95)
    agg = tmp_path / "agg" / f"{exp}.json"
    report = thermal_audit([str(agg)], str(tmp_path / "thermal.json"))
    assert report["ok"] is False and "shorter than the 300.0 s" in report["problems"][0]["problem"]
    assert [w["cycle"] for w in report["windows"]] == [1, 2] and report["windows"][1]["gap_kind"] == "cycle"
    assert report["windows"][0]["host"] == template["environment"]["host"]


def test_per_component_metrics(tmp_path, template):
    """GPU-only energy and J/token stay separate from totals that may include CPU estimates."""
    paths = write_cycles(tmp_path, template, [1.0, 2.0])
    agg = aggregate_experiment(paths, "n", 0.1, 0.95)
    cpu = sum(c["gross_energy_j"] for c in template["energy"]["components"] if c["component"] == "cpu")
    assert agg["metrics"]["cpu_energy_j"]["values"] == [cpu, cpu]
    assert agg["metrics"]["gpu_energy_j"]["values"] == [None, None]  # no GPU here: unavailable, not zero
    assert agg["metrics"]["gpu_j_per_output_token"]["mean"] is None


def test_a_damaged_raw_result_leaves_the_previous_derived_files(tmp_path, template):
    """The error names the file and what to do; nothing derived is replaced or removed before every input is read."""
    a = write_cycles(tmp_path, template, [1.0, 2.0], "exp-a")
    b = write_cycles(tmp_path, template, [3.0, 4.0], "exp-b")
    out, summary = tmp_path / "aggregated", tmp_path / "summary.csv"
    write_aggregated_all({"exp-a": a, "exp-b": b}, {"exp-a": "A", "exp-b": "B"}, str(out), str(summary), 0.1, 0.95)
    before = {p: p.read_bytes() for p in [summary, *out.iterdir()]}
    os.chmod(b[1], 0o644)
    with open(b[1], "r+b") as fh:
        fh.truncate(1500)
    with pytest.raises(ResultValidationError) as info:
        write_aggregated_all({"exp-a": a, "exp-b": b}, {"exp-a": "A", "exp-b": "B"}, str(out), str(summary), 0.1, 0.95)
    text = str(info.value)
    assert (
        text.startswith(f"{b[1]} is not complete JSON")
        and "delete it and rerun the campaign to measure that cycle again" in text
    )
    assert {p: p.read_bytes() for p in [summary, *out.iterdir()]} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aggregated", "raw", "summary.csv"]  # no staging left


def test_fewer_cycles_than_planned_are_flagged(tmp_path, template):
    paths = write_cycles(tmp_path, template, [1.0, 2.0])
    agg = aggregate_experiment(paths, "name", cv_threshold=0.5, confidence=0.95, planned_cycles=3)
    assert agg["cycles"] == 2 and agg["flags"]["missing_cycles"] == 1
    assert "missing_cycles" not in aggregate_experiment(paths, "name", 0.5, 0.95, planned_cycles=2)["flags"]


def test_an_interval_of_a_positive_quantity_below_zero_is_reported_and_flagged(tmp_path, template):
    """Energy cannot be negative; three cycles of 1, 10 and 1 J give mean 4 J and an interval down to -8.9 J. It is
    reported as computed, marked, and the experiment flagged, once per such metric."""
    agg = aggregate_experiment(write_cycles(tmp_path, template, [1.0, 10.0, 1.0]), "wide", 0.5, 0.95)
    for name in ("energy_j", "j_per_output_token"):
        assert agg["metrics"][name]["ci_low"] < 0 and agg["metrics"][name]["ci_below_zero"] is True
    assert agg["metrics"]["energy_j"]["ci_low"] == pytest.approx(4 - 4.303 * 27**0.5 / 3**0.5, abs=0.01)
    below = [m for m, s in agg["metrics"].items() if s.get("ci_below_zero")]
    assert agg["flags"]["interval_below_zero"] == len(below) >= 2
    steady = aggregate_experiment(write_cycles(tmp_path / "s", template, [10.0, 10.5, 11.0]), "steady", 0.5, 0.95)
    assert not any(s.get("ci_below_zero") for s in steady["metrics"].values())


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def edit_raw(path, energy_j: float, window_start: str | None = None) -> None:
    """A raw result rewritten: another gross energy; with a ``window_start``, another measurement of the cycle."""
    data = json.loads(Path(path).read_text())
    data["energy"]["total"]["gross_energy_j"] = energy_j
    if window_start:
        data["timestamps"]["window_start"] = window_start
    os.chmod(path, 0o644)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def test_a_raw_result_changed_after_it_was_aggregated_is_flagged_until_measured_again(tmp_path, template, capsys):
    """The aggregated result records the sha256 of every raw result it read. A raw result changed since (same
    measurement: same window start) is named by lem results, flagged raw_result_changed by the next aggregation
    and by every later one (the digest recorded first is kept), until that cycle is measured again."""
    from llenergymeasure.aggregate import raw_results_since_aggregation
    from llenergymeasure.cli import main

    paths = write_cycles(tmp_path, template, [10.0, 12.0])
    out, summary = tmp_path / "aggregated", tmp_path / "summary.csv"
    original = sha256(paths[1])

    def aggregate() -> tuple[dict, list[str]]:
        said: list[str] = []
        write_aggregated_all({"exp-agg": paths}, {}, str(out), str(summary), 0.5, 0.95, said=said)
        return json.loads((out / "exp-agg.json").read_text()), said

    agg, said = aggregate()
    assert [c["raw_sha256"] for c in agg["per_cycle"]] == [sha256(p) for p in paths] and said == []
    assert "raw_result_changed" not in agg["flags"] and raw_results_since_aggregation(tmp_path) == []

    edit_raw(paths[1], 13.0)
    assert raw_results_since_aggregation(tmp_path) == [
        f"{tmp_path}/raw/exp-agg/cycle_2.json is not the bytes aggregated in {out / 'exp-agg.json'} (sha256 "
        f"{original[:12]}..., now {sha256(paths[1])[:12]}...): changed since; a rerun aggregates it again, flagged "
        "raw_result_changed"
    ]
    assert main(["results", "--summary", str(summary)]) == 0
    assert "Note: " + raw_results_since_aggregation(tmp_path)[0] in capsys.readouterr().err
    for _ in range(2):  # flagged by this aggregation and the next one, with the digest recorded first
        agg, said = aggregate()
        assert agg["flags"]["raw_result_changed"] == 1 and agg["metrics"]["energy_j"]["values"] == [10.0, 13.0]
        second = agg["per_cycle"][1]
        assert second["raw_sha256"] == sha256(paths[1])
        assert (second["raw_sha256_recorded"], second["raw_sha256_recorded_in"]) == (
            original,
            str(out / "exp-agg.json"),
        )
        assert said == [
            f"raw_result_changed: exp-agg cycle 2: its raw result is not the bytes {out / 'exp-agg.json'} recorded "
            f"(sha256 {original[:12]}..., now {sha256(paths[1])[:12]}...)"
        ]
    assert raw_results_since_aggregation(tmp_path) == [
        f"exp-agg cycle 2 is flagged raw_result_changed: {tmp_path}/raw/exp-agg/cycle_2.json is not the bytes "
        f"{out / 'exp-agg.json'} recorded (sha256 {original[:12]}...)"
    ]
    read_result(out / "exp-agg.json", "aggregated_result")  # the schema takes the digests

    # measured again (deleted and measured: another window): another measurement, nothing changed
    edit_raw(paths[1], 12.5, window_start="2030-01-01T00:00:00.000000Z")
    agg, said = aggregate()
    assert "raw_result_changed" not in agg["flags"] and "raw_sha256_recorded" not in agg["per_cycle"][1]
    assert said == [] and raw_results_since_aggregation(tmp_path) == []


def test_raw_results_left_out_are_listed_and_flagged(tmp_path, template):
    """A raw result on disk that the aggregation leaves out is never left out silently: the aggregated result lists
    it with why, and is flagged cycles_not_aggregated."""
    from llenergymeasure.jobs import _left_out

    paths = write_cycles(tmp_path, template, [10.0, 12.0, 14.0])
    left = _left_out(str(tmp_path), "exp-agg", paths[:2], None, 2)
    assert left == [{"cycle": 3, "reason": "beyond execution.cycles = 2"}]
    agg = aggregate_experiment(paths[:2], "n", 0.5, 0.95, left_out=left)
    assert agg["flags"]["cycles_not_aggregated"] == 1 and agg["cycles_not_aggregated"] == left
    assert "cycles_not_aggregated" not in aggregate_experiment(paths, "n", 0.5, 0.95)["flags"]


def test_every_metric_has_a_unit_a_meaning_and_a_reader_of_raw_results(tmp_path, template):
    """The metric registry is the one list: the aggregation summarises exactly its metrics, the summary's metric
    columns are its statistics, and each metric reads a number (or None) from a real raw result."""
    import numbers

    from llenergymeasure.record.metrics import REGISTRY, STATISTICS

    names = [m.name for m in REGISTRY]
    assert len(names) == len(set(names))
    for m in REGISTRY:
        assert m.unit and m.meaning and set(m.summary) <= set(STATISTICS), m
        assert set(m.columns()) <= set(SUMMARY_COLUMNS), m
        value = m.read(template)
        assert value is None or isinstance(value, numbers.Real), (m.name, value)
    agg = aggregate_experiment(
        write_cycles(tmp_path, template, [10.0, 12.0]), "name", cv_threshold=0.5, confidence=0.95
    )
    assert list(agg["metrics"]) == names and all(set(c) >= set(names) for c in agg["per_cycle"])


def test_the_summary_schema_and_the_aggregated_schema_follow_the_metric_registry():
    """A metric is added in the registry; its summary columns and its place in the aggregated metrics must then be
    declared in the schemas too, which this test says exactly."""
    import json
    from pathlib import Path

    from llenergymeasure.aggregate import PRECISION_COLUMNS
    from llenergymeasure.record.metrics import REGISTRY

    schemas = Path(__file__).resolve().parent.parent / "src" / "llenergymeasure" / "schemas"
    summary = json.loads((schemas / "summary_row.schema.json").read_text())
    declared = list(summary["properties"])
    assert declared == SUMMARY_COLUMNS + list(PRECISION_COLUMNS), (
        f"summary_row.schema.json properties should be, in this order: {SUMMARY_COLUMNS + list(PRECISION_COLUMNS)}"
    )
    aggregated = json.loads((schemas / "aggregated_result.schema.json").read_text())
    required = aggregated["properties"]["metrics"]["required"]
    assert set(required) <= {m.name for m in REGISTRY}, "aggregated metrics required but not in the registry"


def test_cycles_measured_in_separate_runs_or_settings_are_flagged(tmp_path, template):
    """Cycles 1-2 from one campaign run, cycle 3 added by a later one: flagged cycles_span_runs, with the cycles of
    each run. Another host is a separate setting too; one run on one host is not flagged."""
    paths = write_cycles(tmp_path, template, [10.0, 11.0, 12.0])
    runs = ("20261201T100000Z-aaaaaa", "20261201T100000Z-aaaaaa", "20261205T090000Z-bbbbbb")
    for path, run in zip(paths, runs, strict=True):
        data = json.loads(Path(path).read_text())
        data["run_id"] = run
        os.chmod(path, 0o644)
        Path(path).write_text(json.dumps(data))
    agg = aggregate_experiment(paths, "runs", 0.5, 0.95)
    assert agg["flags"]["cycles_span_runs"] == 2
    assert [(g["run_id"], g["cycles"]) for g in agg["measured_in"]] == [
        ("20261201T100000Z-aaaaaa", [1, 2]),
        ("20261205T090000Z-bbbbbb", [3]),
    ]
    assert [c["run_id"] for c in agg["per_cycle"]][-1] == "20261205T090000Z-bbbbbb"
    assert "cycles_span_runs" not in aggregate_experiment(paths[:2], "one", 0.5, 0.95)["flags"]
    data = json.loads(Path(paths[1]).read_text())
    data["environment"]["host"] = "another-host"
    Path(paths[1]).write_text(json.dumps(data))
    assert aggregate_experiment(paths[:2], "hosts", 0.5, 0.95)["flags"]["cycles_span_runs"] == 2
