"""The reader: Ray tasks read and hash the shards, several at once; the driver keeps only what is
sequential — numbering rows in canonical order, deciding which are duplicates, grouping the rest
into chunks. Image bytes never pass through the driver: a read task returns each block as a
small metadata table (which the driver takes) and an image table (which stays in the object
store); a chunk names the image blocks and the positions to take from them (feeder.py)."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from enrich.errors import EnrichError
from enrich.feeder import CHUNK_SCHEMA, Chunk
from enrich.positions import Progress
from enrich.prepare import prepare_images
from enrich.skip import SkipIndex
from enrich.source import META_COLUMNS, Shard, read_blocks
from enrich.source.formats import BY_KIND

log = logging.getLogger(__name__)

# Source rows per read block and per feeder chunk (~3 s of a read task's CPU to prepare, for web
# photos). Ray Data costs the driver CPU per block, not per row: at 128 rows these per-block
# costs were 0.39 ms of driver CPU per row, at 512 0.12 ms (benchmarks/driver.py, PERFORMANCE.md).
CHUNK_ROWS = 512
# A short run takes smaller chunks, so that its rows reach the engine and the table in several
# steps rather than one or two at the end (a 1,000-row run: 64-row chunks, not 512).
MIN_CHUNK_ROWS = 64
CHUNKS_PER_SHORT_RUN = 8


def chunk_rows_for(rows: int, batch_rows: int = CHUNK_ROWS) -> int:
    """Source rows per chunk for a run of ``rows`` rows whose engine takes ``batch_rows`` per call:
    about 1/8 of the run, from 64 to 512 rows, and a multiple or a divisor of ``batch_rows`` where
    one fits, so that whole chunks make whole engine batches. Ray Data hands an engine replica
    chunks until they reach its batch size: 352-row chunks made 704-row calls, a 512-row batch
    and a 192-row one, and the first rows came back only after the second (PERFORMANCE.md)."""
    want = min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows // CHUNKS_PER_SHORT_RUN))
    if want >= batch_rows:
        return want // batch_rows * batch_rows
    divisor = next((d for d in range(want, MIN_CHUNK_ROWS - 1, -1) if batch_rows % d == 0), None)
    return divisor or want  # a batch size with no divisor from 64 up: chunks as they come


# Before a shard has been read its size is unknown: a run this short reads one at a time, so
# that `--until 100` on a hub dataset downloads one shard, not one per core.
SMALL_RUN_ROWS = 10_000

# What the source says of each row, as the table's columns: a chunk carries it for all its rows
# (duplicates too) to the committer, which joins it to what the engine says.
SOURCE_COLUMNS: tuple[str, ...] = ("source_index", *META_COLUMNS)


@dataclass(frozen=True)
class ReadJob:
    shards: tuple[Shard, ...]
    block_rows: int
    image_size: int  # the prepare step's square side
    start: int = 0
    only: frozenset[int] | None = None  # retried rows: just these offsets of one shard


def _read_job(job: ReadJob, limit: int | None) -> Iterator[pa.Table]:
    """Ray task body (a streaming generator): metadata, prepared images, metadata, prepared
    images... Each block's images are prepared (decoded, validated, resized) here, where they
    were read: their raw bytes, ~10 times the prepared ones, never enter the object store."""
    for meta, images in read_blocks(list(job.shards), start=job.start, only=job.only,
                                    limit=limit, block_rows=job.block_rows):
        prepared = prepare_images(images, size=job.image_size)
        del images  # not held while the block is handed on (−100 MB peak on 10,000 photos)
        yield meta
        yield prepared


def _ray_get(ref: Any) -> Any:
    """ray.get, with enrich's own errors from a read task (an unreachable source, exit 5)
    raised as themselves rather than wrapped in Ray's task error."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, EnrichError):
            raise exc.cause from None
        raise


@dataclass(frozen=True)
class ReadSettings:
    """How the read tasks run: the prepare step's square side, source rows per chunk, CPUs per
    read task, read tasks at most at once, and the environment they get (remote sources only)."""

    image_size: int
    chunk_rows: int = CHUNK_ROWS
    read_cpus: float = 1.0
    parallel: int = 2
    env: dict[str, str] | None = None


