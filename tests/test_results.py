"""Result files: the fast validator and jsonschema agree; atomic writes leave no partial file."""

from __future__ import annotations

import copy
import json
import os

import pytest

from conftest import tiny_experiment
from llenergymeasure.measure import run_experiment
from llenergymeasure.results import ResultValidationError, _fast_validator, _validator, write_json_atomic


@pytest.fixture(scope="module")
def raw(tiny_model):
    return run_experiment(tiny_experiment(warmup={"enabled": False}, num_input_prompts=2), "r", 1, tiny_model, None, {})


def mutations(doc):
    """Walk the document and yield variants with one value replaced by something of another type or range."""
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, path + [k])
            yield path, "__drop__"
        elif isinstance(node, list):
            for i, v in enumerate(node[:2]):
                yield from walk(v, path + [i])
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
    fast, ref = _fast_validator("raw_result"), _validator("raw_result")
    if fast is None:
        pytest.skip("fastjsonschema not installed")
    checked = 0
    for variant in mutations(raw):
        try:
            fast(variant)
            fast_ok = True
        except Exception:
            fast_ok = False
        assert fast_ok == ref.is_valid(variant), json.dumps(variant)[:300]
        checked += 1
    assert checked > 500


def test_atomic_write_leaves_nothing_on_invalid_data(tmp_path, raw):
    bad = copy.deepcopy(raw)
    bad["tokens"]["output_tokens"] = -3
    target = tmp_path / "cycle_1.json"
    target.write_text("previous content")
    with pytest.raises(ResultValidationError, match="tokens/output_tokens"):
        write_json_atomic(target, bad, "raw_result")
    assert target.read_text() == "previous content" and os.listdir(tmp_path) == ["cycle_1.json"]
    write_json_atomic(target, raw, "raw_result")
    assert json.loads(target.read_text())["experiment_id"] == "r"
