"""Result files: the fast validator and jsonschema agree; atomic writes leave no partial file."""

from __future__ import annotations

import copy
import json
import os

import pytest

from conftest import tiny_experiment
from llenergymeasure.config import compiled_validator, explaining_validator
from llenergymeasure.measure import run_experiment
from llenergymeasure.results import ResultExistsError, ResultValidationError, write_json_atomic


@pytest.fixture(scope="module")
def raw(tiny_model):
    return run_experiment(tiny_experiment(warmup={"enabled": False}, num_input_prompts=2), "r", 1, tiny_model, None)


def mutations(doc):
    """Walk the document and yield variants with one value replaced by something of another type or range."""

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, [*path, k])
            yield path, "__drop__"
        elif isinstance(node, list):
            for i, v in enumerate(node[:2]):
                yield from walk(v, [*path, i])
        else:
            for bad in ("text", -1, None, 1.5, True):
                if bad != node or type(bad) is not type(node):
                    yield path, bad

    for path, bad in walk(doc, []):
        if not path:
            continue
        variant = copy.deepcopy(doc)
        target = variant
        for key in path[:-1]:
            target = target[key]
        if bad == "__drop__":
            if isinstance(target, dict):
                target.pop(path[-1], None)
        else:
            target[path[-1]] = bad
        yield variant


def test_fast_and_reference_validators_agree(raw):
    fast, ref = compiled_validator("raw_result"), explaining_validator("raw_result")
    if fast is None:
        pytest.skip("fastjsonschema not installed")
    checked = 0
    for variant in mutations(raw):
        try:
            fast(variant)
            fast_ok = True
        except Exception:  # noqa: BLE001 - fastjsonschema's refusal, whatever its class
            fast_ok = False
        assert fast_ok == ref.is_valid(variant), json.dumps(variant)[:300]
        checked += 1
    assert checked > 500


def test_atomic_write_leaves_nothing_on_invalid_data(tmp_path, raw):
    bad = copy.deepcopy(raw)
    bad["tokens"]["output_tokens"] = -3
    target = tmp_path / "cycle_1.json"
    with pytest.raises(
        ResultValidationError, match=r"cycle_1.json: key 'tokens.output_tokens' = -3 is out of range; allowed: >= 0"
    ):
        write_json_atomic(target, bad, "raw_result")
    assert os.listdir(tmp_path) == []
    write_json_atomic(target, raw, "raw_result")
    assert json.loads(target.read_text())["experiment_id"] == "r"
    summary = tmp_path / "summary.json"  # a derived file is replaced atomically
    summary.write_text("previous content")
    with pytest.raises(ResultValidationError):
        write_json_atomic(summary, bad, "aggregated_result")
    assert summary.read_text() == "previous content" and sorted(os.listdir(tmp_path)) == [
        "cycle_1.json",
        "summary.json",
    ]


def test_a_finished_raw_result_is_never_replaced(tmp_path, raw):
    """The writer refuses when the target exists, even when the target is write-protected (a rename would ignore
    that) and when the new result is valid; the finished file keeps its bytes. Its sidecars (timeline, token times)
    are refused too, while a sidecar left without its raw result (an attempt that failed after writing it) is
    replaced."""
    target = tmp_path / "raw" / "e" / "cycle_1.json"
    write_json_atomic(target, raw, "raw_result")
    target.chmod(0o444)
    before = target.read_bytes()
    other = copy.deepcopy(raw)
    other["experiment_id"] = "someone-else"
    with pytest.raises(
        ResultExistsError, match=r"cycle_1.json already exists: a finished measurement is never replaced"
    ):
        write_json_atomic(target, other, "raw_result")
    assert target.read_bytes() == before and sorted(os.listdir(target.parent)) == ["cycle_1.json"]
    for suffix in ("timeline", "tokens"):
        with pytest.raises(ResultExistsError):
            write_json_atomic(target.with_name(f"cycle_1.{suffix}.json"), {"t_s": []})
        orphan = target.with_name(f"cycle_2.{suffix}.json")
        orphan.write_text("left over")
        write_json_atomic(orphan, {"t_s": [1]}, compact=suffix == "tokens")
        assert json.loads(orphan.read_text()) == {"t_s": [1]}
    assert sorted(os.listdir(target.parent)) == ["cycle_1.json", "cycle_2.timeline.json", "cycle_2.tokens.json"]
    assert target.with_name("cycle_2.tokens.json").read_text() == '{"t_s":[1]}\n'  # compact: no spaces, no indent