class Reader:
    """Reads the source from the resume position (and the failed rows to retry, first) through
    read tasks, and yields :class:`Chunk` s in order (:meth:`chunks`). Its state is its own:
    what others need of a chunk travels in the chunk, and whether the source ended is what
    :meth:`chunks` returns."""

    def __init__(self, shards: list[Shard], start: Progress, until: int, skip: SkipIndex,
                 retry_rows: pa.Table, settings: ReadSettings) -> None:
        self.shards = shards
        self.image_size = settings.image_size
        self.start = start
        self.until = until
        self.skip = skip
        self.retry_rows = retry_rows
        self.parallel = max(1, settings.parallel)
        self.chunk_rows = settings.chunk_rows
        self.exhausted = False
        self.rows_read = 0
        self.jobs_read = 0
        self._launch = self._ray_launcher(settings.read_cpus, settings.env or {})

    @staticmethod
    def _ray_launcher(read_cpus: float, env: dict[str, str]) -> Callable[[ReadJob, int | None], Any]:
        import ray

        task = ray.remote(_read_job).options(num_returns="streaming", num_cpus=read_cpus,
                                             runtime_env={"env_vars": env} if env else None)
        return lambda job, limit: task.remote(job, limit)

    # ---- read jobs, run `width()` at a time, their blocks handed on in job order -----------
    def _blocks(self, jobs: Iterator[ReadJob], width: Callable[[], int],
                limit: int | None) -> Iterator[tuple[pa.Table, Any]]:
        window: deque[Any] = deque()

        def fill() -> None:
            while len(window) < width():
                job = next(jobs, None)
                if job is None:
                    return
                window.append(self._launch(job, limit))

        # If the caller stops early (--until reached, or an error), the read tasks still in the
        # window are left to end on their own (each reads at most `limit` rows) and their blocks
        # are freed with their refs. Never ray.cancel() them: in Ray 2.60 cancelling a
        # streaming-generator task while it completes kills the driver ("Check failed: ... Tried
        # to complete task that was not pending", exit 1) — reproduced by cancelling short
        # generators in a loop.
        fill()
        while window:
            gen = window[0]
            for meta_ref in gen:
                meta = _ray_get(meta_ref)  # a failed task: its error is in this ref
                images_ref = next(gen)
                self.rows_read += meta.num_rows
                yield meta, images_ref
            window.popleft()
            self.jobs_read += 1
            fill()

    def _jobs(self, shards: list[Shard], start: int) -> Iterator[ReadJob]:
        i = 0
        while i < len(shards):
            take = BY_KIND[shards[i].kind].files_per_task(CHUNK_ROWS)
            yield ReadJob(tuple(shards[i:i + take]), self.chunk_rows, self.image_size,
                          start=start if i == 0 else 0)
            i += take

    def _main_width(self) -> int:
        """Read tasks to keep running: enough for the rows still wanted, at most one per CPU."""
        remaining = self.until - self.start.next_index - self.rows_read
        if self.jobs_read == 0:
            return self.parallel if remaining >= SMALL_RUN_ROWS else 1
        per_job = max(1.0, self.rows_read / self.jobs_read)
        return max(1, min(self.parallel, math.ceil(remaining / per_job) + 1))

    # ---- the two streams ---------------------------------------------------------------------
    def _retry_blocks(self) -> Iterator[tuple[np.ndarray, pa.Table, Any]]:
        if self.retry_rows.num_rows == 0:
            return
        by_name = {s.name: s for s in self.shards}
        wanted: dict[str, dict[int, int]] = {}
        for row in self.retry_rows.to_pylist():
            wanted.setdefault(row["source_shard"], {})[row["source_offset"]] = row["source_index"]
        for name in sorted(wanted):
            if name not in by_name:
                log.warning("shard %s of %d failed rows is gone from the source", name,
                            len(wanted[name]))
        jobs = iter([ReadJob((by_name[n],), self.chunk_rows, self.image_size,
                             only=frozenset(wanted[n]))
                     for n in sorted(wanted) if n in by_name])
        for meta, images_ref in self._blocks(jobs, lambda: self.parallel, None):
            names = meta.column("source_shard").to_pylist()
            offsets = meta.column("source_offset").to_pylist()
            index = np.array([wanted[n][o] for n, o in zip(names, offsets, strict=True)], np.int64)
            yield index, meta, images_ref

    def _main_blocks(self) -> Iterator[tuple[np.ndarray, pa.Table, Any]]:
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
        # The read tasks read one row past --until: a source that ends exactly at --until is
        # then known to be exhausted (and the next, larger --until is answered without Ray).
        # Once --until is reached no further file is opened to find out: the next run will.
        full = more_files = False

        def jobs() -> Iterator[ReadJob]:
            nonlocal more_files
            for job in self._jobs(self.shards[first:], offset):
                if full:
                    more_files = True
                    return
                yield job

        self.rows_read = self.jobs_read = 0  # _main_width's estimate: the main stream's reads only
        for meta, images_ref in self._blocks(jobs(), self._main_width, self.until - index + 1):
            if full:  # a row past --until: the source goes on
                return
            take = min(meta.num_rows, self.until - index)
            yield np.arange(index, index + take, dtype=np.int64), meta.slice(0, take), images_ref
            index += take
            if take < meta.num_rows:
                return
            full = index >= self.until
        self.exhausted = not more_files

    # ---- decisions ---------------------------------------------------------------------------
    def chunks(self) -> Generator[Chunk, None, bool]:
        """Chunks of ``chunk_rows`` source rows (fewer at the end of a stream; a block may be
        split between two chunks), retried rows first, then the main stream. Returns (as the
        generator's value) whether the source ended before --until."""
        for kind, blocks in (("retry", self._retry_blocks()), ("main", self._main_blocks())):
            chunk = Chunk(kind)
            for index, meta, images_ref in blocks:
                done = 0
                while done < meta.num_rows:
                    take = min(meta.num_rows - done, self.chunk_rows - chunk.source_rows)
                    self._decide(chunk, index[done:done + take], meta.slice(done, take),
                                 images_ref, done)
                    done += take
                    if chunk.source_rows == self.chunk_rows:
                        yield chunk
                        chunk = Chunk(kind)
            if chunk.source_rows:
                yield chunk
        return self.exhausted

    def _decide(self, chunk: Chunk, index: np.ndarray, meta: pa.Table, images_ref: Any,
                base: int) -> None:
        """Number, judge and add to ``chunk`` the rows of ``meta``, which start at row ``base``
        of the image block ``images_ref``."""
        n = meta.num_rows
        hashes = meta.column("image_hash")
        has_hash = hashes.is_valid().to_numpy(zero_copy_only=False)
        is_error = meta.column("error").is_valid().to_numpy(zero_copy_only=False)
        keys = SkipIndex.keys_from_arrow(meta.column("hash16"))
        # Seen before (in the table or earlier in the stream), or earlier in this block.
        first = np.zeros(n, dtype=bool)
        first[np.unique(keys, return_index=True)[1]] = True
        dup = has_hash & ~is_error & (self.skip.contains_keys(keys) | ~first)
        send = ~dup
        self.skip.add_keys(keys[send & has_hash])
        hash_list = hashes.to_pylist()
        chunk.meta.append(meta.select(SOURCE_COLUMNS[1:]).add_column(
            0, "source_index", pa.array(index, pa.int64())))
        for i in np.flatnonzero(dup).tolist():
            chunk.dups.append({"source_index": int(index[i]), "status": "duplicate",
                               "image_hash": hash_list[i],
                               "error": "duplicate image: the same bytes are captioned under this "
                                        "caption config (join on image_hash)"})
        position = np.flatnonzero(send).astype(np.int32)
        if len(position):
            errors = meta.column("error").take(pa.array(position))
            status = pa.array(np.where(is_error[position], "rejected", "pending").tolist(), pa.string())
            chunk.rows.append(pa.table({
                "part": pa.array(np.full(len(position), len(chunk.parts), np.int32)),
                "position": pa.array(position + np.int32(base)),
                "source_index": pa.array(index[position]),
                "status": status, "error": errors}, schema=CHUNK_SCHEMA))
            chunk.parts.append(images_ref)
        chunk.source_rows += n

