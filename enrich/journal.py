"""Run journal: one JSON file per run under the checkpoint directory, written atomically.

It is a record for people and for ``status``/``gallery`` (resolved config, counts, timings,
positions, outcome). It is never used to decide what is done: the Delta log is the authority.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enrich.errors import UsageError, cannot_write
from enrich.progress import rate

if TYPE_CHECKING:
    from enrich.config import RunConfig
    from enrich.plan import Plan
    from enrich.progress import Counts


class Outcome(str, enum.Enum):
    """How a run ended, as its journal, its result and ``status`` say it."""

    RUNNING = "running"
    COMPLETED = "completed"
    NOTHING_TO_DO = "nothing to do"
    EXHAUSTED = "nothing to do (source exhausted)"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    # never written: what ``status`` shows for a "running" journal whose process is gone
    DIED = "died"

    def __str__(self) -> str:
        return self.value


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: field 22 of /proc/PID/stat, in clock ticks since
    boot), so that a pid reused by another process is not taken for the run; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_token() -> dict[str, Any]:
    """Who writes a journal: enough for ``status`` to tell, later, whether it still runs."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": _process_start(pid)}


def still_running(journal: dict[str, Any]) -> bool | None:
    """Whether the process that wrote a "running" journal is alive: True/False on the host that
    wrote it, None where that cannot be known (another host, a journal without a pid)."""
    pid, host = journal.get("pid"), journal.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    start = journal.get("process_start")
    return start is None or _process_start(pid) == start


def shown_outcome(journal: dict[str, Any]) -> str:
    """A journal's outcome as ``status`` shows it: a run whose process is gone is "died"."""
    outcome = str(journal.get("outcome"))
    if outcome == Outcome.RUNNING and still_running(journal) is False:
        return Outcome.DIED.value
    return outcome


def table_dir(checkpoint_dir: str, table_uri: str) -> Path:
    """Checkpoint sub-directory of one table: its name plus a hash of its full URI."""
    name = table_uri.rstrip("/").rsplit("/", 1)[-1] or "table"
    digest = hashlib.sha256(os.path.abspath(table_uri).encode() if "://" not in table_uri
                            else table_uri.encode()).hexdigest()[:10]
    return Path(checkpoint_dir) / f"{name}-{digest}"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, synced and renamed over
    it, and removed if anything fails on the way (nothing half-written is left behind)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".enrich-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class Journal:
    def __init__(self, cfg: RunConfig, run_id: str, plan: Plan, started: float | None = None) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.plan = plan
        self.dir = table_dir(cfg.checkpoint_dir, cfg.table) / "runs"
        self.path = self.dir / f"{run_id}.json"
        self.engine_dir = str(self.dir / f"{run_id}.engine")
        self.started = time.time() if started is None else started  # the run's start: one rate
        self.owner = process_token()  # the writing process, read once: status tells a dead one
        self._existed = self._nearest_existing(self.dir)  # folders above it are not ours to remove

    @staticmethod
    def _nearest_existing(folder: Path) -> Path:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return folder

    def check_writable(self) -> None:
        """Refuse, in one line and before Ray starts, a --checkpoint-dir that cannot be written."""
        folder = self._nearest_existing(self.dir)  # nothing is created here
        why = cannot_write(str(folder))  # a file in the way: NotADirectoryError
        if why:
            raise UsageError(f"--checkpoint-dir {self.cfg.checkpoint_dir!r}: cannot write run "
                             f"journals in {self.dir} ({why})")

    def engine_starts(self) -> int:
        try:
            return sum(1 for p in os.listdir(self.engine_dir) if p.startswith("start-"))
        except FileNotFoundError:
            return 0

    def write(self, outcome: Outcome, counts: Counts, result: Any = None,
              error: str | None = None) -> None:
        # a finished run's seconds are its result's: summary, journal and status say one rate
        seconds = result.seconds if result is not None else time.time() - self.started
        now = self.started + seconds
        data = {
            "run_id": self.run_id,
            "outcome": outcome.value,
            "error": error,
            **self.owner,
            "started_at": self.started,
            "ended_at": None if outcome == Outcome.RUNNING else now,
            "seconds": seconds,
            "config": self.cfg.public_dict(),
            "config_origins": dict(self.cfg.origins),
            "plan": self.plan.to_dict(),
            "counts": dict(counts.by_status),
            "rows": counts.total,
            "rows_per_s": rate(counts.total, seconds),
            "start_index": self.plan.progress.next_index,
            "end_index": None if result is None else self.plan.progress.next_index + result.committed_rows,
            "commits": None if result is None else result.commits,
            "engine_starts": self.engine_starts(),
            "milestones": None if result is None else result.milestones,
        }
        write_json_atomic(self.path, data)

    def discard(self) -> None:
        """Remove this run's journal and the folders its first write created: a run refused as a
        usage error before it read a row leaves nothing behind (as a bad flag does)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        folder = self.dir
        while folder != self._existed and folder.is_relative_to(self._existed):
            try:
                folder.rmdir()  # only if empty: another run's journal keeps it
            except OSError:
                return
            folder = folder.parent


def read_journals(checkpoint_dir: str, table_uri: str) -> list[dict[str, Any]]:
    runs = table_dir(checkpoint_dir, table_uri) / "runs"
    out = []
    for p in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda d: d.get("started_at") or 0)
