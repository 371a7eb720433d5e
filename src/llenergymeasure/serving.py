"""Serving load: when each request of a window reaches the engine, and what the window did under that load.

An experiment's ``load`` section says how requests arrive (``load.arrival``):

- ``offline`` (the default): every prompt is handed over at once and the engine runs flat out; nothing here applies
  and the raw result has no ``load`` section.
- ``poisson``, ``constant``, ``gamma``: an open loop at ``rate_per_s`` mean requests per second. The gaps between
  arrivals are exponential (Poisson), all ``1 / rate_per_s`` (constant), or gamma with shape ``gamma_shape`` and the
  same mean (a shape below 1 is burstier than Poisson, above 1 more regular). Request *i* is prompt *i*.
- ``closed``: ``concurrency`` requests in flight from the start; the next prompt is sent when one finishes.
- ``trace``: a JSON Lines file, one request per line: ``{"arrival_s": seconds, "prompt": index into the prompts or
  the text itself, "output_tokens": its output length (optional)}``. Arrivals are sorted and shifted so the first
  is at 0.

The schedule is made before the window from ``load.seed`` and the prompts alone (:func:`make_schedule`), so every
cycle and every backend gets the same one. The window opens at the first arrival and closes at the last
completion, idle gaps included: at a low rate the engine idles between requests, and that energy is part of what
a request costs at that load.

A backend submits through a :class:`Dispatcher`: between engine steps it asks which requests are due, and when
nothing is in flight it sleeps until the next arrival. A request is therefore submitted no later than the end of
the engine step during which it fell due; ``submitted - planned`` is its queueing delay in this process (the
engine's own queue comes on top and shows in TTFT). Latencies of an open-loop request are taken from its planned
arrival, as a client that sent it then would see them; a closed-loop request's from its submission.

:func:`window_section` derives the raw result's ``load`` section from the requests' times: offered and achieved
request rates, mean requests in flight, the idle share, queueing delays and, with ``load.slo``, goodput.

Standard library only: the campaign expansion validates ``load`` (:func:`problems`) and reads traces here.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass

from .errors import ConfigError
from .stats import distribution

ARRIVALS = ("offline", "poisson", "constant", "gamma", "closed", "trace")
#: arrivals at a stated mean rate
RATED = ("poisson", "constant", "gamma")
#: arrivals whose times are planned before the window (open loop)
OPEN_LOOP = (*RATED, "trace")
#: the most requests a trace may hold, and its size
TRACE_MAX_ROWS = 100_000
TRACE_MAX_BYTES = 16 << 20
#: achieved / offered request rate below which a window is flagged ``load_not_sustained``
SUSTAINED_RATIO = 0.95

#: the ``load`` section's fields and the arrivals each one applies to (``seed`` and ``slo`` are checked apart)
FIELDS = {
    "rate_per_s": RATED,
    "gamma_shape": ("gamma",),
    "concurrency": ("closed",),
    "trace": ("trace",),
}


@dataclass(frozen=True)
class Request:
    """One request of a schedule: ``prompt`` indexes the window's prompt list; ``offset_s`` is its planned arrival
    in seconds after the first (None in a closed loop: it is sent when a slot frees); ``output_tokens`` is the
    trace's output length for it (None: the experiment's ``max_output_tokens``/``min_output_tokens``)."""

    prompt: int
    offset_s: float | None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Schedule:
    arrival: str
    requests: tuple[Request, ...]
    concurrency: int | None = None  # closed loop only
    trace_sha256: str | None = None  # trace: the digest of the file the requests were read from

    @property
    def open_loop(self) -> bool:
        return self.arrival in OPEN_LOOP

    def output_lengths(self, request: Request, max_tokens: int, min_tokens: int) -> tuple[int, int]:
        """(max, min) new tokens of one request: the trace's length, forced, where it gives one."""
        if request.output_tokens is None:
            return max_tokens, min_tokens
        return request.output_tokens, request.output_tokens


