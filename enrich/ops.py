"""Operating the table, as a library: where it stands (``status_info``), DuckDB SQL over it
(``query``), compaction under the run lock (``compact_table``). The commands that print them
are in ops_cli.py, the gallery page in gallery.py.

Each reads the table through ``CaptionsTable`` (to_pyarrow_dataset, never to_pyarrow_table, which
makes the process abort at exit with pyarrow 26) and the run journals; none of them changes a row.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pyarrow as pa

from enrich.errors import RunLockedError, TableError, UsageError
from enrich.journal import Outcome, read_journals, shown_outcome
from enrich.settings import storage_options_from_env
from enrich.sink import CaptionsTable


def open_table(uri: str, checkpoint_dir: str) -> CaptionsTable:
    table = CaptionsTable(uri, storage_options=storage_options_from_env())
    if not table.exists:
        active = [j for j in read_journals(checkpoint_dir, uri)
                  if shown_outcome(j) == Outcome.RUNNING]
        if active:  # a first run on its way: the table appears with its first commit
            j = active[-1]
            raise TableError(f"--table {uri!r}: no captions table there yet: run {j['run_id']} "
                             f"(started {ts(j.get('started_at'))} UTC) is running and has not "
                             "committed its first rows; try again in a minute")
        raise TableError(f"--table {uri!r}: no captions table there yet (run enrich first)")
    return table


def connect(table: CaptionsTable) -> Any:
    import duckdb

    con = duckdb.connect()
    # delta_scan would download DuckDB's delta extension at run time (fails offline); a pyarrow
    # dataset registered as a view reads the same files with the Delta log's file list.
    con.register("captions", table.dataset())
    return con


def arrow(relation: Any) -> pa.Table:
    """DuckDB 2.x returns a RecordBatchReader from .arrow(); 1.x returned a Table."""
    out = relation.arrow()
    return out.read_all() if hasattr(out, "read_all") else out


def ts(t: float | None) -> str | None:
    return None if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def query(table: CaptionsTable, sql: str) -> pa.Table | None:
    """DuckDB SQL over the table, visible as ``captions``; None for a statement without rows.
    A bad query is a usage error, in DuckDB's first line."""
    import duckdb

    con = connect(table)
    try:
        result = con.sql(sql)
    except duckdb.Error as exc:
        raise UsageError(f"sql: {str(exc).splitlines()[0]}") from None
    return None if result is None else arrow(result)


def status_info(table_uri: str, checkpoint_dir: str = "./checkpoints") -> dict[str, Any]:
    """Where the table stands, as data: what ``enrich status --format json`` prints."""
    table = open_table(table_uri, checkpoint_dir)
    con = connect(table)
    by = con.sql("SELECT source, caption_config, any_value(model) AS model, status, count(*) AS rows "
                 "FROM captions GROUP BY ALL ORDER BY source, caption_config, status")
    by = arrow(by)
    positions = [dataclasses.asdict(st) for st in table.streams()]
    runs = []
    for j in read_journals(checkpoint_dir, table_uri)[-10:]:
        runs.append({"run_id": j["run_id"], "start": ts(j.get("started_at")),
                     "end": ts(j.get("ended_at")), "rows": j.get("rows"),
                     "rows_per_s": round(j.get("rows_per_s") or 0, 1), "outcome": shown_outcome(j),
                     **({"error": j["error"]} if j.get("error") else {})})
    version, files = table.size()
    return {"table": table_uri, "version": version, "files": files,
            "rows": by.to_pylist(), "resume_positions": positions, "recent_runs": runs}


def compact_table(table: CaptionsTable, *, retention_hours: int, lock_ttl: float,
                  wait_s: float = 0.0) -> dict[str, Any]:
    """Compact and vacuum under the table's run lock, waiting up to ``wait_s`` for a running
    enricher to finish (RunLockedError after that)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with table.lock(ttl_s=lock_ttl, run_id="compact"):
                return table.compact(retention_hours=retention_hours)
        except RunLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
