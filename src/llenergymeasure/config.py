"""Schema access, validation with one-line messages, defaults, and small dict helpers.

The JSON schemas in ``llenergymeasure/schemas`` (also visible as ``schemas/`` at the repository root) are the
single source of truth for keys, allowed values and defaults. ``jsonschema`` is imported only when validating,
so the measurement step never needs it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, closest, did_you_mean

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

#: Decoder presets; explicit decoder fields override the preset's values.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "deterministic": {"temperature": 0.0, "do_sample": False},
    "standard": {"temperature": 1.0, "do_sample": True, "top_p": 0.95},
    "creative": {"temperature": 0.8, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1},
    "factual": {"temperature": 0.3, "do_sample": True},
}

#: how the schema's patterns end: Python's ``$`` alone also matches before a final newline
END_GUARD = "(?!\\n)$"


@functools.cache
def load_schema(name: str) -> dict:
    """Return the parsed schema ``schemas/<name>.schema.json``."""
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as fh:
        return json.load(fh)


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        target = root
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest}
    return schema


def fill_defaults(data: Any, schema: dict, root: dict) -> Any:
    """Return a copy of ``data`` with every missing property that has a schema default filled in, recursively."""
    schema = _resolve(schema, root)
    if not isinstance(data, dict) or "properties" not in schema:
        return copy.deepcopy(data)
    out = {}
    for key, sub in schema["properties"].items():
        sub_r = _resolve(sub, root)
        if key in data:
            out[key] = fill_defaults(data[key], sub_r, root)
        elif "default" in sub_r:
            out[key] = fill_defaults(copy.deepcopy(sub_r["default"]), sub_r, root)
    for key, value in data.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
    return out


def prune_defaults(data: Any, schema: dict, root: dict) -> Any:
    """The inverse of :func:`fill_defaults`: drop every property equal to its schema default (recursively; sections
    left empty are dropped too). ``fill_defaults(prune_defaults(x))`` gives ``x`` back for a filled ``x``."""
    schema = _resolve(schema, root)
    if not isinstance(data, dict) or "properties" not in schema:
        return copy.deepcopy(data)
    out = {}
    for key, value in data.items():
        sub = schema["properties"].get(key)
        if sub is None:
            out[key] = copy.deepcopy(value)
            continue
        sub = _resolve(sub, root)
        pruned = prune_defaults(value, sub, root)
        if isinstance(pruned, dict) and not pruned and "properties" in sub:
            continue
        if "default" in sub and pruned == sub["default"]:
            continue
        out[key] = pruned
    return out


def property_schema(dotted: str, schema: dict, root: dict) -> dict | None:
    """The subschema for a dotted key (``pytorch.batch_size``) inside an object schema, or None if unknown."""
    current = _resolve(schema, root)
    for part in dotted.split("."):
        props = current.get("properties")
        if not props or part not in props:
            return None
        current = _resolve(props[part], root)
    return current


def known_dotted_keys(schema: dict, root: dict, prefix: str = "") -> list[str]:
    """Every dotted key reachable through ``properties`` (for 'did you mean' hints)."""
    schema = _resolve(schema, root)
    keys = []
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        keys.extend(known_dotted_keys(sub, root, dotted + "."))
    return keys


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"key '{dotted}': '{part}' is not a section")
    data[parts[-1]] = value


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive merge; values of ``override`` win; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def short_repr(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join_path(prefix: str, path: Iterable[Any]) -> str:
    parts = [prefix] if prefix else []
    for p in path:
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
    return ".".join(parts).replace(".[", "[")


def key_hint(key: str, here: Iterable[str], everywhere: Iterable[str] = (), spell: Callable[[str], str] = str) -> str:
    """A "did you mean" for an unknown (dotted) key: the same name where it belongs (``cache_implementation`` written
    at the top level is ``pytorch.cache_implementation``), else the closest key allowed at this level (``here``,
    named as there). ``spell`` writes a suggested key as the user would write it where the unknown one is. Keys of
    the reference tool are answered before this, from :mod:`llenergymeasure.legacy`."""
    key = str(key)
    section, _, leaf = key.rpartition(".")
    elsewhere = [k for k in everywhere if k.rsplit(".", 1)[-1] == leaf and k != key]
    if elsewhere:
        return " (did you mean " + " or ".join(f"'{spell(k)}'" for k in elsewhere[:3]) + "?)"
    here = [k for k in here if not key.startswith(f"{k}.")]  # never the section the key is in
    # a key of a section: the closest key of that section (their shared prefix would make any of them look close)
    siblings = {k.removeprefix(f"{section}."): k for k in here if section and k.startswith(f"{section}.")}
    if siblings:
        match = siblings.get(closest(leaf, siblings) or "")
    else:
        match = closest(key, here) or (closest(leaf, here) if leaf != key else None)
    return f" (did you mean '{spell(match)}'?)" if match is not None else ""


def error_lines(err: Any, prefix: str = "", everywhere: Iterable[str] = ()) -> list[str]:
    """The lines of one ``jsonschema.ValidationError``: one per unknown key of an object, else one."""
    # oneOf/anyOf failures: report the branch that got furthest, it is the one the user meant.
    while err.validator in ("oneOf", "anyOf") and err.context:
        err = max(err.context, key=lambda e: (len(e.absolute_path), -len(e.schema_path)))
    where = _join_path(prefix, err.absolute_path)
    value = err.instance
    kind = err.validator
    schema = err.schema
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in value if k not in schema.get("properties", {})]
        inner = _join_path("", err.absolute_path)
        lines = []
        for key in extra or ["?"]:
            full = f"{where}.{key}" if where else key
            dotted = f"{inner}.{key}" if inner else key
            lines.append(
                f"unknown key '{full}' (value {short_repr(value.get(key))}); allowed keys here: "
                f"{', '.join(allowed)}{key_hint(dotted, allowed, everywhere)}"
            )
        return lines
    if kind == "required":
        missing = [k for k in err.validator_value if k not in value]
        return [f"missing required key '{f'{where}.{k}' if where else k}'" for k in missing]
    label = f"key '{where}'" if where else "the file"
    if kind == "enum":
        allowed = list(err.validator_value)
        shown = ", ".join(a if isinstance(a, str) else json.dumps(a) for a in allowed)  # false/null as written in YAML
        return [
            f"{label} = {short_repr(value)} is not allowed; allowed: {shown}{did_you_mean(value, [a for a in allowed if a])}"
        ]
    if kind == "type":
        expected = err.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [f"{label} = {short_repr(value)} has the wrong type; allowed: {expected}"]
    bounds = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
        "minItems": "at least this many items:",
        "minLength": "at least this many characters:",
    }
    if kind in bounds:
        return [f"{label} = {short_repr(value)} is out of range; allowed: {bounds[kind]} {err.validator_value}"]
    if kind == "pattern":
        # shown without the guard that keeps Python's ``$`` from matching before a final newline
        pattern = str(err.validator_value).replace(END_GUARD, "$")
        desc = schema.get("description", f"text matching {pattern}")
        return [f"{label} = {short_repr(value)} is not allowed; allowed: {desc}"]
    if kind == "uniqueItems":
        return [f"{label} = {short_repr(value)} is not allowed; allowed: a list without repeated items"]
    if kind == "propertyNames":
        return [f"{label} has a key that is not allowed: {err.message}"]
    return [f"{label} = {short_repr(value)} is not allowed: {err.message}"]


def document_order(data: Any, path: Iterable[Any]) -> tuple:
    """Where a path lies in the document: the position of each key in its mapping (problems are listed in the
    order the file gives its keys)."""
    order = []
    for part in path:
        if isinstance(data, dict):
            keys = list(data)
            order.append(keys.index(part) if part in keys else len(keys))
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int):
            order.append(part)
            data = data[part] if part < len(data) else None
        else:
            order.append(0)
            data = None
    return tuple(order)


def schema_problems(data: Any, schema_name: str, prefix: str = "", ref: str | None = None) -> list[str]:
    """Every problem of ``data`` against a schema (or its ``$defs/<ref>``), one line each, in document order.

    A compiled validator answers first (a campaign validates every expanded experiment: 10,000 of them in a big
    grid); jsonschema explains what is wrong when it says no."""
    fast = compiled_validator(schema_name, ref)
    if fast is not None:
        try:
            fast(data)
            return []
        except Exception:  # noqa: BLE001 - any refusal is explained by jsonschema below
            pass
    root = load_schema(schema_name)
    everywhere = known_dotted_keys(root if ref is None else root["$defs"][ref], root)
    validator = explaining_validator(schema_name, ref)

    def order(err: Any) -> tuple:
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):  # where the first unknown key is
            path += [k for k in err.instance if k not in err.schema.get("properties", {})][:1]
        return document_order(data, path)

    errors = sorted(validator.iter_errors(data), key=order)
    lines: list[str] = []
    for err in errors:
        for line in error_lines(err, prefix, everywhere):
            if line not in lines:
                lines.append(line)
    return lines


# The validators of every schema (config and results), compiled once per process. A compiled validator says yes
# or no quickly (a campaign validates every expanded experiment: 10,000 of them in a big grid, and every result
# file is validated when written and when read); jsonschema's says what is wrong, in the lines of error_lines.


@functools.cache
def compiled_validator(schema_name: str, ref: str | None = None):
    """fastjsonschema's compiled validator of a schema (or its ``$defs/<ref>``) where installed, else None. The
    schemas use only keywords that mean the same in draft 7 ($defs are reached by JSON pointer), so they compile as
    draft 7 (without the relative $id, which the compiler would try to fetch)."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    root = {k: v for k, v in load_schema(schema_name).items() if k not in ("$id", "$schema")}
    schema = root if ref is None else {"$ref": f"#/$defs/{ref}", "$defs": root.get("$defs", {})}
    # use_default=False: a validator only answers; by default fastjsonschema writes schema defaults into the data it
    # checks, which would make defaults look like values the user gave (and override a decoder preset).
    return fastjsonschema.compile({**schema, "$schema": "http://json-schema.org/draft-07/schema#"}, use_default=False)