# ---------------------------------------------------------------------------------------------------- rules
def problems(config: dict) -> list[str]:
    """Why an experiment's ``load`` section cannot run as given: a field the arrival does not use (it would change
    nothing), a missing one it needs, a trace that cannot be read. Engine-free; the backends add what their engine
    cannot do in their own rules (``problems`` of each backend module)."""
    load = config["load"]
    arrival = load["arrival"]
    found = []
    for key, arrivals in FIELDS.items():
        if load[key] is not None and arrival not in arrivals:
            found.append(
                f"load.{key} = {load[key]} applies to load.arrival {' | '.join(arrivals)}, but load.arrival = {arrival}"
            )
        if load[key] is None and arrival in arrivals:
            found.append(f"load.arrival = {arrival} needs load.{key}")
    if load["seed"] != 0 and arrival not in ("poisson", "gamma"):
        found.append(
            f"load.seed = {load['seed']} draws a random schedule, but load.arrival = {arrival} has no random part "
            "(poisson and gamma do)"
        )
    slo = load["slo"]
    if arrival == "offline" and any(v is not None for v in slo.values()):
        key = next(k for k, v in slo.items() if v is not None)
        found.append(
            f"load.slo.{key} = {slo[key]} judges requests under a serving load, but load.arrival = offline "
            "(every request submitted at once)"
        )
    if arrival == "trace" and load["trace"] is not None:
        try:
            rows = read_trace(load["trace"])
        except ConfigError as exc:
            found.append(str(exc))
        else:
            found.extend(_trace_problems(rows, config))
    if arrival != "offline" and config["energy"]["repeat_to_min_window"]:
        found.append(
            f"energy.repeat_to_min_window = true repeats the workload, but load.arrival = {arrival} plays one "
            "schedule per window (lengthen it with more prompts or a lower rate)"
        )
    return found


def _trace_problems(rows: list[dict], config: dict) -> list[str]:
    where = f"key 'load.trace' = '{config['load']['trace']}'"
    n = config["num_input_prompts"]
    cap = config["max_output_tokens"]
    for line, row in enumerate(rows, 1):
        prompt, out = row["prompt"], row.get("output_tokens")
        if isinstance(prompt, int) and prompt >= n:
            return [
                f"{where}: line {line} names prompt {prompt}; allowed: an index below num_input_prompts = {n}, "
                "or the prompt's text"
            ]
        if out is not None and out > cap:
            return [f"{where}: line {line} asks for {out} output tokens; allowed: at most max_output_tokens = {cap}"]
    return []


def read_trace(path: str) -> list[dict]:
    """The rows of a trace file, checked: each a JSON object with ``arrival_s`` (a number >= 0), ``prompt`` (an
    index >= 0 or a non-empty text) and optionally ``output_tokens`` (an integer >= 1), and nothing else."""
    return _read_trace(path)[0]


def _read_trace(path: str) -> tuple[list[dict], str]:
    """The checked rows of a trace file (see :func:`read_trace`) and the SHA-256 of the bytes they were read from."""
    from .yamlfile import read_bytes

    where = f"key 'load.trace' = '{path}'"
    data = read_bytes(path, TRACE_MAX_BYTES, what=f"{where}: file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text; allowed: a .jsonl file") from None
    rows = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: line {line} is not valid JSON ({exc.msg})") from None
        problem = _row_problem(row)
        if problem:
            raise ConfigError(f"{where}: line {line} {problem}")
        rows.append(row)
        if len(rows) > TRACE_MAX_ROWS:
            raise ConfigError(f"{where}: more than {TRACE_MAX_ROWS:,} requests; allowed: at most {TRACE_MAX_ROWS:,}")
    if not rows:
        raise ConfigError(f"{where}: holds no request; allowed: one JSON object per line")
    return rows, hashlib.sha256(data).hexdigest()


def _row_problem(row) -> str | None:
    allowed = '{"arrival_s": seconds >= 0, "prompt": index or text, "output_tokens": integer >= 1 (optional)}'
    if not isinstance(row, dict):
        return f"is not a JSON object; allowed: {allowed}"
    extra = sorted(set(row) - {"arrival_s", "prompt", "output_tokens"})
    if extra:
        return f"has key '{extra[0]}'; allowed: {allowed}"
    at = row.get("arrival_s")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        return f"has arrival_s = {at!r}; allowed: a number of seconds >= 0"
    prompt = row.get("prompt")
    if isinstance(prompt, bool) or not (
        (isinstance(prompt, int) and prompt >= 0) or (isinstance(prompt, str) and prompt.strip())
    ):
        return f"has prompt = {prompt!r}; allowed: an index >= 0 into the prompts, or a non-empty text"
    out = row.get("output_tokens")
    if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
        return f"has output_tokens = {out!r}; allowed: an integer >= 1"
    return None


