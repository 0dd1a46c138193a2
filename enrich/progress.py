"""Progress: a live line on a terminal, plain log lines otherwise, and the end-of-run summary."""

from __future__ import annotations

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


def rate(rows: int, seconds: float) -> float:
    """The one rate a run reports (progress line, summary, journal, ``status``): rows finished
    (any status) per second of wall time since the run started, start-up included."""
    return rows / seconds if seconds > 0 else 0.0


class Reporter:
    """Shows a run's progress: on a terminal a live line (tqdm) from the start, redrawn twice a
    second whether or not rows arrive; otherwise a plain line every ``every_s`` seconds.
    ``quiet`` prints only the summary."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, quiet: bool = False,
                 every_s: float = 10.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.every_s = 0.5 if self.tty else every_s
        self.t0 = time.time()
        self.counts = Counts()
        self.flow = Flow()
        self.phase = "starting"
        self._bar: Any = None
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
        if self.tty:
            from tqdm import tqdm

            # tqdm draws the line; the text (one rate, ETA against what will really be done) is ours
            self._bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True, leave=False,
                             bar_format="{bar:20} {desc}")
        self._ticker = threading.Thread(target=self._tick, name="enrich-progress", daemon=True)
        self._ticker.start()

    def update(self, counts: Counts, phase: str = "captioning") -> None:
        self.counts, self.phase = counts, phase

    def line(self) -> str:
        done = self.counts.total
        seconds = time.time() - self.t0
        r = rate(done, seconds)
        total = min(self.total, self.flow.read) if self.flow.exhausted else self.total
        left = max(0, total - done)
        eta = ("done" if not left else f"ETA {_clock(left / r)}" if r > 0 else "ETA ?")
        return (f"{done:,}/{total:,} rows ({self.phase}), {r:,.1f} rows/s, "
                f"read {self.flow.read:,}, committed {self.flow.committed:,}, "
                f"{self.counts.brief()}, {_clock(seconds)} elapsed, {eta}")

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            text = self.line()
            if self._bar is not None:
                self._bar.total = max(1, min(self.total, self.flow.read) if self.flow.exhausted
                                      else self.total)
                self._bar.n = self.counts.total
                self._bar.set_description_str(text, refresh=False)
                self._bar.refresh()
            else:
                self._write(f"progress {text}\n")

    def close(self) -> None:
        """Stop the live line (before the summary or an error line)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def summary(self, result: Any) -> None:
        self.close()
        self.stream.write(
            f"enrich: {result.outcome}: {result.counts.total:,} rows in {result.seconds:,.1f}s "
            f"({rate(result.counts.total, result.seconds):,.1f} rows/s; {result.counts.brief()}); "
            f"{result.commits} commits; "
            f"table now covers rows 0..{result.plan.progress.next_index + result.committed_rows - 1}"
            f" of {result.plan.source}; run {result.run_id}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