def test_two_writers_race_for_one_raw_result(tmp_path, raw):
    """Writers started together: exactly one result lands, every other writer is refused."""
    import threading

    target = tmp_path / "cycle_1.json"
    outcomes = []

    def write(i):
        doc = copy.deepcopy(raw)
        doc["campaign_name"] = f"writer-{i}"
        try:
            write_json_atomic(target, doc, "raw_result")
            outcomes.append(("ok", i))
        except ResultExistsError:
            outcomes.append(("refused", i))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for kind, i in outcomes if kind == "ok"]
    assert len(winners) == 1 and len(outcomes) == 8
    assert json.loads(target.read_text())["campaign_name"] == f"writer-{winners[0]}"
    assert os.listdir(tmp_path) == ["cycle_1.json"]  # no temp file left


def test_the_typed_records_read_a_raw_result_and_write_its_sections_exactly(raw, tmp_path):
    """The records are the sections as written: each one's to_dict is the file's section, key for key and in
    order, so writing through them changes nothing on disk; a result of an earlier version, without the keys added
    since, reads with None there; a record cannot be changed."""
    import dataclasses

    from llenergymeasure.record.raw import RawResult
    from llenergymeasure.results import read_result

    path = tmp_path / "raw" / "r" / "cycle_1.json"
    write_json_atomic(path, raw, "raw_result")
    doc = read_result(path, "raw_result")
    rec = RawResult.from_dict(doc)
    assert (rec.experiment_id, rec.cycle, rec.backend) == ("r", 1, "pytorch")
    for section, key in (
        (rec.timestamps, ("timestamps",)),
        (rec.tokens, ("tokens",)),
        (rec.throughput, ("throughput",)),
        (rec.efficiency, ("efficiency",)),
        (rec.energy_total, ("energy", "total")),
        (rec.provenance, ("provenance",)),
    ):
        expected = doc
        for k in key:
            expected = expected[k]
        assert list(section.to_dict().items()) == list(expected.items()), key
    assert [f.to_dict() for f in rec.flags] == doc["flags"] and rec.flag_codes == [f["code"] for f in doc["flags"]]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.tokens.output_tokens = 0
    with pytest.raises(TypeError):
        rec.document["cycle"] = 2
    older = copy.deepcopy(doc)
    for gone in ("mean_batch_size", "scheduling", "counting"):
        del older["tokens"][gone]
    del older["throughput"]["denominator"]
    old = RawResult.from_dict(older)
    assert old.tokens.mean_batch_size is None and old.tokens.counting is None and old.throughput.denominator is None
    assert old.tokens.output_tokens == rec.tokens.output_tokens


def test_the_token_times_sidecar_has_its_place_in_the_layout(tmp_path):
    """The token times sidecar lies beside its raw result, is named as one, and is never read as a raw result."""
    from llenergymeasure.record.layout import Layout, Located, locate, token_times_of

    layout = Layout(tmp_path)
    raw_path, side = layout.raw("e-1", 3), layout.token_times("e-1", 3)
    assert side == f"{tmp_path}/raw/e-1/cycle_3.tokens.json" == token_times_of(raw_path)
    assert locate(side) == Located("token_times", "e-1", 3)
    assert locate(layout.sidecar("e-1", 3)).kind == "sidecar"
    for path in (raw_path, side, layout.sidecar("e-1", 3)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    assert [str(p) for p in layout.raw_files()] == [raw_path]