# ---------------------------------------------------------------------------------------------------- schedule
def make_schedule(load: dict, prompts: list[str]) -> tuple[list[str], Schedule | None]:
    """The window's prompts and its schedule (None for ``offline``). For a trace the prompts become the trace's
    requests in arrival order (an index picks one of ``prompts``, a text is used as it is); otherwise request *i*
    is ``prompts[i]``."""
    arrival = load["arrival"]
    n = len(prompts)
    if arrival == "offline":
        return prompts, None
    if arrival == "closed":
        return prompts, Schedule("closed", tuple(Request(i, None) for i in range(n)), load["concurrency"])
    if arrival == "trace":
        rows, digest = _read_trace(load["trace"])
        rows = sorted(rows, key=lambda row: row["arrival_s"])  # stable: file order on ties
        first = rows[0]["arrival_s"]
        texts = [prompts[row["prompt"]] if isinstance(row["prompt"], int) else row["prompt"] for row in rows]
        requests = tuple(
            Request(i, float(row["arrival_s"] - first), row.get("output_tokens")) for i, row in enumerate(rows)
        )
        return texts, Schedule("trace", requests, trace_sha256=digest)
    return prompts, Schedule(arrival, tuple(Request(i, t) for i, t in enumerate(arrival_offsets(load, n))))


def arrival_offsets(load: dict, n: int) -> list[float]:
    """``n`` planned arrivals in seconds after the first (which is at 0) for a rated arrival. The gaps are drawn
    from ``random.Random(load.seed)``: the same seed gives the same schedule on every machine and Python 3."""
    rate, arrival = load["rate_per_s"], load["arrival"]
    rng = random.Random(load["seed"])
    if arrival == "constant":
        gap = lambda: 1.0 / rate  # noqa: E731
    elif arrival == "poisson":
        gap = lambda: rng.expovariate(rate)  # noqa: E731
    elif arrival == "gamma":
        shape = load["gamma_shape"]
        gap = lambda: rng.gammavariate(shape, 1.0 / (rate * shape))  # noqa: E731  mean 1/rate, CV 1/sqrt(shape)
    else:
        raise ValueError(f"load.arrival = {arrival} has no rate")
    offsets, t = [], 0.0
    for i in range(n):
        if i:
            t += gap()
        offsets.append(t)
    return offsets


class Dispatcher:
    """What a backend's step loop submits when. ``due(now, in_flight)`` returns the requests to submit now, each
    with its planned time in perf_counter seconds: open loop, those whose arrival has come; closed loop, as many as
    free slots allow (planned = the moment the loop found the slot free). ``wait(in_flight)`` sleeps until the next
    arrival when nothing is in flight (an open loop's idle gap). ``start`` is the first arrival."""

    def __init__(self, schedule: Schedule, start: float | None = None) -> None:
        self.schedule = schedule
        self.start = time.perf_counter() if start is None else start
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self.schedule.requests) - self._next

    def next_arrival(self) -> float | None:
        """perf_counter time of the next open-loop arrival (None: closed loop, or nothing left)."""
        if not self.remaining or not self.schedule.open_loop:
            return None
        return self.start + self.schedule.requests[self._next].offset_s

    def due(self, now: float, in_flight: int) -> list[tuple[Request, float]]:
        out = []
        requests = self.schedule.requests
        if self.schedule.open_loop:
            while self._next < len(requests) and self.start + requests[self._next].offset_s <= now:
                out.append((requests[self._next], self.start + requests[self._next].offset_s))
                self._next += 1
        else:
            free = self.schedule.concurrency - in_flight
            while free > 0 and self._next < len(requests):
                out.append((requests[self._next], now))
                self._next += 1
                free -= 1
        return out

    def wait(self, in_flight: int) -> None:
        """Nothing in flight: sleep until the next arrival (open loop)."""
        t = self.next_arrival()
        if in_flight or t is None:
            return
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


