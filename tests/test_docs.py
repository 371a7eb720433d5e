"""config/README.md documents every key of the campaign schema, no other, with the schema's defaults."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from llenergymeasure.config import load_schema

NOT_COMPARED = object()  # a default described in words (which the row's meaning explains)


def schema_keys(node: dict, root: dict, prefix: str = "") -> dict:
    """Every leaf key under a schema node (dotted) with its default (``NOT_COMPARED`` when it has none)."""
    while "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "properties" not in node:
        return {prefix: node.get("default", NOT_COMPARED)}
    out = {}
    for key, sub in node["properties"].items():
        out.update(schema_keys(sub, root, f"{prefix}.{key}" if prefix else key))
    return out


def documented(section: str) -> dict:
    """The rows of a README table: dotted key -> its default as written (``a`` / ``b`` rows are split)."""
    text = (REPO / "config" / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip().strip("`") for n in cells[0].split(" / ")]
        first = names[0]
        parent = first.rsplit(".", 1)[0] + "." if "." in first else ""
        keys = [first] + [parent + n for n in names[1:]]
        defaults = [d.strip() for d in cells[1].split(" / ")]
        for i, key in enumerate(keys):
            rows[key] = defaults[i] if len(defaults) == len(keys) else cells[1]
    return rows


def covered(key: str, rows: dict) -> str | None:
    """The row documenting a schema key: its own, or one for a section above it (``vllm.lora.*``, ``grid``)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        for row in (head, f"{head}.*"):
            if row in rows:
                return row
    return None


def as_written(value) -> str:
    """A default as the README writes it (backticks and quotes aside): YAML's null, true, false; lists as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


#: rows whose default is said in words, as the README says it (their meaning tells where the value comes from)
IN_WORDS = {
    "grid": "–",
    "config_name": "file name / grid name",
    "dataset.split": "alias's, else `train`",
    "dataset.subset": "alias's, else null",
    "dataset.column": "auto",
    "vllm.speculative.*": "off",
    "vllm.lora.*": "off",
    "tensorrt.calibration.*": "`cnn_dailymail`, `train`, 512, 2048",
}


def tables():
    root = load_schema("campaign")
    campaign = schema_keys(root, root)
    experiment = schema_keys(root["$defs"]["experiment"], root)
    return [("Campaign keys", campaign, root.get("required", [])), ("Experiment fields", experiment, ["model_name"])]


@pytest.mark.parametrize("section, keys, required", tables(), ids=["campaign", "experiment"])
def test_every_schema_key_is_documented_with_its_default(section, keys, required):
    rows = documented(section)
    assert [k for k in keys if covered(k, rows) is None] == []  # every key of the schema has a row
    sections = {k.rsplit(".", n)[0] for k in keys for n in range(1, k.count(".") + 1)}
    assert [r for r in rows if r.removesuffix(".*") not in {*keys, *sections}] == []  # ... and no row another key
    wrong = []
    for row, written in rows.items():
        if row in IN_WORDS:
            assert written == IN_WORDS[row], row
        elif row in required:
            assert written == "required", row
        elif keys.get(row, NOT_COMPARED) is NOT_COMPARED or as_written(keys[row]) != written.replace("`", ""):
            wrong.append((row, written, keys.get(row, "no default")))
    assert wrong == []