@functools.cache
def explaining_validator(schema_name: str, ref: str | None = None):
    """jsonschema's validator of a schema (or its ``$defs/<ref>``): the reference, and what explains a refusal."""
    import jsonschema

    root = load_schema(schema_name)
    schema = root if ref is None else {"$ref": f"#/$defs/{ref}", "$defs": root.get("$defs", {})}
    return jsonschema.Draft202012Validator(schema)


def value_problems(
    value: Any,
    dotted: str,
    schema_name: str,
    ref: str,
    prefix: str,
    spell: Callable[[str], str] = str,
) -> list[str]:
    """Every problem of one value against the subschema of a dotted key inside ``$defs/<ref>``; an unknown key's
    suggestion is written by ``spell`` (a key of ``$defs/<ref>`` as the user would write it where the value is)."""
    import jsonschema

    root = load_schema(schema_name)
    sub = property_schema(dotted, root["$defs"][ref], root)
    name = f"{prefix}.{dotted}"
    if sub is None:
        keys = known_dotted_keys(root["$defs"][ref], root)
        return [f"unknown key '{name}'; allowed keys: see config/README.md{key_hint(dotted, keys, keys, spell)}"]
    validator = jsonschema.Draft202012Validator({**sub, "$defs": root.get("$defs", {})})
    lines: list[str] = []
    for err in validator.iter_errors(value):
        lines.extend(line for line in error_lines(err, name) if line not in lines)
    return lines


