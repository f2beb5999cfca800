"""Progress of long CLI work (embedding a big catalog, applying many workloads).

On a terminal one status line is rewritten in place: what is being done, how far, how long is
left. Otherwise (a pipe, a CI log) a plain line is written now and then, never a control
character. Hand-written: a progress line does not justify a dependency.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between two rewrites of the terminal line (faster is flicker, not information).
REDRAW_SECONDS = 0.1
#: Seconds between two plain lines when not on a terminal.
PLAIN_LINE_SECONDS = 10.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Reports ``done`` of ``total`` units of one task at a time, with an estimate of the time left.

    ``interactive`` (default: whether stdout is a terminal) selects the rewritten line; the
    line itself goes to ``stream`` (stderr), so stdout keeps only results. Call :meth:`clear`
    before printing a result line, :meth:`done` at the end.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interactive: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._clock = time.monotonic
        self._label = ""
        self._started = 0.0
        self._last_draw = float("-inf")
        self._shown = 0  # characters of the line on screen

    def start(self, label: str) -> None:
        """Begin a new task (resets the estimate)."""
        self._label = label
        self._started = self._clock()
        self._last_draw = float("-inf")

    def update(self, done: int, total: int, unit: str, detail: str = "") -> None:
        """``done`` of ``total`` ``unit`` so far; redrawn at most every so often."""
        now = self._clock()
        finished = done >= total
        interval = REDRAW_SECONDS if self.interactive else PLAIN_LINE_SECONDS
        if not finished and now - self._last_draw < interval:
            return
        self._last_draw = now
        elapsed = now - self._started
        percent = 100 * done / total if total else 100.0
        text = f"{self._label}: {done:,}/{total:,} {unit} ({percent:.0f}%)"
        if finished:
            text += f", took {_duration(elapsed)}"
        elif done and elapsed > 0.5:
            text += f", about {_duration(elapsed * (total - done) / done)} left"
        if detail:
            text += f": {detail}"
        self._write(text)

    def clear(self) -> None:
        """Remove the status line (before the caller prints something else)."""
        if self.interactive and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def done(self) -> None:
        self.clear()

    def _write(self, text: str) -> None:
        if self.interactive:
            width = 160
            text = text[:width]
            pad = max(0, self._shown - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._shown = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
