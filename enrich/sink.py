"""Sink stage: the Delta Lake captions table, written exactly once.

Every commit appends a contiguous run of ``source_index`` values *and* records, in the same Delta
commit, how far the stream got: an app transaction (``app_id`` = source + caption config,
``version`` = the next source_index) plus custom metadata with the shard position. The table's
own log is therefore the only resume state. delta-rs records app transactions but does not
enforce them (re-appending with the same or a lower version is accepted, checked with
deltalake 1.6), so :meth:`CaptionsTable.append` checks the recorded version before it
writes and after any ambiguous failure: a retried commit never lands twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from enrich import retry as retrying
from enrich.errors import (
    RunLockedError,
    TableError,
    TableUnreachableError,
    UsageError,
    store_error,
)
from enrich.lease import DEFAULT_TTL_S, local_lock
from enrich.positions import META_PREFIX, Progress, Stream, position
from enrich.retry import unreachable
from enrich.schemas import CAPTIONS, schema_problem

log = logging.getLogger(__name__)

T = TypeVar("T")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


class CaptionsTable:
    """The captions table at ``uri`` (a local path or an object-store URI)."""

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options or {}
        self._lease: Any = None  # the run lease while lock() holds one (object stores)
        self._grow: list[str] = []  # columns of the schema the table does not have yet
        self._check()

    def _merge(self) -> dict[str, Any]:
        """Write arguments: a table that lacks columns of the schema gains them in the write
        (delta-rs's schema merge; a retried write merges again, which is harmless)."""
        return {"schema_mode": "merge"} if self._grow else {}

    # -- opening -----------------------------------------------------------------------------
    def _check(self) -> None:
        if _is_local(self.uri):
            path = _local_path(self.uri)
            if os.path.exists(path) and not os.path.isdir(path):
                raise TableError(f"--table {self.uri!r} is a file, not a Delta table directory")
            if os.path.isdir(path) and not os.path.isdir(os.path.join(path, "_delta_log")):
                extra = [n for n in os.listdir(path) if not n.startswith("_enrich")]
                if extra:
                    raise TableError(f"--table {self.uri!r} is a non-empty directory that is not a "
                                     "Delta table; pick a new path")
        dt = self._delta()
        if dt is None:
            return
        have = pa.schema(dt.schema().to_arrow())
        problem = schema_problem(have, CAPTIONS)
        if problem:
            raise TableError(f"--table {self.uri!r} is a Delta table with another schema "
                             f"({problem}); enrich writes only captions tables")
        # Columns added to the schema since the table was written (nullable, at the end): the
        # next write adds them (old rows read as null), in the same commit as its rows.
        self._grow = [n for n in CAPTIONS.names if n not in have.names]

    def _delta(self) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None
        except OSError as exc:
            if unreachable(exc):
                raise TableUnreachableError(
                    f"--table {self.uri!r}: the store did not answer ({store_error(exc)}); rows "
                    "committed so far are safe, run the same command again later") from None
            raise TableError(f"--table {self.uri!r}: cannot open ({exc})") from None

    @property
    def exists(self) -> bool:
        return self._delta() is not None

    # -- reading -----------------------------------------------------------------------------
    def dataset(self) -> pads.Dataset | None:
        dt = self._delta()
        # to_pyarrow_table() makes the process abort at exit with pyarrow 26 (exit 134, every time);
        # to_pyarrow_dataset() does not. Every read of the table goes through here.
        return None if dt is None else dt.to_pyarrow_dataset()

    def read(self, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
        ds = self.dataset()
        if ds is None:
            return CAPTIONS.empty_table().select(columns or CAPTIONS.names)
        return ds.to_table(columns=columns, filter=filter)

    def has_progress(self, app_id: str) -> bool:
        dt = self._delta()
        return dt is not None and dt.transaction_version(app_id) is not None

    def progress(self, app_id: str) -> Progress:
        dt = self._delta()
        if dt is None:
            return Progress()
        version = dt.transaction_version(app_id)
        if version is None:
            return Progress()
        for limit in (50, None):
            for entry in dt.history(limit):
                if entry.get(META_PREFIX + "app_id") == app_id:
                    at = position(entry)
                    if at.next_index == version:
                        return at
        raise TableError(f"--table {self.uri!r}: app transaction {app_id} at {version} has no "
                         "matching commit metadata; the table was changed by another tool")

    def streams(self) -> list[Stream]:
        """Every stream the table holds and where it stands, newest first (one read of the
        table's history)."""
        dt = self._delta()
        if dt is None:
            return []
        found: dict[str, Stream] = {}
        for entry in dt.history():
            app = entry.get(META_PREFIX + "app_id")
            if app and app not in found:
                at = position(entry)
                found[app] = Stream(source=entry.get(META_PREFIX + "source"),
                                    caption_config=entry.get(META_PREFIX + "caption_config"),
                                    next_index=dt.transaction_version(app), shard=at.next_shard,
                                    offset=at.next_offset, exhausted=at.exhausted)
        return list(found.values())

    def size(self) -> tuple[int, int]:
        """(version, number of data files); (-1, 0) for a table not yet created."""
        dt = self._delta()
        return (-1, 0) if dt is None else (dt.version(), len(dt.file_uris()))

    def compact(self, *, retention_hours: int) -> dict[str, Any]:
        """Merge small files, vacuum files removed longer than ``retention_hours`` ago (Delta's
        safeguard refuses less than its retention), and write a log checkpoint. Take
        :meth:`lock` around it: it must not race a run's commits."""
        dt = self._delta()
        if dt is None:
            raise TableError(f"--table {self.uri!r}: no table there")
        before = len(dt.file_uris())
        metrics = dt.optimize.compact()
        try:
            removed = dt.vacuum(retention_hours=retention_hours, enforce_retention_duration=True,
                                dry_run=False)
        except Exception as exc:  # noqa: BLE001 - delta-rs raises a bare Exception here
            raise UsageError(f"compact: {exc}") from None
        dt.create_checkpoint()
        return {"files_before": before, "files_after": self.size()[1],
                "compacted": metrics.get("numFilesRemoved", 0), "into": metrics.get("numFilesAdded", 0),
                "vacuumed": len(removed)}

    def _key_filter(self, source: str, caption_config: str) -> pc.Expression:
        return (pc.field("source") == source) & (pc.field("caption_config") == caption_config)

    def captioned_hashes(self, caption_config: str) -> pa.ChunkedArray:
        t = self.read(["image_hash"], (pc.field("caption_config") == caption_config)
                      & (pc.field("status") == "captioned"))
        return t.column("image_hash")

    def shards_read(self, source: str, caption_config: str) -> set[str]:
        """The source files (``source_shard``) this stream has rows from."""
        t = self.read(["source_shard"], self._key_filter(source, caption_config))
        return set(pc.unique(t.column("source_shard")).to_pylist()) - {None}

    def failed_rows(self, source: str, caption_config: str) -> pa.Table:
        return self.read(["source_index", "source_shard", "source_offset", "source_key"],
                         self._key_filter(source, caption_config) & (pc.field("status") == "failed")
                         ).sort_by("source_index")

    # -- writing -----------------------------------------------------------------------------
    def append(self, rows: pa.Table, *, app_id: str, expect_from: int, progress: Progress,
               metadata: dict[str, str]) -> bool:
        """Append ``rows`` (source_index ``expect_from`` .. ``progress.next_index`` - 1) and
        record ``progress`` in the same commit. Returns False if it had already landed."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        if self._lease is not None:
            self._lease.check()  # a run that lost its lease commits nothing more
        rows = rows.select(CAPTIONS.names).cast(CAPTIONS)

        def landed() -> bool:
            dt = self._delta()
            current = None if dt is None else dt.transaction_version(app_id)
            current = current or 0
            if current >= progress.next_index:
                return True
            if current != expect_from:
                raise RunLockedError(
                    f"another run advanced {app_id} to {current} (this run expected "
                    f"{expect_from}); stop the other run or wait for it")
            return False

        # the store may fail this first look too (an outage mid-run): the same retries
        if retrying.commit(landed, what=f"reading the table before the commit of rows {expect_from}.."
                 f"{progress.next_index - 1}"):
            return False
        custom = {
            **metadata,
            META_PREFIX + "app_id": app_id,
            META_PREFIX + "next_index": str(progress.next_index),
            META_PREFIX + "next_shard": progress.next_shard or "",
            META_PREFIX + "next_offset": str(progress.next_offset),
            META_PREFIX + "exhausted": "true" if progress.exhausted else "false",
        }
        props = CommitProperties(custom_metadata=custom,
                                 app_transactions=[Transaction(app_id, progress.next_index)])

        def write() -> None:
            write_deltalake(self.uri, rows, mode="append", commit_properties=props,
                            storage_options=self.storage_options or None, **self._merge())

        retrying.commit(write, what=f"commit of rows {expect_from}..{progress.next_index - 1}",
              before_retry=landed)
        self._grow = []  # the table has every column now
        return True

    def replace_failed(self, rows: pa.Table, *, source: str, caption_config: str,
                       metadata: dict[str, str]) -> None:
        """Replace the rows of a retry (they were ``failed``) by their new outcome, in one commit:
        Delta's replace-where deletes the old rows and adds the new ones atomically, and running
        it twice gives the same table. (MERGE is avoided: delta-rs 1.6 writes its files with
        ``string_view`` columns, which pyarrow's dataset filters then reject.)"""
        from deltalake import CommitProperties, write_deltalake

        rows = rows.select(CAPTIONS.names).cast(CAPTIONS)
        indices = ",".join(str(int(i)) for i in rows.column("source_index").to_pylist())
        predicate = (f"source = {_sql_str(source)} AND caption_config = {_sql_str(caption_config)}"
                     f" AND source_index IN ({indices})")

        def write() -> None:
            write_deltalake(self.uri, rows, mode="overwrite", predicate=predicate,
                            commit_properties=CommitProperties(custom_metadata=metadata),
                            storage_options=self.storage_options or None, **self._merge())

        retrying.commit(write, what=f"replacing {rows.num_rows} retried rows")
        self._grow = []

    @contextmanager
    def lock(self, *, wait: bool = False, ttl_s: float = DEFAULT_TTL_S, run_id: str = "") -> Iterator[None]:
        """Hold the table's run lock: one enrich run or compaction at a time. Local tables: an
        ``flock`` that the OS drops when the process dies, SIGKILL included. Object stores: a
        lease object beside the table, renewed while held, taken over once ``ttl_s`` has passed
        without renewal (enrich/lease.py)."""
        if not _is_local(self.uri):
            from enrich.lease import ObjectStoreLease

            with ObjectStoreLease(self.uri, ttl_s=ttl_s, run_id=run_id).hold(wait=wait) as lease:
                self._lease = lease
                try:
                    yield
                finally:
                    self._lease = None
            return
        with local_lock(self.uri, _local_path(self.uri), run_id=run_id, wait=wait):
            yield


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


