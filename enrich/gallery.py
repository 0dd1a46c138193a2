"""The gallery page: sampled rows (thumbnail read again from the source, caption, status, error,
model, tokens) and a chart of recent runs' throughput, as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import random
from typing import Any

from enrich.errors import EnrichError, one_line
from enrich.sink import CaptionsTable


def gallery_page(table: CaptionsTable, runs: list[dict[str, Any]], *, sample: int,
                 statuses: list[str] | None, max_shards: int,
                 seed: int) -> tuple[str, list[dict[str, Any]], int, dict[str, str]]:
    """(the page, the rows on it, how many have a thumbnail, why a source gave none)."""
    rows = sample_rows(table, sample, statuses, max_shards, seed)
    thumbs, unread = thumbnails(rows)
    page = render_gallery(rows, thumbs, runs, title=f"enrich gallery: {table.uri}")
    return page, rows, sum(1 for t in thumbs.values() if t), unread


def sample_rows(table: CaptionsTable, k: int, statuses: list[str] | None, max_shards: int,
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


def thumbnails(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str, int], str | None],
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
