"""Reading and writing result files: atomic writes, schema validation on write and on read."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path

from .config import schema_problems
from .record.layout import SIDECAR_NAMES, Layout

log = logging.getLogger(__name__)

RAW_SCHEMA = "raw_result"
AGGREGATED_SCHEMA = "aggregated_result"
SUMMARY_SCHEMA = "summary_row"
SCHEMA_VERSION = "1.0.0"


class ResultValidationError(ValueError):
    pass


def validate_result(data: dict, schema_name: str, where: str = "") -> bool:
    """Validate against a result schema; :class:`ResultValidationError` names the file and the first problem, in
    the one-line format of configuration errors. Returns False (and logs) only when jsonschema is not installed,
    which is the case inside stock engine images; the host validates again on read."""
    try:
        import jsonschema  # noqa: F401 - what explains a refusal
    except ImportError:
        log.warning(
            "jsonschema not installed: %s not validated on write (it is validated on read)", where or schema_name
        )
        return False
    problems = schema_problems(data, schema_name)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ResultValidationError(f"{where or schema_name}: {problems[0]}{more}")
    return True


class ResultExistsError(FileExistsError):
    """A finished measurement is where a new one was about to be written: it is kept, the new one is not written."""


def write_text_atomic(path: str | Path, text: str, durable: bool = True, replace: bool = True) -> None:
    """Write to a temp file in the same folder and rename it over ``path``: readers see the old file or the new
    one, never a part, and a crash leaves no partial file. ``durable`` also fsyncs before the rename.

    ``replace=False`` never replaces an existing ``path`` (:class:`ResultExistsError`): the temp file is hard-linked
    into place, which fails if the target exists, where a rename would replace it whatever its permissions."""
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
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _exists(path: str | Path) -> ResultExistsError:
    return ResultExistsError(
        f"{path} already exists: a finished measurement is never replaced (delete it to measure that cycle again)"
    )


def refuse_replacing(path: str | Path) -> None:
    """:class:`ResultExistsError` when a finished measurement lies at ``path``: it is never replaced."""
    if os.path.lexists(path):
        raise _exists(path)


def _link_new(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # a filesystem without hard links: check, then rename (a narrow race instead of none)
        if os.path.lexists(path):
            raise ResultExistsError(f"{path} already exists: a finished measurement is never replaced") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _finished_measurement(path: Path, schema_name: str | None) -> Path | None:
    """The finished raw result that writing ``path`` would overwrite or contradict: the raw result itself, or, for
    a sidecar (timeline, token times), the raw result it belongs to. (A sidecar without its raw result is a
    left-over of an attempt that failed after writing it, and is replaced.)"""
    if schema_name == RAW_SCHEMA:
        return path if os.path.lexists(path) else None
    for name in SIDECAR_NAMES:
        match = name.match(path.name)
        if match:
            raw = path.parent / f"cycle_{match.group(1)}.json"
            return raw if os.path.lexists(raw) else None
    return None


def write_json_atomic(
    path: str | Path, data: dict, schema_name: str | None = None, durable: bool = True, compact: bool = False
) -> None:
    """Validate, then write atomically (:func:`write_text_atomic`). ``durable`` (measurements) also fsyncs and
    indents for people; derived files skip both (they can be recomputed, and compact JSON is several times faster
    to write). ``compact`` writes without indentation or spaces even when durable (long number series: the token
    times sidecar). A raw result is never written over an existing one, nor a sidecar beside a finished raw result
    (:class:`ResultExistsError`)."""
    path = Path(path)
    finished = _finished_measurement(path, schema_name)
    if finished is not None:
        raise _exists(finished)
    if schema_name:
        validate_result(data, schema_name, str(path))
    if compact:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"
    else:
        text = json.dumps(data, indent=1 if durable else None, allow_nan=False) + "\n"
    write_text_atomic(path, text, durable, replace=schema_name != RAW_SCHEMA)


def sha256_of(path: str | Path) -> str | None:
    """The sha256 of a file's bytes (hex), or None when it cannot be read."""
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def read_result(path: str | Path, schema_name: str) -> dict:
    """A result file, validated against its schema; :class:`ResultValidationError` naming the file (and, for a raw
    result, what to do) when it cannot be read, is not complete JSON, or does not match the schema."""
    return read_result_and_digest(path, schema_name)[0]


