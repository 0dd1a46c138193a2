"""Progress: a live line on a terminal, plain log lines otherwise, and the end-of-run summary."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from enrich.schemas import STATUSES

if TYPE_CHECKING:
    from enrich.plan import Plan



@dataclass
class Counts:
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    def add(self, status: str, n: int = 1) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + n

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def brief(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.by_status.items())


@dataclass
class Flow:
    """Where the rows of a run are, as the pipeline knows it (read by the reporter's ticker)."""

    read: int = 0  # source rows the reader has numbered and handed to Ray
    committed: int = 0  # rows committed by this run
    exhausted: bool = False  # the reader reached the end of the source


def rows_range(n: int) -> str:
    """The first ``n`` rows, as a person reads it: "rows 0..9", or "no rows" for 0."""
    return f"rows 0..{n - 1}" if n > 0 else "no rows"


def rate(rows: int, seconds: float) -> float:
    """The one rate a run reports (progress line, summary, journal, ``status``): rows finished
    (any status) per second of wall time since the run started, start-up included."""
    return rows / seconds if seconds > 0 else 0.0


# The live line fits the terminal: its parts in the order they are dropped when it is narrow
# (the last first), the bar only where there is room for it beside everything else.
BAR_MIN_COLUMNS = 100
BAR_WIDTH = 20
# The ETA counts from the captioning rate, once rows have flowed this long (before it, start-up
# time would make it far too long).
ETA_AFTER_S = 3.0


class Reporter:
    """Shows a run's progress: on a terminal a live line from the start, redrawn twice a second
    whether or not rows arrive, fitted to the terminal's width; otherwise a plain line every
    ``every_s`` seconds. ``quiet`` prints only the summary."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, quiet: bool = False,
                 every_s: float = 10.0, columns: int | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.every_s = 0.5 if self.tty else every_s
        self.columns = columns  # None: the terminal's width, read at every redraw
        self.t0 = time.time()
        self.counts = Counts()
        self.flow = Flow()
        self.phase = "starting"
        self._flowing: tuple[float, int] | None = None  # (when, rows) the first rows came back
        self._drawn = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, plan: Plan, started: float | None = None) -> None:
        """The run's plan is known (``started``: when the run began, for the one rate)."""
        if started is not None:
            self.t0 = started
        self.total = plan.rows_to_do + plan.failed_to_retry
        if self.quiet:
            return
        self._write(f"enrich: {plan.source} -> {plan.table} [{plan.caption_config}] "
                    f"rows done {plan.progress.next_index:,}, to do {plan.rows_to_do:,}"
                    + (f", failed to retry {plan.failed_to_retry:,}" if plan.failed_to_retry else "")
                    + "\n")

    def running(self, flow: Flow) -> None:
        """Rows are about to flow: show the live line until :meth:`close`."""
        self.flow = flow
        if self.quiet or self._ticker is not None:
            return
        self._ticker = threading.Thread(target=self._tick, name="enrich-progress", daemon=True)
        self._ticker.start()

    def update(self, counts: Counts, phase: str = "captioning") -> None:
        self.counts, self.phase = counts, phase
        if self._flowing is None and counts.total:
            self._flowing = (time.time(), counts.total)

    def _target(self) -> int:
        """Rows this run will really finish: fewer than planned once the source has ended."""
        return min(self.total, self.flow.read) if self.flow.exhausted else self.total

    def eta(self, now: float | None = None) -> str:
        """Time left at the rate rows have come back since the first ones (not counting the
        start-up before them); "?" until that rate is known."""
        now = time.time() if now is None else now
        left = max(0, self._target() - self.counts.total)
        if not left:
            return "done"
        if self._flowing is None:
            return "ETA ?"
        since, rows0 = self._flowing
        if now - since < ETA_AFTER_S or self.counts.total <= rows0:
            return "ETA ?"
        return f"ETA {_clock(left / ((self.counts.total - rows0) / (now - since)))}"

    def parts(self, now: float | None = None) -> list[str]:
        """The line's parts, most wanted first."""
        now = time.time() if now is None else now
        done, seconds = self.counts.total, now - self.t0
        shown = [f"{k}={v:,}" for k, v in self.counts.by_status.items() if v]
        return [f"{done:,}/{self._target():,} rows ({self.phase})",
                f"{rate(done, seconds):,.1f} rows/s", self.eta(now), f"{_clock(seconds)} elapsed",
                f"read {self.flow.read:,}", f"committed {self.flow.committed:,}", *shown]

    def line(self, columns: int | None = None, now: float | None = None) -> str:
        """The parts that fit in ``columns`` (all of them when None), in order; the bar first
        where ``columns`` leaves room for it."""
        parts = self.parts(now)
        if columns is None:
            return ", ".join(parts)
        room = columns - 1  # a line as wide as the terminal wraps on some of them
        text = parts[0][:room]
        for part in parts[1:]:
            if len(text) + 2 + len(part) > room:
                break
            text += ", " + part
        if columns >= BAR_MIN_COLUMNS and len(text) + BAR_WIDTH + 1 <= room:
            target = max(1, self._target())
            filled = min(BAR_WIDTH, BAR_WIDTH * self.counts.total // target)
            text = "\u2588" * filled + "\u2591" * (BAR_WIDTH - filled) + " " + text
        return text

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.tty:
                columns = self.columns or shutil.get_terminal_size().columns
                # back to the line's start, the line, then clear what a longer one left
                self._write("\r" + self.line(columns) + "\x1b[K")
                self._drawn = True
            else:
                self._write(f"progress {self.line()}\n")

    def close(self) -> None:
        """Stop the live line (before the summary or an error line)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._drawn:  # the live line goes; the summary or an error line takes its place
            self._write("\r\x1b[K")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def summary(self, result: Any) -> None:
        self.close()
        self.stream.write(
            f"enrich: {result.outcome}: {result.counts.total:,} rows in {result.seconds:,.1f}s "
            f"({rate(result.counts.total, result.seconds):,.1f} rows/s; {result.counts.brief()}); "
            f"{result.commits} commits; "
            f"table now covers {rows_range(result.plan.progress.next_index + result.committed_rows)}"
            f" of {result.plan.source}; run {result.run_id}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
