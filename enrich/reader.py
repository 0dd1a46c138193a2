"""The driver-side reader: shards in canonical order, rows numbered, skip decisions made
(duplicates never leave the driver), the rest handed out in fixed chunks of source rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from enrich.sink import Progress
from enrich.skip import SkipIndex
from enrich.source import Sample, Shard, iter_shard, prefetched

log = logging.getLogger(__name__)

CHUNK_ROWS = 128  # source rows per feeder chunk: one prepare task's worth (~0.7 s of CPU)

FETCH_SCHEMA = pa.schema([
    pa.field("source_index", pa.int64()),
    pa.field("image", pa.binary()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
])



@dataclass
class RowMeta:
    shard: str
    offset: int
    key: str
    image_hash: str | None


class Reader:
    """Reads the source from the resume position (and the failed rows to retry, first), and
    yields chunks: (rows to send as an Arrow table, duplicates held back in the driver)."""

    def __init__(self, shards: list[Shard], start: Progress, until: int, skip: SkipIndex,
                 retry_rows: pa.Table) -> None:
        self.shards = shards
        self.start = start
        self.until = until
        self.skip = skip
        self.retry_rows = retry_rows
        self.meta: dict[int, RowMeta] = {}
        self.exhausted = False

    def _retry_samples(self) -> Iterator[tuple[int, Sample]]:
        if self.retry_rows.num_rows == 0:
            return
        by_name = {s.name: s for s in self.shards}
        wanted: dict[str, dict[int, int]] = {}
        for row in self.retry_rows.to_pylist():
            wanted.setdefault(row["source_shard"], {})[row["source_offset"]] = row["source_index"]
        for name in sorted(wanted):
            offsets = wanted[name]
            shard = by_name.get(name)
            if shard is None:
                log.warning("shard %s of %d failed rows is gone from the source", name, len(offsets))
                continue
            for sample in iter_shard(shard, start=min(offsets)):
                if sample.offset in offsets and not sample.error:
                    yield offsets.pop(sample.offset), sample
                if not offsets:
                    break

    def _main_samples(self) -> Iterator[tuple[int, Sample]]:
        index = self.start.next_index
        if index >= self.until:
            return
        names = [s.name for s in self.shards]
        first, offset = 0, 0
        if self.start.next_shard:
            if self.start.next_shard in names:
                first, offset = names.index(self.start.next_shard), self.start.next_offset
            else:  # the shard we stopped in vanished: continue with the next name after it
                first = sum(1 for n in names if n < self.start.next_shard)
        for shard in prefetched(self.shards[first:]):
            for sample in iter_shard(shard, start=offset):
                yield index, sample
                index += 1
                if index >= self.until:
                    return
            offset = 0
        self.exhausted = True

    def chunks(self) -> Iterator[tuple[str, pa.Table, list[dict[str, Any]]]]:
        """Yields (kind, rows to send, duplicate rows) with kind ``retry`` then ``main``."""
        for kind, samples in (("retry", self._retry_samples()), ("main", self._main_samples())):
            batch: list[tuple[int, Sample]] = []
            for item in samples:
                batch.append(item)
                if len(batch) == CHUNK_ROWS:
                    yield (kind, *self._chunk(batch))
                    batch = []
            if batch:
                yield (kind, *self._chunk(batch))

    def _chunk(self, batch: list[tuple[int, Sample]]) -> tuple[pa.Table, list[dict[str, Any]]]:
        hashes = [s.image_hash for _, s in batch]
        known = self.skip.contains_many([h or "" for h in hashes])
        send_idx: list[int] = []
        send_img: list[bytes | None] = []
        send_status: list[str] = []
        send_err: list[str | None] = []
        dups: list[dict[str, Any]] = []
        in_chunk: set[str] = set()  # the bulk lookup above cannot see this chunk's own repeats
        for (index, sample), h, seen in zip(batch, hashes, known, strict=False):
            self.meta[index] = RowMeta(sample.shard, sample.offset, sample.key, h)
            if sample.error:
                send_idx.append(index)
                send_img.append(None)
                send_status.append("rejected")
                send_err.append(sample.error)
            elif h is not None and (seen or h in in_chunk):
                dups.append({"source_index": index, "status": "duplicate", "image_hash": h,
                             "error": "duplicate image: the same bytes are captioned under this "
                                      "caption config (join on image_hash)"})
            else:
                if h is not None:
                    self.skip.add(h)
                    in_chunk.add(h)
                send_idx.append(index)
                send_img.append(sample.image)
                send_status.append("pending")
                send_err.append(None)
        table = pa.table({"source_index": pa.array(send_idx, pa.int64()),
                          "image": pa.array(send_img, pa.binary()),
                          "status": pa.array(send_status, pa.string()),
                          "error": pa.array(send_err, pa.string())}, schema=FETCH_SCHEMA)
        return table, dups


