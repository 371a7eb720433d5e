"""A job's heartbeat: no workflow job stays silent on the console for long.

Code says what the job is doing with :func:`phase` (and how far it got with :func:`detail`). While a
:class:`Heartbeat` runs (every workflow job's console, :func:`llenergymeasure.jobs.logging_to`), a daemon thread
writes one line whenever no line of the job has reached the console for :data:`QUIET_S` seconds: the job, what it is
doing, for how long (of how long, where that is known) and how far it got, e.g.
``pytorch-…-bs8-fdfc84ecb7 cycle 2: thermal gap, 16 s so far of 30 s``. Without a running heartbeat (``lem run``,
tests, a quiet console) :func:`phase` and :func:`detail` do nothing.

The thread wakes twice a second, compares two numbers and goes back to sleep; it reads no counter and shares only
its own short lock with the measured code, so inside the window it costs nothing measurable (a thread polling
power at 100 Hz is already within noise, ``methodology.md``).

Only the job's own lines count: output that an engine or a library writes past the logging (a download's progress
bar) does not, so a heartbeat line may appear beside it.

Only the standard library: the measurement job of a stock engine image imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: seconds without a line of the job on the console before the heartbeat writes one (below the 10 s a user should
#: ever wait for a sign of life, with the thread's half-second tick)
QUIET_S = 8.0

_active: Heartbeat | None = None


def phase(what: str, total_s: float | None = None) -> None:
    """From now on the job is doing ``what`` (expected to take ``total_s`` seconds, where that is known)."""
    if _active is not None:
        _active.phase(what, total_s)


def detail(text: str | None) -> None:
    """How far the current phase got (``12/32 prompts``); replaced by the next call, cleared by :func:`phase`."""
    if _active is not None:
        _active.detail(text)


class Heartbeat:
    """The job's heartbeat (see the module docstring). ``write(line)`` puts a line on the console (by default the
    ``llenergymeasure.progress`` logger's, which the console shows); the console tells it of each line it shows,
    the heartbeat's own included, through :meth:`saw_line` or :meth:`seen` as a logging filter. Used as a context
    manager, it runs its thread and receives :func:`phase` and :func:`detail` for the duration."""

    def __init__(
        self,
        label: str,
        write: Callable[[str], None] | None = None,
        quiet_s: float | None = None,
        tick_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        first_phase: str = "working",
    ) -> None:
        self.write = write or logging.getLogger("llenergymeasure.progress").info
        self.label, self.tick_s, self.clock = label, tick_s, clock
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = clock()
        self._last_line = now
        self._phase, self._phase_start, self._total_s, self._detail = first_phase, now, None, None

    def saw_line(self) -> None:
        self._last_line = self.clock()

    def seen(self, record: logging.LogRecord) -> bool:
        """A logging filter, last on a console's handler: each record that reaches it is a line shown."""
        self.saw_line()
        return True

    def phase(self, what: str, total_s: float | None = None) -> None:
        with self._lock:
            self._phase, self._phase_start, self._total_s, self._detail = what, self.clock(), total_s, None

    def detail(self, text: str | None) -> None:
        with self._lock:
            self._detail = text

    def due_line(self) -> str | None:
        """The line to write now: None while the console has had a line within ``quiet_s``."""
        now = self.clock()
        if now - self._last_line < self.quiet_s:
            return None
        with self._lock:
            what, start, total, more = self._phase, self._phase_start, self._total_s, self._detail
        line = f"{self.label}: {what}, {now - start:.0f} s so far"
        if total is not None:
            line += f" of {total:.0f} s"
        return f"{line}; {more}" if more else line

    def _beat(self) -> None:
        while not self._stop.wait(self.tick_s):
            line = self.due_line()
            if line is not None:
                self._last_line = self.clock()  # also when the console does not call back (a quiet console)
                self.write(line)

    def __enter__(self) -> Heartbeat:
        global _active
        _active = self
        self._thread = threading.Thread(target=self._beat, name="lem-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if _active is self:
            _active = None