_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _allowed_types(schema: dict, root: dict) -> set[str]:
    """The JSON types a (sub)schema accepts, through ``oneOf``/``anyOf`` branches and enums."""
    schema = _resolve(schema, root)
    kinds: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        kinds.add(kind)
    elif isinstance(kind, list):
        kinds.update(kind)
    for value in schema.get("enum", []):
        kinds.add(_JSON_TYPES.get(type(value), "string"))
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        kinds |= _allowed_types(branch, root)
    return kinds


def _coerce_text(text: str, schema: dict, root: dict) -> Any:
    """A command-line string read as the type its key takes: '5' for an integer, 'false' for a boolean, 'null'."""
    import yaml

    resolved = _resolve(schema, root)
    kinds = _allowed_types(resolved, root)
    strings = [v for v in resolved.get("enum", []) if isinstance(v, str)]
    if "null" in kinds and text in ("null", "Null", "NULL", "~"):
        return None
    if not kinds or ("string" in kinds and (not resolved.get("enum") or text in strings or "type" in resolved)):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    kind = _JSON_TYPES.get(type(value))
    if kind in kinds or (kind == "integer" and "number" in kinds):
        return value
    return text


def _coerce(value: Any, schema: dict | None, root: dict, former: Mapping[str, str]) -> Any:
    if schema is None:
        return value
    schema = _resolve(schema, root)
    if isinstance(value, str):
        return _coerce_text(value, schema, root)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"], root, former) for v in value]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else None
        return {
            k: _coerce(v, props.get(k, props.get(former.get(k, ""), extra)), root, former) for k, v in value.items()
        }
    return value


