"""Token times: when each request's output tokens arrived, kept beside the raw result.

A raw result holds the window's pooled latency distributions and each request's TTFT and E2E; the token times
sidecar (``cycle_<n>.tokens.json``, named by the raw result's ``latency.token_times_file``) holds what they come
from: for every request of the window, in the order of the raw result's ``latency.per_request`` lists,

- ``token_us``: the arrival of each of its output tokens, in whole microseconds from the request's start (the
  instant its TTFT counts from); the first entry is the TTFT, tokens that arrived together share one value, and a
  request that ended without a token has an empty list;
- ``start_us``: that start, in whole microseconds from the window's opening (null where the backend does not say);
- ``prompt_index``: the prompt it generated from (a prompt recurs when the workload ran more than once);
- under a serving load, ``planned_us`` and ``submitted_us``: its planned arrival and its submission, in whole
  microseconds from the window's opening.

Every time is rounded to the nearest microsecond once, as the arrival it is (never a gap). The raw result's
``latency.itl_ms`` is computed from these same whole-microsecond arrivals (:func:`itl_ms`), so
:func:`itl_distribution` of the sidecar gives it back exactly; TTFT and E2E in the raw result keep their own
resolution (per request, 0.1 microsecond), and agree with ``token_us`` to the rounding of both.

The arrivals are not in the raw result itself: a window of a few hundred requests has tens of thousands of them,
and the aggregation reads every raw result of a campaign. The sidecar is written compact (no spaces), before the
raw result is published, and is protected like it (:mod:`llenergymeasure.results`).

This module needs only the standard library.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ..stats import distribution

#: what the sidecar says about its numbers
TIMES = (
    "whole microseconds, each rounded to the nearest once: token_us from the request's start (its first entry is "
    "the TTFT), start_us, planned_us and submitted_us from the window's opening"
)


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def arrivals_us(request) -> list[int]:
    """A request's token arrivals in whole microseconds from its start: the first at its TTFT, each next one its
    inter-token gap later (``request`` is a :class:`~llenergymeasure.backends.base.RequestTiming`)."""
    if request.output_tokens <= 0:
        return []
    t = request.ttft_s
    out = [_us(t)]
    for gap in request.itl_s:
        t += gap
        out.append(_us(t))
    return out


def itl_ms(arrivals: list[list[int]]) -> list[float]:
    """Every inter-token latency in ms, pooled over the requests, from their whole-microsecond arrivals."""
    return [(b - a) / 1000.0 for tokens in arrivals for a, b in itertools.pairwise(tokens)]


def sidecar(requests: list, w0: float, experiment_id: str, cycle: int, window_start: str, request_start: str) -> dict:
    """The token times sidecar of a window: ``requests`` are its RequestTiming records in the raw result's order,
    ``w0`` the window's opening (perf_counter seconds), ``window_start`` the same as UTC ISO-8601, and
    ``request_start`` what a request's start is (the raw result's ``latency.request_start``)."""
    columns: dict[str, list] = {
        "prompt_index": [r.index for r in requests],
        "start_us": [None if r.start_t is None else _us(r.start_t - w0) for r in requests],
        "token_us": [arrivals_us(r) for r in requests],
    }
    if any(r.planned_t is not None for r in requests):
        columns["planned_us"] = [None if r.planned_t is None else _us(r.planned_t - w0) for r in requests]
        columns["submitted_us"] = [None if r.submitted_t is None else _us(r.submitted_t - w0) for r in requests]
    return {
        "experiment_id": experiment_id,
        "cycle": cycle,
        "window_start": window_start,
        "request_start": request_start,
        "times": TIMES,
        "num_requests": len(requests),
        "requests": columns,
    }


def read(path: str | Path) -> dict:
    """A token times sidecar; ValueError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable token times file ({exc})") from None
    tokens = data.get("requests", {}).get("token_us") if isinstance(data, dict) else None
    if not isinstance(tokens, list) or len(tokens) != data.get("num_requests"):
        raise ValueError(f"{path}: not a token times file (requests.token_us missing or not num_requests long)")
    return data


def itl_distribution(source: dict | str | Path) -> dict:
    """The window's ITL distribution in ms (mean, p50, p90, p95, p99, min, max, n), derived again from a token
    times sidecar (its data, or its path): equal to the raw result's ``latency.itl_ms``."""
    data = read(source) if isinstance(source, str | Path) else source
    return distribution(itl_ms(data["requests"]["token_us"]))
