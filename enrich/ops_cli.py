"""The table commands: ``status``, ``sql``, ``compact`` and ``gallery``: flags, then what
ops.py and gallery.py return, printed."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from enrich.args import Parser, nonneg_float, pos_int
from enrich.errors import UsageError, cannot_write
from enrich.gallery import gallery_page
from enrich.journal import read_journals, write_text_atomic
from enrich.ops import compact_table, open_table, query, status_info
from enrich.schemas import STATUSES
from enrich.settings import resolve_settings

FORMATS = ("table", "csv", "json")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="Delta table path or URI (default: as a run resolves it: "
                   "$ENRICH_TABLE, the config file, ./captions)")
    p.add_argument("--checkpoint-dir", help="where the run journals are (default: as a run "
                   "resolves it: $ENRICH_CHECKPOINT_DIR, the config file, ./checkpoints)")
    p.add_argument("--config", metavar="FILE", help="settings file (default: ./enrich.toml, or "
                   "[tool.enrich] in ./pyproject.toml), as for a run")


def _parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse, then fill the settings a run also has (table, checkpoint folder, lock TTL) by the
    run's own precedence: flags > ENRICH_* > config file > defaults."""
    args = p.parse_args(argv)
    names = [n for n in ("table", "checkpoint_dir", "lock_ttl") if hasattr(args, n)]
    got = resolve_settings(names, {n: getattr(args, n) for n in names}, config_file=args.config)
    for name, value in got.items():
        setattr(args, name, value)
    return args


def _render(table: pa.Table, fmt: str, out: Any) -> None:
    if fmt == "json":
        for row in table.to_pylist():
            out.write(json.dumps(row, default=str) + "\n")
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        out.write(buf.getvalue().decode())
        return
    cols = table.column_names
    rows = [["" if v is None else str(v) for v in r.values()] for r in table.to_pylist()]
    widths = [min(60, max([len(c)] + [len(r[i]) for r in rows])) for i, c in enumerate(cols)]
    def line(vals: list[str]) -> str:
        return "  ".join(v[:w].ljust(w) for v, w in zip(vals, widths, strict=False)).rstrip()
    out.write(line(cols) + "\n" + line(["-" * w for w in widths]) + "\n")
    for r in rows:
        out.write(line(r) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def status(argv: Sequence[str]) -> int:
    p = Parser(prog="enrich status", description="Where the table stands: rows by caption "
                "config and status, resume positions, recent runs, table version and file count.")
    _common(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    args = _parse(p, argv)
    info = status_info(args.table, args.checkpoint_dir)
    if args.format == "json":
        print(json.dumps(info, indent=2, default=str))
        return 0
    out = sys.stdout
    out.write(f"table {args.table}: version {info['version']}, {info['files']} data files\n\n")
    _render(_rows_table(info["rows"]), "table", out)
    out.write("\nresume positions\n")
    _render(_rows_table(info["resume_positions"]), "table", out)
    out.write("\nrecent runs\n")
    _render(_rows_table(info["recent_runs"]), "table", out)
    return 0


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows) if rows else pa.table({"none": pa.array([], pa.string())})


def sql(argv: Sequence[str]) -> int:
    p = Parser(prog="enrich sql", description="Run DuckDB SQL over the table, visible as "
                "`captions` (offline: no DuckDB extension download).")
    p.add_argument("query", help='e.g. "SELECT status, count(*) FROM captions GROUP BY 1"')
    _common(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    args = _parse(p, argv)
    result = query(open_table(args.table, args.checkpoint_dir), args.query)
    if result is not None:
        _render(result, args.format, sys.stdout)
    return 0


def compact(argv: Sequence[str]) -> int:
    p = Parser(prog="enrich compact", description="Compact small files and vacuum old ones, "
                "keeping Delta's retention safeguard. Takes the table's run lock, so it never "
                "races a running enricher.")
    _common(p)
    p.add_argument("--retention-hours", type=pos_int, default=168,
                   help="keep files removed less than this long ago (default 168 = 7 days; "
                   "lower values are refused by Delta's safeguard)")
    p.add_argument("--lock-ttl", type=nonneg_float, metavar="SECONDS",
                   help="object-store tables: the lease's time to live (default $ENRICH_LOCK_TTL, "
                   "the config file, or a run's default)")
    p.add_argument("--wait", type=nonneg_float, default=0.0, metavar="S",
                   help="wait up to S seconds for a running enricher to finish (default: refuse)")
    args = _parse(p, argv)
    done = compact_table(open_table(args.table, args.checkpoint_dir),
                         retention_hours=args.retention_hours, lock_ttl=args.lock_ttl,
                         wait_s=args.wait)
    print(f"enrich compact: {done['files_before']} -> {done['files_after']} data files "
          f"({done['compacted']} compacted into {done['into']}); "
          f"vacuumed {done['vacuumed']} files older than {args.retention_hours} h")
    return 0


def _writable_file(path: str) -> None:
    """Refuse, in one line, an output file that cannot be written (its folder missing or
    read-only)."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a folder; name the page's file, e.g. "
                         f"{os.path.join(path, 'gallery.html')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    why = cannot_write(folder)
    if why:
        raise UsageError(f"--out {path!r}: cannot write in {folder} ({why})")


def gallery(argv: Sequence[str]) -> int:
    p = Parser(prog="enrich gallery", description="Write one self-contained HTML page of sampled "
                "rows (thumbnail, caption, status, error, model, tokens) and a chart of recent "
                "runs' throughput, for a spot-check after a nightly run.")
    _common(p)
    p.add_argument("--out", default="gallery.html", help="output file (default gallery.html)")
    p.add_argument("--sample", type=pos_int, default=24, metavar="K", help="rows to show (default 24)")
    p.add_argument("--status", action="append", choices=STATUSES,
                   help="only rows with this status (repeatable; default all)")
    p.add_argument("--max-shards", type=pos_int, default=2,
                   help="read thumbnails from at most this many shards (a hub shard is ~2,600 "
                   "images; default 2)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = _parse(p, argv)
    _writable_file(args.out)  # before the table is read: a bad --out is answered at once
    page, rows, n_thumbs, unread = gallery_page(
        open_table(args.table, args.checkpoint_dir), read_journals(args.checkpoint_dir, args.table),
        sample=args.sample, statuses=args.status,
        max_shards=args.max_shards, seed=args.seed)
    write_text_atomic(args.out, page)
    why = ""
    if unread:  # say why rows have no thumbnail: the source they came from cannot be read now
        (source, reason), = list(unread.items())[:1]
        more = f" (and {len(unread) - 1} other source(s))" if len(unread) > 1 else ""
        why = f"; no thumbnails from {source!r}{more}: {reason}"
    print(f"enrich gallery: {len(rows)} rows ({n_thumbs} thumbnails{why}) -> {args.out}")
    return 0


COMMANDS = {"status": status, "sql": sql, "compact": compact, "gallery": gallery}


def main(command: str, argv: Sequence[str]) -> int:
    return COMMANDS[command](argv)
