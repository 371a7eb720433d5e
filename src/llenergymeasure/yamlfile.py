"""Reading campaign and experiment files: YAML as data, with limits, and one-line errors.

A campaign file is data. Before anything is built from it, the text must be UTF-8 (not binary), small, not nested
absurdly deep, and its anchors and aliases must not multiply into more values than any campaign needs (a "billion
laughs" file is a few lines that expand to 10^9 values: PyYAML shares the aliased objects, so loading is quick, but
every later deep copy, merge or validation walks the expansion). Duplicate keys are refused (YAML keeps the last
one silently), and so is Snakemake's YTE switch ``__use_yte__``, which asks for embedded Python to be evaluated.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: a campaign with thousands of explicit values is a few kB
MAX_DEPTH = 64  # nesting levels; the schema needs 5
MAX_VALUES = 100_000  # scalars and collections after alias expansion
YTE_KEY = "__use_yte__"


@functools.cache
def _loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (keys merged in with ``<<`` may be overridden)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: SafeLoader explains it below
                        continue
                    if first is not None:
                        raise ConfigError(
                            f"has key '{key}' twice in one mapping (lines {first} and {line}); allowed: each key once"
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _check_structure(text: str) -> None:
    """Depth and expanded size from the event stream (iterative: no recursion, no objects built)."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> values under it, aliases expanded
    stack: list[list] = []  # open collections: [values so far, anchor]
    total = 0

    def add(n: int, event) -> None:
        nonlocal total
        total += n
        if total > MAX_VALUES:
            raise ConfigError(
                f"has more than {MAX_VALUES:,} values once its aliases are expanded (line {event.start_mark.line + 1}); "
                "allowed: aliases that repeat a section, not ones that multiply it"
            )

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([1, event.anchor])
            if len(stack) > MAX_DEPTH:
                raise ConfigError(
                    f"is nested more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1}); allowed: {MAX_DEPTH}"
                )
            add(1, event)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = stack.pop()
            if anchor:
                sizes[anchor] = size
            if stack:
                stack[-1][0] += size
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            if isinstance(event, yaml.AliasEvent):
                size = sizes.get(event.anchor, 1)
                add(size, event)
            else:
                size = 1
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1, event)
            if stack:
                stack[-1][0] += size


def loads(text: str) -> Any:
    """Parse YAML text as data with the checks above; otherwise a one-line ConfigError whose message completes
    "file 'x' ..." (it starts with a verb: "is not valid YAML ...", "has key ... twice", ...)."""
    import yaml

    try:
        _check_structure(text)
        data = yaml.load(text, Loader=_loader())  # _loader() is a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"is not valid YAML{at}: {problem}") from None
    except RecursionError:  # defence in depth: the depth check runs first
        raise ConfigError(f"is nested more than {MAX_DEPTH} levels deep") from None
    if isinstance(data, dict) and YTE_KEY in data:
        raise ConfigError(
            f"sets '{YTE_KEY}', which asks Snakemake to evaluate it as a YTE template (embedded Python code); "
            "campaign and experiment files are data and are never evaluated: remove the key"
        )
    return data


def decode(raw: bytes) -> str:
    """UTF-8 text of a file's bytes (a BOM is dropped); ConfigError for binary or other encodings."""
    if b"\x00" in raw[:8192]:
        raise ConfigError("is a binary file, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def read_bytes(path: str | Path, limit: int = MAX_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ConfigError naming the file otherwise. Only a regular
    file is read (a device such as /dev/zero, a FIFO or a socket, also behind a link, is refused without reading
    from it or waiting on it), and never more than ``limit`` bytes of it, whatever its size says."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{what} '{path}' is a folder, not a file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO without a writer: no wait
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = (
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
                )
                raise ConfigError(f"{what} '{path}' is {kind}, not a regular file")
            if st.st_size > limit:
                raise ConfigError(
                    f"{what} '{path}' is {st.st_size / 2**20:.1f} MiB; allowed: at most {limit / 2**20:g} MiB"
                )
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:  # grew while being read
            raise ConfigError(f"{what} '{path}' is larger than {limit / 2**20:g} MiB, the most allowed")
        return data
    except FileNotFoundError:
        raise ConfigError(f"{what} '{path}' does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from None


def read(path: str | Path) -> Any:
    """A YAML (or JSON) file as data, with every check of this module; errors name the file."""
    raw = read_bytes(path)
    try:
        return loads(decode(raw))
    except ConfigError as exc:
        raise ConfigError(f"file '{path}' {exc}") from None
