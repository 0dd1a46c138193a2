"""Operating the table: ``status``, ``sql``, ``compact`` and ``gallery``.

Each reads the table through ``CaptionsTable`` (to_pyarrow_dataset, never to_pyarrow_table, which
makes the process abort at exit with pyarrow 26) and the run journals; none of them changes a row.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from enrich.args import Parser, nonneg_float, pos_int
from enrich.config import resolve_settings, storage_options_from_env
from enrich.errors import EnrichError, RunLockedError, TableError, UsageError, cannot_write, one_line
from enrich.journal import Outcome, read_journals, shown_outcome, write_text_atomic
from enrich.schemas import STATUSES
from enrich.sink import CaptionsTable

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


def _open(uri: str, checkpoint_dir: str) -> CaptionsTable:
    table = CaptionsTable(uri, storage_options=storage_options_from_env())
    if not table.exists:
        active = [j for j in read_journals(checkpoint_dir, uri)
                  if shown_outcome(j) == Outcome.RUNNING]
        if active:  # a first run on its way: the table appears with its first commit
            j = active[-1]
            raise TableError(f"--table {uri!r}: no captions table there yet: run {j['run_id']} "
                             f"(started {_ts(j.get('started_at'))} UTC) is running and has not "
                             "committed its first rows; try again in a minute")
        raise TableError(f"--table {uri!r}: no captions table there yet (run enrich first)")
    return table


def _duckdb(table: CaptionsTable) -> Any:
    import duckdb

    con = duckdb.connect()
    # delta_scan would download DuckDB's delta extension at run time (fails offline); a pyarrow
    # dataset registered as a view reads the same files with the Delta log's file list.
    con.register("captions", table.dataset())
    return con


def _arrow(relation: Any) -> pa.Table:
    """DuckDB 2.x returns a RecordBatchReader from .arrow(); 1.x returned a Table."""
    out = relation.arrow()
    return out.read_all() if hasattr(out, "read_all") else out


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


# -- status ------------------------------------------------------------------------------------
def status_info(table_uri: str, checkpoint_dir: str = "./checkpoints") -> dict[str, Any]:
    """Where the table stands, as data: what ``enrich status --format json`` prints."""
    table = _open(table_uri, checkpoint_dir)
    con = _duckdb(table)
    by = con.sql("SELECT source, caption_config, any_value(model) AS model, status, count(*) AS rows "
                 "FROM captions GROUP BY ALL ORDER BY source, caption_config, status")
    by = _arrow(by)
    positions = [dataclasses.asdict(st) for st in table.streams()]
    runs = []
    for j in read_journals(checkpoint_dir, table_uri)[-10:]:
        runs.append({"run_id": j["run_id"], "start": _ts(j.get("started_at")),
                     "end": _ts(j.get("ended_at")), "rows": j.get("rows"),
                     "rows_per_s": round(j.get("rows_per_s") or 0, 1), "outcome": shown_outcome(j),
                     **({"error": j["error"]} if j.get("error") else {})})
    version, files = table.size()
    return {"table": table_uri, "version": version, "files": files,
            "rows": by.to_pylist(), "resume_positions": positions, "recent_runs": runs}


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


def _ts(t: float | None) -> str | None:
    return None if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# -- sql ---------------------------------------------------------------------------------------
def sql(argv: Sequence[str]) -> int:
    p = Parser(prog="enrich sql", description="Run DuckDB SQL over the table, visible as "
                "`captions` (offline: no DuckDB extension download).")
    p.add_argument("query", help='e.g. "SELECT status, count(*) FROM captions GROUP BY 1"')
    _common(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    args = _parse(p, argv)
    con = _duckdb(_open(args.table, args.checkpoint_dir))
    import duckdb

    try:
        result = con.sql(args.query)
    except duckdb.Error as exc:
        raise UsageError(f"sql: {str(exc).splitlines()[0]}") from None
    if result is None:
        return 0
    _render(_arrow(result), args.format, sys.stdout)
    return 0


# -- compact -----------------------------------------------------------------------------------
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
    table = _open(args.table, args.checkpoint_dir)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with table.lock(ttl_s=args.lock_ttl, run_id="compact"):
                done = table.compact(retention_hours=args.retention_hours)
            break
        except RunLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
    print(f"enrich compact: {done['files_before']} -> {done['files_after']} data files "
          f"({done['compacted']} compacted into {done['into']}); "
          f"vacuumed {done['vacuumed']} files older than {args.retention_hours} h")
    return 0


# -- gallery -----------------------------------------------------------------------------------
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
    table = _open(args.table, args.checkpoint_dir)
    rows = _sample_rows(table, args.sample, args.status, args.max_shards, args.seed)
    thumbs, unread = _thumbnails(rows)
    runs = read_journals(args.checkpoint_dir, args.table)
    page = render_gallery(rows, thumbs, runs, title=f"enrich gallery: {args.table}")
    write_text_atomic(args.out, page)
    n_thumbs = sum(1 for t in thumbs.values() if t)
    why = ""
    if unread:  # say why rows have no thumbnail: the source they came from cannot be read now
        (source, reason), = list(unread.items())[:1]
        more = f" (and {len(unread) - 1} other source(s))" if len(unread) > 1 else ""
        why = f"; no thumbnails from {source!r}{more}: {reason}"
    print(f"enrich gallery: {len(rows)} rows ({n_thumbs} thumbnails{why}) -> {args.out}")
    return 0


def _sample_rows(table: CaptionsTable, k: int, statuses: list[str] | None, max_shards: int,
                 seed: int) -> list[dict[str, Any]]:
    """Pick few shards first, then rows inside them: re-reading a hub shard costs ~100 MB."""
    import pyarrow.compute as pc

    flt = pc.field("status").isin(statuses) if statuses else None
    keys = table.read(["source", "source_shard"], flt)
    pairs = sorted({(r["source"], r["source_shard"]) for r in keys.to_pylist()})
    rng = random.Random(seed)
    chosen = rng.sample(pairs, min(max_shards, len(pairs)))
    out: list[dict[str, Any]] = []
    for source, shard in chosen:
        f = (pc.field("source") == source) & (pc.field("source_shard") == shard)
        if flt is not None:
            f = f & flt
        out.extend(table.read(None, f).to_pylist())
    rng.shuffle(out)
    return sorted(out[:k], key=lambda r: (r["source"], r["source_index"]))


def _thumbnails(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str, int], str | None],
                                                      dict[str, str]]:
    """Thumbnails of ``rows`` read again from their sources, and for each source that cannot be
    read now (moved, deleted, offline) why not."""
    from PIL import Image

    from enrich.source import iter_shard, list_shards, split_stream

    thumbs: dict[tuple[str, str, int], str | None] = {}
    unread: dict[str, str] = {}
    wanted: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        wanted.setdefault((r["source"], r["source_shard"]), set()).add(r["source_offset"])
    for (source, shard_name), offsets in wanted.items():
        try:
            base, subset, split = split_stream(source)
            shards = {s.name: s for s in list_shards(base, subset=subset, split=split)}
        except EnrichError as exc:
            unread.setdefault(source, one_line(str(exc)))
            continue
        shard = shards.get(shard_name)
        if shard is None:
            unread.setdefault(source, f"its file {shard_name!r} is not there any more")
            continue
        for sample in iter_shard(shard, start=min(offsets)):
            if sample.offset in offsets:
                uri = None
                img: Image.Image
                try:
                    img = Image.open(io.BytesIO(sample.image or b""))
                    img.draft("RGB", (256, 256))
                    img = img.convert("RGB")
                    img.thumbnail((192, 192))
                    buf = io.BytesIO()
                    img.save(buf, "JPEG", quality=80)
                    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
                except Exception:  # noqa: BLE001 - a rejected image has no thumbnail
                    uri = None
                thumbs[(source, shard_name, sample.offset)] = uri
                offsets.discard(sample.offset)
            if not offsets:
                break
    return thumbs, unread


def _chart(runs: list[dict[str, Any]]) -> str:
    runs = [r for r in runs if r.get("rows")][-20:]
    if not runs:
        return "<p class=muted>No finished runs in the journal yet.</p>"
    w, h, pad = 640, 160, 30
    top = max(r.get("rows_per_s") or 0 for r in runs) or 1
    step = (w - 2 * pad) / max(1, len(runs))
    bars = []
    for i, r in enumerate(runs):
        v = r.get("rows_per_s") or 0
        bh = (h - 2 * pad) * v / top
        x = pad + i * step
        bars.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{step * 0.7:.1f}" '
                    f'height="{bh:.1f}" fill="#4a7"><title>{html.escape(r["run_id"])}: '
                    f'{v:.1f} rows/s, {r.get("rows")} rows, {html.escape(str(r.get("outcome")))}'
                    f'</title></rect>')
    return (f'<svg id="throughput" width="{w}" height="{h}" role="img" aria-label="rows per '
            f'second of recent runs"><text x="{pad}" y="18" font-size="12">rows/s of the last '
            f'{len(runs)} runs (max {top:.1f})</text>'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
            + "".join(bars) + "</svg>")


def render_gallery(rows: list[dict[str, Any]], thumbs: dict[tuple[str, str, int], str | None],
                   runs: list[dict[str, Any]], *, title: str) -> str:
    cards = []
    for r in rows:
        uri = thumbs.get((r["source"], r["source_shard"], r["source_offset"]))
        img = (f'<img src="{uri}" alt="{html.escape(r["source_key"])}">' if uri
               else '<div class="noimg">no image</div>')
        tokens = r.get("num_generated_tokens")
        cut = " (cut off)" if r.get("caption_truncated") else ""
        cards.append(
            f'<figure class="card {html.escape(r["status"])}">{img}<figcaption>'
            f'<b class="status">{html.escape(r["status"])}</b> #{r["source_index"]} '
            f'<span class=muted>{html.escape(r["source_shard"])}/{html.escape(r["source_key"])}</span>'
            f'<p class="caption">{html.escape(r.get("caption") or "")}</p>'
            + (f'<p class="error">{html.escape(": ".join(filter(None, (r["error"], r.get("error_detail")))))}'
               '</p>' if r.get("error") else "")
            + f'<p class=muted>{html.escape(r["model"])} · {tokens if tokens is not None else "-"} '
            f'tokens{cut}</p></figcaption></figure>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}}
.card{{margin:0;border:1px solid #ddd;border-radius:6px;padding:.5rem;background:#fafafa}}
.card img{{display:block;max-width:100%;height:auto;margin:auto}}
.noimg{{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}}
.status{{text-transform:uppercase;font-size:.75rem}} .rejected .status,.failed .status{{color:#b33}}
.caption{{margin:.3rem 0}} .error{{color:#b33;font-size:.85rem}} .duplicate .error{{color:#777}}
.muted{{color:#777;font-size:.8rem}}
</style></head><body>
<h1>{html.escape(title)}</h1>
{_chart(runs)}
<h2>{len(rows)} sampled rows</h2>
<div class="grid">{''.join(cards)}</div>
</body></html>
"""


COMMANDS = {"status": status, "sql": sql, "compact": compact, "gallery": gallery}


def main(command: str, argv: Sequence[str]) -> int:
    return COMMANDS[command](argv)
