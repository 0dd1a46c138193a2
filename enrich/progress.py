"""Progress: a live line on a terminal, plain log lines otherwise, and the end-of-run summary."""

from __future__ import annotations

import sys
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


class Reporter:
    """Shows a run's progress toward ``--until``. ``quiet`` prints only the summary."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, quiet: bool = False,
                 every_s: float = 10.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.every_s = 0.2 if self.tty else every_s
        self.t0 = time.monotonic()
        self.last = 0.0
        self.start_done = 0

    def start(self, plan: Plan) -> None:
        self.start_done = plan.progress.next_index
        self.t0 = time.monotonic()
        if not self.quiet:
            self._line(f"enrich: {plan.source} -> {plan.table} [{plan.caption_config}] "
                       f"rows done {plan.progress.next_index:,}, to do {plan.rows_to_do:,}"
                       + (f", failed to retry {plan.failed_to_retry:,}" if plan.failed_to_retry else ""),
                       final=True)

    def update(self, counts: Counts, done: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = counts.total / elapsed
        left = max(0, self.total - done)
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        if self.tty:
            width = 24
            filled = int(width * min(1.0, done / self.total)) if self.total else width
            bar = "#" * filled + "." * (width - filled)
            self._line(f"[{bar}] {done:,}/{self.total:,} {rate:,.1f} rows/s "
                       f"{counts.brief()} ETA {eta}")
        else:
            self._line(f"progress {done:,}/{self.total:,} rows, {rate:,.1f} rows/s, "
                       f"{counts.brief()}, ETA {eta}", final=True)

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def summary(self, result: Any) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        rate = result.counts.total / result.seconds if result.seconds else 0.0
        self.stream.write(
            f"enrich: {result.outcome}: {result.counts.total:,} rows in {result.seconds:,.1f}s "
            f"({rate:,.1f} rows/s; {result.counts.brief()}); {result.commits} commits; "
            f"table now covers rows 0..{result.plan.progress.next_index + result.committed_rows - 1}"
            f" of {result.plan.source}; run {result.run_id}\n")
        self.stream.flush()
