"""Progress of long work: a tqdm bar on a terminal, a few plain lines anywhere else.

A bar redraws itself many times a second; in a log file or a CI log each redraw would be a line
(or a mess of carriage returns), so where the stream is not a terminal `Progress` prints one
plain line at each quarter of the work instead (at most four lines, however long the work).
Work that is over within `quiet_s` (2 s) shows nothing at all: a bar or lines that come and go
in a blink only clutter the output.

`CTXEMO_PROGRESS` (core/env.py) overrides the terminal test: `bar` or `plain`. `ctxemo demo`
and `ctxemo stage` set `bar` for their child processes when the user's terminal is one, because
the children write into the pipe that copies everything to the log file (pipelines/session_log.py
keeps the bar's redraws out of that file). Code inside Ray workers passes `bar=False`: Ray
forwards a worker's output line by line, so a bar there would arrive as a line per redraw.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

from core import env

QUARTER = 0.25
QUIET_S = 2.0


def wants_bar(stream: TextIO) -> bool:
    """A bar when CTXEMO_PROGRESS says so, else when `stream` is a terminal."""
    mode = env.progress_mode()
    if mode is not None:
        return mode == "bar"
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """`total` units of work reported as they are done (`update`), on `stream` (default stderr).

    bar: None decides by `wants_bar(stream)`. step: the fraction of the work between plain lines
    (None: no plain lines; the caller's own `note` lines are the progress then). final: a plain
    line at 100% too (off when the caller prints its own summary line right after). quiet_s: no
    bar and no plain line before the work has run this long.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", stream: TextIO | None = None,
                 bar: bool | None = None, step: float | None = QUARTER, final: bool = True,
                 quiet_s: float = QUIET_S, redraw_s: float = 0.2) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.bar = wants_bar(self.stream) if bar is None else bar
        self.step, self.final, self.quiet_s = step, final, quiet_s
        self.done, self.started = 0, time.perf_counter()
        self._next_line = step or 0.0
        self._postfix: dict[str, str] = {}
        self._tqdm = None
        if self.bar:
            from tqdm import tqdm

            # the width of the user's terminal: COLUMNS when a parent (ctxemo demo) passed it down
            self._tqdm = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True,
                              ncols=shutil.get_terminal_size().columns, mininterval=redraw_s, delay=quiet_s)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        self._postfix.update({key: str(value) for key, value in postfix.items()})
        if self._tqdm is not None:
            if postfix:
                self._tqdm.set_postfix(self._postfix, refresh=False)
            self._tqdm.update(n)
            return
        if not self.step or not self.total:
            return
        fraction = self.done / self.total
        if fraction < self._next_line or (fraction >= 1.0 and not self.final):
            return
        # one line however many steps this update crossed (a short epoch crosses several at once)
        self._next_line = (int(fraction / self.step) + 1) * self.step
        if time.perf_counter() - self.started >= self.quiet_s:
            self._print(self.plain_line())

    def advance_to(self, done: int, **postfix) -> None:
        """Set the count of work done (callers that count it themselves)."""
        self.update(max(0, done - self.done), **postfix)

    def plain_line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {key} {value}" for key, value in self._postfix.items())
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.desc}: {percent:.0f}% ({self.done}/{self.total} {self.unit}, "
                f"{rate:.1f} {self.unit}/s, {elapsed:.0f} s{extra})")

    def note(self, line: str) -> None:
        """A line of its own: above the bar on a terminal, plain elsewhere."""
        if self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
        else:
            self._print(line)

    def around(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log` wrapped so that its lines (printed on any stream) do not tear the bar."""
        if self._tqdm is None:
            return log

        def clear_then_log(line: str) -> None:
            with self._tqdm.external_write_mode(file=self.stream):
                log(line)

        return clear_then_log

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