def coerce_overrides(overrides: dict, former: Mapping[str, str]) -> dict:
    """Campaign values given on Snakemake's command line (``--config 'execution={cycles: 5}'``), read as the types
    the schema gives their keys. Snakemake reads a nested value with YAML's base loader, which keeps every scalar a
    string ('5', 'false'); a string stays a string where the key takes one. Grid axes are read against the
    experiment key each names. ``former`` maps a key's former spelling to the key (leaf names: ``duration_sec`` ->
    ``duration_s``): a value given under the former name is read as the type of the key."""
    root = load_schema("campaign")
    out = _coerce(overrides, root, root, former)
    grid = out.get("grid")
    if isinstance(grid, dict):
        experiment = root["$defs"]["experiment"]

        def axis(key: str, values: Any) -> Any:
            section, _, leaf = key.rpartition(".")
            current = f"{section}.{former[leaf]}" if leaf in former and section else key
            sub = property_schema(current, experiment, root)
            if sub is None:
                return values
            if isinstance(values, list) and "array" not in _allowed_types(sub, root):
                return [_coerce(v, sub, root, former) for v in values]
            return _coerce(values, sub, root, former)

        if isinstance(grid.get("shared"), dict):
            grid["shared"] = {k: axis(k, v) for k, v in grid["shared"].items()}
        if isinstance(grid.get("backend_overrides"), dict):
            grid["backend_overrides"] = {
                b: {k: axis(f"{b}.{k}", v) for k, v in axes.items()} if isinstance(axes, dict) else axes
                for b, axes in grid["backend_overrides"].items()
            }
    return out


def flow(value: Any) -> str:
    """A value as YAML flow text, as one would write it in a file (``{batch_size: 8}``, ``[0, 1]``, ``true``)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # the same list twice is written twice, never as &id001 / *id001
            return True

    text = yaml.dump(
        value, Dumper=Dumper, default_flow_style=True, sort_keys=False, width=10_000, allow_unicode=True
    ).strip()
    return text.removesuffix("...").strip()


def dotted_items(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """The leaves of nested mappings as (dotted key, value), in order; an empty mapping is a leaf."""
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(dotted_items(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def canonical_json(data: Any) -> str:
    """Deterministic JSON text of plain data: the input of every config hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
