"""The committer: engine output and the driver's duplicates into table rows, committed as
contiguous prefixes with the resume position in the same Delta commit.

A table row is three parts joined on ``source_index``: what the source says of it (the reader's
metadata, :data:`enrich.reader.SOURCE_COLUMNS`), what the engine or the driver decided
(:data:`DECIDED_COLUMNS`: every other column of the schema), and the run's constants. A new
column is its line in ``schemas/captions.json`` plus where its value comes from."""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from enrich.config import RunConfig, enricher_version
from enrich.plan import Plan
from enrich.positions import Progress, run_metadata
from enrich.progress import Counts
from enrich.reader import SOURCE_COLUMNS
from enrich.schemas import CAPTIONS
from enrich.sink import CaptionsTable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from enrich.feeder import Decided

# The same for every row a run writes (created_at: when the row is made).
CONSTANT_COLUMNS = ("source", "model", "caption_config", "run_id", "enricher_version", "created_at")
# What the engine (or, for duplicates, the driver) says of a row: the schema's other columns.
DECIDED_COLUMNS = tuple(n for n in CAPTIONS.names
                        if n not in SOURCE_COLUMNS and n not in CONSTANT_COLUMNS)


def split_error(text: str) -> tuple[str, str | None]:
    """A row's error as (reason, particulars): every error enrich makes reads "reason: particulars"
    ("corrupt image data: image file is truncated (19 bytes not processed)"), the reason being
    one of a few fixed phrases, so that GROUP BY error counts reasons, not byte counts."""
    reason, _, detail = text.partition(": ")
    return reason, detail or None


class Committer:
    """Turns engine output into table rows and commits contiguous prefixes."""

    def __init__(self, cfg: RunConfig, table: CaptionsTable, plan: Plan, run_id: str,
                 counts: Counts) -> None:
        self.cfg, self.table, self.plan = cfg, table, plan
        self.run_id, self.counts = run_id, counts
        self.meta: dict[int, dict[str, Any]] = {}  # SOURCE_COLUMNS of rows not yet written
        self.exhausted = False  # known at the end (maybe_commit(final=True, exhausted=...))
        self.next_index = plan.progress.next_index
        self.buffer: list[dict[str, Any]] = []
        self.retry_buffer: list[dict[str, Any]] = []
        self.held: deque[dict[str, Any]] = deque()
        self.bad_outcome: dict[str, tuple[str, str | None]] = {}
        self.last_commit = time.monotonic()
        self.commits = 0
        self.committed = 0
        self.first_commit_at: float | None = None  # wall time of the first rows committed
        self.caption_config = cfg.caption.id
        self.version = enricher_version()
        self.constants = {"source": plan.source, "model": cfg.caption.model,
                          "caption_config": self.caption_config, "run_id": run_id,
                          "enricher_version": self.version}
        assert set(self.constants) | {"created_at"} == set(CONSTANT_COLUMNS)

    def _full_row(self, r: dict[str, Any]) -> dict[str, Any]:
        row = self.meta.pop(r["source_index"])
        row.update((name, r.get(name)) for name in DECIDED_COLUMNS)
        image_hash = row["image_hash"]
        if row["status"] == "duplicate" and image_hash in self.bad_outcome:
            # Same bytes as an earlier row of this run that was rejected or failed: same outcome.
            row["status"], row["error"] = self.bad_outcome[image_hash]
        elif row["status"] in ("rejected", "failed") and image_hash:
            self.bad_outcome[image_hash] = (row["status"], row["error"])
        if row["status"] != "captioned":
            row["caption"] = None
        if row["error"]:
            row["error"], row["error_detail"] = split_error(row["error"])
        self.counts.add(row["status"])
        row.update(self.constants, created_at=datetime.now(timezone.utc))
        return row

    def _release_held(self, below: int | None) -> None:
        while self.held and (below is None or self.held[0]["source_index"] < below):
            self.buffer.append(self._full_row(self.held.popleft()))

    def accept(self, batch: pa.Table, retry_indices: set[int]) -> None:
        for r in batch.to_pylist():
            idx = r["source_index"]
            if idx in retry_indices:
                self.retry_buffer.append(r)
                continue
            self._release_held(idx)
            self.buffer.append(self._full_row(r))

    def _flush_retry(self) -> None:
        if not self.retry_buffer:
            return
        rows = [self._full_row(r) for r in self.retry_buffer]
        self.table.replace_failed(pa.Table.from_pylist(rows, schema=CAPTIONS), source=self.plan.source,
                                  caption_config=self.caption_config, metadata=self._meta())
        self.retry_buffer.clear()
        self.commits += 1

    def _meta(self) -> dict[str, str]:
        return run_metadata(run_id=self.run_id, source=self.plan.source,
                            caption_config=self.caption_config,
                            caption_config_json=self.cfg.caption.to_json(), enricher_version=self.version)

    def maybe_commit(self, *, final: bool = False, exhausted: bool = False) -> None:
        """Commit full slices of ``commit_every`` rows; the rest when ``commit_seconds`` have
        passed, when none has been committed yet, or at the end (``final``; ``exhausted``: the
        source ended before --until). Until the end, the newest row stays buffered so the final
        commit always has a row to carry "source exhausted" in its metadata."""
        if final:
            self.exhausted = exhausted
            self._release_held(None)
            self._flush_retry()
        keep = 0 if final else 1
        while len(self.buffer) - keep >= self.cfg.commit_every:
            self._commit(self.cfg.commit_every, final=final)
        # the first rows are committed as soon as they are in: the time to the first row is what
        # a person watching a new run waits on, and one small commit costs nothing
        late = self.commits == 0 or time.monotonic() - self.last_commit >= self.cfg.commit_seconds
        if len(self.buffer) > keep and (final or late):
            self._commit(len(self.buffer) - keep, final=final)

    def _commit(self, n: int, *, final: bool) -> None:
        self._flush_retry()  # retried rows sit before the main stream: they land first
        self.buffer.sort(key=lambda r: r["source_index"])
        rows, self.buffer = self.buffer[:n], self.buffer[n:]
        first, last = rows[0]["source_index"], rows[-1]["source_index"]
        if first != self.next_index or last - first + 1 != len(rows):
            raise AssertionError(f"internal error: rows {first}..{last} ({len(rows)}) are not the "
                                 f"contiguous run after {self.next_index}; nothing was committed")
        at_end = final and not self.buffer and self.exhausted
        progress = Progress(next_index=last + 1, next_shard=rows[-1]["source_shard"],
                            next_offset=rows[-1]["source_offset"] + 1, exhausted=at_end)
        self.table.append(pa.Table.from_pylist(rows, schema=CAPTIONS), app_id=self.plan.app_id,
                          expect_from=self.next_index, progress=progress, metadata=self._meta())
        self.next_index = last + 1
        if self.first_commit_at is None:
            self.first_commit_at = time.time()
        self.committed += len(rows)
        self.commits += 1
        self.last_commit = time.monotonic()

    def take(self, decided: list[Decided]) -> None:
        """What the driver decided of the chunks sent since the last batch: their rows' source
        metadata, and the rows it decided itself (duplicates of earlier images): ``retry`` ones
        replace failed rows, ``main`` ones wait in order for the engine rows around them."""
        for kind, meta, dups in decided:
            self.meta.update(meta)
            if kind == "retry":
                self.retry_buffer.extend(dups)
            else:
                self.held.extend(dups)
