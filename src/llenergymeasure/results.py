"""Reading and writing result files: atomic writes, schema validation on write and on read."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from .config import load_schema

log = logging.getLogger(__name__)

RAW_SCHEMA = "raw_result"
AGGREGATED_SCHEMA = "aggregated_result"
SUMMARY_SCHEMA = "summary_row"
SCHEMA_VERSION = "1.0.0"


class ResultValidationError(ValueError):
    pass


def validate_result(data: dict, schema_name: str, where: str = "") -> bool:
    """Validate against a result schema. Returns False (and logs) only when jsonschema is not installed,
    which is the case inside stock engine images; the host validates again on read."""
    try:
        import jsonschema
    except ImportError:
        log.warning("jsonschema not installed: %s not validated on write (it is validated on read)", where or schema_name)
        return False
    fast = _fast_validator(schema_name)
    if fast is not None:
        try:
            fast(data)
            return True
        except Exception:  # explained below by jsonschema, whose messages are better
            pass
    validator = _validator(schema_name)
    if validator.is_valid(data):
        return True
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ResultValidationError(f"{where or schema_name}: {path}: {error.message}")
    return True


@functools.lru_cache(maxsize=None)
def _fast_validator(schema_name: str):
    """A compiled validator (fastjsonschema, ~10x faster) where installed, else None.

    Our schemas use only keywords that mean the same in draft 7 ($defs are reached by JSON pointer), so they are
    compiled as draft 7; the relative ``$id`` is dropped because the compiler would try to fetch it."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    schema = {k: v for k, v in load_schema(schema_name).items() if k not in ("$id", "$schema")}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return fastjsonschema.compile(schema)


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str):
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(schema_name))


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> None:
    """Write to a temp file in the same folder and rename it over ``path``: readers see the old file or the new
    one, never a part, and a crash leaves no partial file. ``durable`` also fsyncs before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, data: dict, schema_name: str | None = None, durable: bool = True) -> None:
    """Validate, then write atomically (:func:`write_text_atomic`). ``durable`` (measurements) also fsyncs and
    indents for people; derived files skip both (they can be recomputed, and compact JSON is several times faster
    to write)."""
    if schema_name:
        validate_result(data, schema_name, str(path))
    write_text_atomic(path, json.dumps(data, indent=1 if durable else None, allow_nan=False) + "\n", durable)


RAW_NAME = re.compile(r"^cycle_[1-9][0-9]*\.json$")


def raw_result_files(results_root: str | Path) -> list[Path]:
    """The raw results under ``<results_root>/raw/`` (``cycle_<n>.json``; timeline sidecars excluded), sorted."""
    return sorted(p for p in Path(results_root).glob("raw/*/cycle_*.json") if RAW_NAME.match(p.name))


def read_result(path: str | Path, schema_name: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    validate_result(data, schema_name, str(path))
    return data