# ---------------------------------------------------------------------------------------------------- results
def _covered(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` within [lo, hi]."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end, lo), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def window_section(
    load: dict,
    schedule: Schedule,
    requests: list,
    window: tuple[float, float],
    energy_j: float | None,
    energy_method: str | None = None,
) -> dict:
    """The raw result's ``load`` section: what the schedule offered and what the window achieved.

    ``requests`` are the window's :class:`~llenergymeasure.backends.base.RequestTiming` records, with planned and
    submitted times (perf_counter seconds) and latencies from the planned arrival; ``window`` its (open, close) in
    the same clock; ``energy_j`` its gross energy, obtained by ``energy_method`` (measured or estimated)."""
    w0, w1 = window
    duration = w1 - w0
    n = len(requests)
    planned = [r.planned_t for r in requests]
    submitted = [r.submitted_t for r in requests]
    ends = [r.planned_t + r.e2e_s for r in requests]
    first_tokens = [r.planned_t + r.ttft_s for r in requests]
    offered = None
    if schedule.open_loop and n > 1 and max(planned) > min(planned):
        offered = (n - 1) / (max(planned) - min(planned))
    achieved = (n - 1) / (max(ends) - min(ends)) if n > 1 and max(ends) > min(ends) else None
    busy = _covered(list(zip(submitted, ends, strict=True)), w0, w1)
    section = {
        "arrival": schedule.arrival,
        "rate_per_s": load["rate_per_s"],
        "gamma_shape": load["gamma_shape"],
        "concurrency": load["concurrency"],
        "seed": load["seed"],
        "trace": None if load["trace"] is None else {"path": load["trace"], "sha256": schedule.trace_sha256},
        "num_requests": n,
        "offered_rate_per_s": offered,
        "achieved_rate_per_s": achieved,
        "achieved_to_offered": None if offered is None or achieved is None else achieved / offered,
        "rates_method": "(requests - 1) / span: of the planned arrivals (offered), of the completions (achieved)",
        "mean_in_flight": _ratio(sum(e - s for s, e in zip(submitted, ends, strict=True)), duration),
        "idle_share": None if not duration else max(0.0, 1.0 - busy / duration),
        "queueing_delay_ms": distribution([(s - p) * 1000.0 for s, p in zip(submitted, planned, strict=True)]),
        "latency_from": "planned arrival" if schedule.open_loop else "submission (when a slot freed)",
        "per_request": {
            "prompt": [req.prompt for req in schedule.requests][:n],
            "planned_s": [round(p - w0, 6) for p in planned],
            "submitted_s": [round(s - w0, 6) for s in submitted],
            "first_token_s": [round(f - w0, 6) for f in first_tokens],
            "end_s": [round(e - w0, 6) for e in ends],
        },
    }
    section["slo"] = slo_section(load["slo"], requests, duration, energy_j, energy_method)
    return section


def slo_section(
    slo: dict, requests: list, duration: float, energy_j: float | None, energy_method: str | None = None
) -> dict | None:
    """Goodput under ``load.slo``: requests whose TTFT and TPOT (mean time per output token after the first) both
    meet their objective (an objective left null is not judged; a one-token request has no TPOT and meets it)."""
    ttft_ms, tpot_ms = slo["ttft_ms"], slo["tpot_ms"]
    if ttft_ms is None and tpot_ms is None:
        return None

    def good(r) -> bool:
        if ttft_ms is not None and r.ttft_s * 1000.0 > ttft_ms:
            return False
        if tpot_ms is not None and r.output_tokens > 1:
            return (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) * 1000.0 <= tpot_ms
        return True

    met = sum(1 for r in requests if good(r))
    return {
        "ttft_ms": ttft_ms,
        "tpot_ms": tpot_ms,
        "requests_met": met,
        "attainment": _ratio(met, len(requests)),
        "goodput_requests_per_s": _ratio(met, duration),
        "j_per_good_request": None if energy_j is None else _ratio(energy_j, met),
        "energy_method": energy_method,  # of the gross energy j_per_good_request divides
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def not_sustained(section: dict | None) -> tuple[float, float, float] | None:
    """(achieved, offered, shortfall share) where the achieved rate falls more than 5 % short of the offered one."""
    if not section or section["achieved_to_offered"] is None:
        return None
    ratio = section["achieved_to_offered"]
    if ratio >= SUSTAINED_RATIO:
        return None
    return section["achieved_rate_per_s"], section["offered_rate_per_s"], 1.0 - ratio
