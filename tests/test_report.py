"""Report plots and captions."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from llenergymeasure.report import pareto_front


def test_pareto_front_maximises_throughput_and_minimises_energy():
    pts = [(100, 1.0), (200, 0.5), (150, 0.8), (300, 0.6), (50, 0.4)]
    # (150, 0.8) is dominated by (200, 0.5); the rest each win somewhere
    assert pareto_front(pts) == [4, 1, 3]
    assert pareto_front([(1, 1)]) == [0]


def svg_texts(path) -> list[str]:
    """The texts of a matplotlib SVG (it writes each text element's string as a comment before its glyphs)."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


@pytest.fixture(scope="module")
def one_run(tiny_model, tmp_path_factory):
    """One real measurement with its timeline saved, and its aggregation (3 copies as cycles)."""
    from conftest import tiny_experiment
    from llenergymeasure.aggregate import write_aggregated_all
    from llenergymeasure.measure import run_experiment

    root = tmp_path_factory.mktemp("report")
    cfg = tiny_experiment(warmup={"enabled": False}, timeline={"save": True, "interval_ms": 100})
    raw = root / "raw" / "pytorch-x" / "cycle_1.json"
    result = run_experiment(cfg, "pytorch-x", 1, tiny_model, str(raw))
    paths = [str(raw)]
    for cycle in (2, 3):
        other = copy.deepcopy(result)
        other["cycle"] = cycle
        path = raw.with_name(f"cycle_{cycle}.json")
        path.write_text(json.dumps(other))
        paths.append(str(path))
    agg = root / "aggregated" / "pytorch-x.json"
    write_aggregated_all(
        {"pytorch-x": paths}, {"pytorch-x": "only-one"}, str(agg.parent), str(root / "s.csv"), 0.1, 0.95
    )
    return root, str(raw), str(agg)


def test_one_point_on_the_front_is_drawn_and_the_legend_explains_markers(one_run):
    from llenergymeasure.report import write_report_files

    root, raw, agg = one_run
    out = root / "report-one"
    info = write_report_files([agg], [raw], str(out))
    assert info["pareto"] == ["only-one"]
    texts = svg_texts(out / "efficiency.svg")
    assert "Pareto front (one experiment)" in texts  # drawn, not only promised by the caption
    assert "square: energy includes estimates" in texts  # the CPU energy here is a TDP estimate
    caption = (out / "efficiency.rst").read_text()
    assert "is one experiment, ringed: only-one" in caption and "dashed line" not in caption
    assert "Squares: energy that includes estimates." in caption


def test_cpu_timeline_axis_spans_the_whole_scale(one_run):
    from llenergymeasure.report import plot_timeline

    root, raw, _ = one_run
    side = raw.replace(".json", ".timeline.json")
    data = json.loads(Path(side).read_text())
    data["cpu_util_pct"] = [100.0] * len(data["cpu_util_pct"])  # a flat line: matplotlib would zoom to 95-105 %
    flat_root = root / "flat" / "raw" / "pytorch-x"
    flat_root.mkdir(parents=True)
    (flat_root / "cycle_1.json").write_text(Path(raw).read_text())
    (flat_root / "cycle_1.timeline.json").write_text(json.dumps(data))
    out = root / "flat.svg"
    plot_timeline([str(flat_root / "cycle_1.json")], out)
    ticks = svg_texts(out)
    assert "0" in ticks and "100" in ticks and "96" not in ticks and "104" not in ticks


def test_captions_have_readable_numbers_and_no_raw_json(one_run):
    from llenergymeasure.report import write_report_files

    root, raw, agg = one_run
    out = root / "report-captions"
    write_report_files([agg], [raw], str(out))
    for name in ("efficiency", "drift", "latency", "timeline"):
        text = (out / f"{name}.rst").read_text()
        for number in re.findall(r"\d+\.\d+", text):  # 4 significant digits at most (0.09002 is fine), no raw floats
            assert len(number.replace(".", "").lstrip("0")) <= 4, (name, number, text)
        assert "{" not in text and '"' not in text, (name, text)  # no JSON
    assert "split" in (out / "timeline.rst").read_text()


def test_the_report_rule_declares_every_plot_and_caption_the_module_writes(one_run):
    """workflow/report.smk lists a plot per name the module writes, in the same order, and every caption."""
    from conftest import REPO
    from llenergymeasure.report import PLOTS, write_report_files

    root, raw, agg = one_run
    out = root / "report-files"
    write_report_files([agg], [raw], str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.svg" for n in PLOTS] + [f"{n}.rst" for n in PLOTS])
    rule = (REPO / "workflow" / "report.smk").read_text()
    assert re.findall(r'LAYOUT\.report\("(\w+)"\)', rule) == list(PLOTS)
    assert re.findall(r'caption=report_caption\("(\w+)"\)', rule) == list(PLOTS)
    assert "captions=report_captions()" in rule


def test_captions_and_plots_name_every_experiment_its_method_and_flags(one_run):
    """Two experiments: each is in the drift and latency plots, and each caption line says its energy method,
    whether it includes estimates, and its flags (or none)."""
    from llenergymeasure.report import write_report_files

    root, raw, agg = one_run
    first = json.loads(Path(agg).read_text())
    second = copy.deepcopy(first)
    second.update(experiment_id="pytorch-y", config_name="other-one", includes_estimate=False, energy_method="cpu:rapl")
    second["flags"] = {"short_window": 3}
    first.update(flags={}, includes_estimate=True, energy_method="cpu:estimate_tdp")
    paths = []
    for a in (first, second):
        path = root / "two" / f"{a['experiment_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(a))
        paths.append(str(path))
    out = root / "report-two"
    write_report_files(paths, [raw], str(out))
    for name in ("efficiency", "drift"):
        caption = (out / f"{name}.rst").read_text()
        assert "- **only-one** (``pytorch-x``): energy cpu:estimate_tdp (includes estimates);" in caption
        assert "flags: none" in caption
        assert "- **other-one** (``pytorch-y``): energy cpu:rapl; " in caption and "flags: short_window ×3" in caption
        assert "95% Student-t intervals of the mean across cycles" in caption
    for plot in ("drift", "latency"):
        texts = svg_texts(out / f"{plot}.svg")
        assert "only-one" in texts and "other-one" in texts, (plot, texts)
    assert {"p50", "p90", "p99"} <= set(svg_texts(out / "latency.svg"))


# ------------------------------------------------------------------------------------------------ the load line


def set_metric(stats: dict, mean, half=None) -> None:
    """An aggregated metric's mean and, with ``half``, its interval of that half-width (the rest as aggregated)."""
    low, high = (None, None) if half is None or mean is None else (mean - half, mean + half)
    stats.update(mean=mean, ci_low=low, ci_high=high)


def served(base: dict, name: str, rate: float | None, *, batch=8, seed=0, arrival="poisson", sustained=True) -> dict:
    """A synthetic aggregated result under a serving load at ``rate`` (offline when ``rate`` is None), copied from
    a real one: its config's load section and batch knob, the load-line metrics, and the flag of an unsustained
    load."""
    agg = copy.deepcopy(base)
    agg.update(experiment_id=f"pytorch-{name}", config_name=name, flags={} if sustained else {"load_not_sustained": 2})
    agg["config"]["pytorch"]["batch_size"] = batch
    load = {"arrival": "offline", "rate_per_s": None, "gamma_shape": None, "concurrency": None, "trace": None}
    if rate is not None:
        load.update(arrival=arrival, rate_per_s=rate)
    agg["config"]["load"] = {**load, "seed": seed, "slo": {"ttft_ms": None, "tpot_ms": None}}
    offered = None if rate is None else rate * 0.98
    m = agg["metrics"]
    set_metric(m["offered_rate_per_s"], offered, None if rate is None else 0.01)
    set_metric(m["j_per_request"], None if rate is None else 10.0 / rate, 0.5)
    set_metric(m["ttft_p90_ms"], None if rate is None else 20.0 * rate, 2.0)
    return agg


def write_aggs(root: Path, aggs: list[dict]) -> list[str]:
    paths = []
    for a in aggs:
        path = root / f"{a['experiment_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(a))
        paths.append(str(path))
    return paths


def test_the_load_line_has_a_line_per_configuration_in_rate_order_and_leaves_offline_out(one_run):
    """Two configurations (batch 8 at two rates, with different seeds; batch 16 at three rates, given out of order)
    make two lines through their points in rate order; offline experiments are left out; an unsustained point is
    hollow and named in the legend and the caption."""
    from llenergymeasure.report import load_lines, write_report_files

    root, raw, agg = one_run
    base = json.loads(Path(agg).read_text())
    aggs = [
        served(base, "b8-r1", 1.0, seed=1),
        served(base, "b16-r4", 4.0, batch=16, sustained=False),
        served(base, "b8-r2", 2.0, seed=2),
        served(base, "b16-r1", 1.0, batch=16),
        served(base, "b16-r2", 2.0, batch=16),
        served(base, "offline", None),
    ]
    lines = load_lines(aggs)
    assert [[a["config_name"] for a in members] for _, members in lines] == [
        ["b8-r1", "b8-r2"],
        ["b16-r1", "b16-r2", "b16-r4"],
    ]
    model = base["config"]["model_name"]
    labels = [f"pytorch {model} batch_size 8 poisson", f"pytorch {model} batch_size 16 poisson"]
    assert [label for label, _ in lines] == labels
    out = root / "report-load"
    write_report_files(write_aggs(root / "load", aggs), [raw], str(out))
    texts = svg_texts(out / "load.svg")
    assert set(labels) <= set(texts) and "hollow: load not sustained" in texts
    assert "offline" not in " ".join(t for t in texts if t not in labels)
    # the unsustained point, white inside the second line's colour (matplotlib's C1) in both panels
    assert (out / "load.svg").read_text().count("fill: #ffffff; stroke: #ff7f0e") == 2
    caption = (out / "load.rst").read_text()
    assert f"- **{labels[0]}**: offered 0.98, 1.96 requests/s" in caption
    assert f"- **{labels[1]}**: offered 0.98, 1.96, 3.92 requests/s" in caption
    assert "Hollow markers: experiments flagged load_not_sustained" in caption and "b16-r4" in caption
    assert "Left out: 1 experiment(s) without a rated serving load" in caption
    assert "95% Student-t intervals" in caption


def test_the_load_line_marks_no_point_hollow_when_every_load_was_sustained(one_run, tmp_path):
    from llenergymeasure.report import plot_load

    _, _, agg = one_run
    base = json.loads(Path(agg).read_text())
    info = plot_load([served(base, "a", 0.5), served(base, "b", 1.5, seed=9)], tmp_path / "load.svg")
    assert list(info["lines"].values()) == [[0.49, 1.47]] and info["not_sustained"] == []
    assert "hollow: load not sustained" not in svg_texts(tmp_path / "load.svg")
    assert "fill: #ffffff; stroke: #1f77b4" not in (tmp_path / "load.svg").read_text()


def test_an_offline_campaign_gets_a_load_figure_that_says_there_is_none(one_run):
    """The report rule declares every plot, so the load line is written all the same: its text and caption say
    that no experiment has a rated serving load; a result of a version without serving loads counts as offline.
    The other plots are as before."""
    from llenergymeasure.report import load_lines, write_report_files

    root, raw, agg = one_run
    old = json.loads(Path(agg).read_text())
    old["config"].pop("load", None)
    assert load_lines([old]) == []
    out = root / "report-offline"
    info = write_report_files(write_aggs(root / "offline", [old]), [raw], str(out))
    assert info["pareto"] == ["only-one"]
    texts = " ".join(svg_texts(out / "load.svg"))
    assert "no experiment in this campaign has a serving load at a stated rate" in texts
    assert "No experiment in this campaign has a serving load at a stated rate" in (out / "load.rst").read_text()