def read_result_and_digest(path: str | Path, schema_name: str) -> tuple[dict, str]:
    """:func:`read_result`, and the sha256 (hex) of the very bytes it parsed: what a decision or an aggregation
    records of each raw result it used."""
    import hashlib

    fix = "; delete it and rerun the campaign to measure that cycle again" if schema_name == RAW_SCHEMA else ""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ResultValidationError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ResultValidationError(f"{path} is not a result file (not UTF-8 text){fix}") from None
    except ValueError as exc:
        what = (
            "is empty"
            if not raw.strip()
            else f"is not complete JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})"
        )
        raise ResultValidationError(f"{path} {what}: truncated or damaged (a disk or copy accident?){fix}") from None
    if not isinstance(data, dict):
        raise ResultValidationError(f"{path} holds a JSON {type(data).__name__}, not a result{fix}")
    try:
        validate_result(data, schema_name, str(path))
    except ResultValidationError as exc:
        raise ResultValidationError(f"{exc} (the file does not match the {schema_name} schema){fix}") from None
    return data, hashlib.sha256(raw).hexdigest()


# ------------------------------------------------------------------------------------------------ results folder


class ResultsFolderBusy(RuntimeError):
    """Another campaign run holds the results folder, or its lock file is not one this tool can safely use."""


_HELD: dict[str, int] = {}


def _open_lock(path: Path) -> int:
    """The lock file, opened for reading and writing without following a link: created here if absent; an existing
    one must be a regular file with one name, holding nothing or an owner record of this tool (so that a link, or
    a file placed there, is never written through). ResultsFolderBusy, naming the file, otherwise."""
    if path.parent.is_symlink():
        raise ResultsFolderBusy(
            f"{path.parent} is a symbolic link: refused (the results folder's state is never written through a link); "
            "remove it and rerun"
        )
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)  # ours: created by this call
    except FileExistsError:
        pass
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        what = "a symbolic link" if os.path.islink(path) else f"not usable ({exc.strerror or exc})"
        raise ResultsFolderBusy(
            f"{path} is {what}: refused (the lock is never written through a link); remove it and rerun"
        ) from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_nlink != 1:
        problem = f"a file with {st.st_nlink} names (a hard link to another file)"
    else:
        head = os.pread(fd, 4097, 0)
        try:
            owner = json.loads(head) if head.strip() else {}
        except ValueError:  # a record being written by the run that holds it reads as a part of one
            owner = {} if head.startswith(b'{"host"') else None
        if len(head) > 4096 or not isinstance(owner, dict) or not set(owner) <= {"host", "pid", "workdir", "since"}:
            problem = "not a lock file of this tool (it holds other data)"
    if problem:
        os.close(fd)
        raise ResultsFolderBusy(f"{path} is {problem}: refused, and left as it is; remove it and rerun")
    return fd


def hold_results_folder(root: str | Path) -> None:
    """Hold ``<root>/.state/campaign.lock`` for the rest of this process, or raise :class:`ResultsFolderBusy`.

    Snakemake's own lock lives in the working directory's ``.snakemake/``, so two checkouts (or two working
    directories) writing one results folder never see each other's lock; this one lives in the results folder.
    It is a ``flock`` (advisory, released by the kernel when the process ends, however it ends), so a crash leaves
    nothing to unlock. The holder's host, pid, working directory and start time are written into the file for the
    message the second run gets. The file is opened without following links and written only when it is this
    tool's own lock file (:func:`_open_lock`): a link or another file in its place is refused, never overwritten."""
    import datetime
    import fcntl
    import socket

    key = str(Path(root).resolve())
    if key in _HELD:
        return
    path = Path(Layout(root).lock)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            owner = {}
        os.close(fd)
        who = ", ".join(f"{k} {owner[k]}" for k in ("host", "pid", "workdir", "since") if owner.get(k)) or "unknown"
        raise ResultsFolderBusy(
            f"results folder {root} is in use by another campaign run ({who}); wait for it to finish, or give this "
            "run another results_dir or campaign_name"
        ) from None
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "workdir": os.getcwd(),
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    _HELD[key] = fd
