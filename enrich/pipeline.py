"""The run: source → skip → prepare → engine → sink, as one streaming Ray Data pipeline.

Who does what, and why:

* The **driver** reads shards in canonical order (cheap: untar + sha256), numbers the rows,
  and decides skips, because numbering and first-occurrence are sequential facts. Duplicates
  never leave the driver. Everything else goes out in fixed chunks of source rows.
* A **feeder** actor hands chunk ``j`` to whichever Ray task asks for it; the dataset is
  ``range(chunks) → fetch → prepare → engine``, built once per run, so the engine's replicas
  (and the model) start once however many commits follow. ``preserve_order`` keeps rows in
  source order, so the driver can commit a contiguous prefix with its resume position.
* The driver **commits** every ``commit_every`` rows or ``commit_seconds``; Ray keeps executing
  meanwhile, so the GPUs are not idle during a commit.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from enrich.config import RunConfig, enricher_version, storage_options_from_env
from enrich.engines.base import Engine
from enrich.journal import Journal
from enrich.plan import Plan, make_plan
from enrich.progress import Counts, Reporter
from enrich.sink import CaptionsTable, Progress
from enrich.skip import SkipIndex
from enrich.source import Sample, Shard, iter_shard, list_shards, prefetched

log = logging.getLogger(__name__)

CHUNK_ROWS = 128  # source rows per feeder chunk: one prepare task's worth (~0.7 s of CPU)
MIN_CHUNKS_IN_FLIGHT = 16  # ~2k rows read ahead of the committer on a small machine
# Blocks of chunk ids. Each block is one fetch task; past the end of the source a task returns
# at once, but each still costs Ray ~40 ms, so a --until far beyond the source must not mean
# thousands of them.
MAX_RANGE_BLOCKS = 256
RELEASED = "released"  # feeder answer for a chunk the driver already has

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


@dataclass
class RunResult:
    run_id: str
    counts: Counts
    committed_rows: int
    commits: int
    seconds: float
    engine_starts: int | None
    outcome: str
    plan: Plan


# --------------------------------------------------------------------------------------------
# The driver-side reader: numbering, skipping, chunking.
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Ray side: the feeder actor and the fetch stage.
# --------------------------------------------------------------------------------------------
def _make_feeder_class() -> Any:
    import asyncio

    import ray

    @ray.remote(num_cpus=0, max_concurrency=64)  # type: ignore[call-overload]
    class Feeder:
        """Holds the chunks the driver has read until the fetch stage takes them. A taken chunk
        is kept until the driver has received its rows (``release``): if the node running a
        fetch dies, Ray retries it and the chunk is handed out again instead of being lost."""

        def __init__(self, capacity: int) -> None:
            self.capacity = capacity  # chunks read but not yet received back by the driver
            self.chunks: dict[int, Any] = {}
            self.taken: dict[int, Any] = {}
            self.end: int | None = None
            self.failure: str | None = None
            self.released = -1  # every chunk up to this one is in the driver's hands
            self.cond = asyncio.Condition()

        async def put(self, j: int, ref: list[Any]) -> None:
            async with self.cond:
                # Backpressure on the reader: everything between it and the committer is bounded,
                # so memory stays flat however many rows a run covers.
                await self.cond.wait_for(
                    lambda: len(self.chunks) + len(self.taken) < self.capacity)
                self.chunks[j] = ref[0]
                self.cond.notify_all()

        async def finish(self, end: int, failure: str | None = None) -> None:
            async with self.cond:
                self.end, self.failure = end, failure
                self.cond.notify_all()

        async def release(self, upto: int) -> None:
            async with self.cond:
                self.released = max(self.released, upto)
                for j in [j for j in self.taken if j <= upto]:
                    del self.taken[j]
                self.cond.notify_all()

        async def take(self, j: int) -> list[Any] | str | None:
            async with self.cond:
                if j <= self.released and j not in self.taken:
                    return RELEASED  # a retried fetch asking again for what the driver has
                await self.cond.wait_for(
                    lambda: j in self.chunks or j in self.taken or self.end is not None)
                if j in self.chunks:
                    self.taken[j] = self.chunks.pop(j)
                    self.cond.notify_all()
                if j in self.taken:
                    return [self.taken[j]]
                return self.failure  # None: past the end of the stream

    return Feeder


class FetchChunks:
    """Ray stage: turn chunk ids into the rows the driver read for them."""

    def __init__(self, feeder_name: str) -> None:
        import ray

        # Looked up by name: an actor handle in the constructor arguments would live in the
        # object store, and Ray warns that a restart could then fail.
        self.feeder = ray.get_actor(feeder_name)

    def __call__(self, batch: dict[str, Any]) -> Iterator[pa.Table]:
        import ray

        for j in batch["id"].tolist():
            got: Any = ray.get(self.feeder.take.remote(int(j)))
            if got is None:
                return  # the stream ended before this chunk: nothing more in this block
            if got == RELEASED:
                # A retry of this block (its actor died) re-asks for chunks the driver already
                # received: yield an empty block in their place, so the retried generator's
                # outputs line up with the ones Ray already delivered.
                yield FETCH_SCHEMA.empty_table()
                continue
            if isinstance(got, str):
                raise RuntimeError(got)
            yield ray.get(got[0])


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------
def chunks_in_flight(cfg: RunConfig) -> int:
    """How many chunks may be between the reader and the committer: enough to keep every engine
    replica's queue full (4 batches in flight per replica) plus the prepare stage busy."""
    engine_rows = cfg.replicas * cfg.batch_size * 4
    return MIN_CHUNKS_IN_FLIGHT + math.ceil(engine_rows / CHUNK_ROWS)


def _init_ray(cfg: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Quiet Ray's start-up notice about its default token auth: on a local Ray that this process
    # starts it is expected, and every run would print it.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                  log_to_driver=False, configure_logging=True)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **kwargs)
    else:
        ray.init(num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 2), **kwargs)


def _configure_data_context() -> None:
    import ray.data

    # Ray Data logs every dataset start and finish at INFO and warns that we turned its progress
    # bars off (they would garble our progress line). Set after import: its config resets levels.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # contiguous commits need source order
    ctx.enable_progress_bars = False  # our own progress line; Ray's bars garble it
    ctx.print_on_execution_start = False
    # Ray Data's issue detectors print multi-paragraph memory advice into the run's output every
    # 30 s (for the engine's CPU stages, whose ~0.5 GB per actor is expected): off.
    ctx.issue_detectors_config.detectors = []


class _Committer:
    """Turns engine output into table rows and commits contiguous prefixes."""

    def __init__(self, cfg: RunConfig, table: CaptionsTable, plan: Plan, reader: Reader,
                 run_id: str, counts: Counts) -> None:
        self.cfg, self.table, self.plan, self.reader = cfg, table, plan, reader
        self.run_id, self.counts = run_id, counts
        self.next_index = plan.progress.next_index
        self.buffer: list[dict[str, Any]] = []
        self.retry_buffer: list[dict[str, Any]] = []
        self.held: deque[dict[str, Any]] = deque()
        self.bad_outcome: dict[str, tuple[str, str | None]] = {}
        self.last_commit = time.monotonic()
        self.commits = 0
        self.committed = 0
        self.model = cfg.caption.model
        self.caption_config = cfg.caption.id
        self.version = enricher_version()

    def hold(self, dups: list[dict[str, Any]]) -> None:
        self.held.extend(dups)

    def _full_row(self, r: dict[str, Any]) -> dict[str, Any]:
        meta = self.reader.meta.pop(r["source_index"])
        if r["status"] == "duplicate" and meta.image_hash in self.bad_outcome:
            # Same bytes as an earlier row of this run that was rejected or failed: same outcome.
            r["status"], r["error"] = self.bad_outcome[meta.image_hash]
        elif r["status"] in ("rejected", "failed") and meta.image_hash:
            self.bad_outcome[meta.image_hash] = (r["status"], r.get("error"))
        self.counts.add(r["status"])
        return {
            "source_index": r["source_index"], "source": self.plan.source,
            "source_shard": meta.shard, "source_key": meta.key, "source_offset": meta.offset,
            "image_hash": meta.image_hash, "status": r["status"],
            "caption": r.get("caption") if r["status"] == "captioned" else None,
            "error": r.get("error"), "model": self.model, "caption_config": self.caption_config,
            "image_width": r.get("image_width"), "image_height": r.get("image_height"),
            "num_generated_tokens": r.get("num_generated_tokens"),
            "caption_truncated": r.get("caption_truncated"), "run_id": self.run_id,
            "enricher_version": self.version, "created_at": datetime.now(timezone.utc),
        }

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
        self.table.replace_failed(pa.Table.from_pylist(rows), source=self.plan.source,
                                  caption_config=self.caption_config, metadata=self._meta())
        self.retry_buffer.clear()
        self.commits += 1

    def _meta(self) -> dict[str, str]:
        return {"enrich.run_id": self.run_id, "enrich.caption_config": self.caption_config,
                "enrich.caption_config_json": self.cfg.caption.to_json(),
                "enrich.source": self.plan.source, "enrich.enricher_version": self.version}

    def maybe_commit(self, *, final: bool = False) -> None:
        """Commit full slices of ``commit_every`` rows; the rest when ``commit_seconds`` have
        passed or at the end (``final``). Until the end, the newest row stays buffered so the
        final commit always has a row to carry "source exhausted" in its metadata."""
        if final:
            self._release_held(None)
            self._flush_retry()
        keep = 0 if final else 1
        while len(self.buffer) - keep >= self.cfg.commit_every:
            self._commit(self.cfg.commit_every, final=final)
        late = time.monotonic() - self.last_commit >= self.cfg.commit_seconds
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
        at_end = final and not self.buffer and self.reader.exhausted
        progress = Progress(next_index=last + 1, next_shard=rows[-1]["source_shard"],
                            next_offset=rows[-1]["source_offset"] + 1, exhausted=at_end)
        self.table.append(pa.Table.from_pylist(rows), app_id=self.plan.app_id,
                          expect_from=self.next_index, progress=progress, metadata=self._meta())
        self.next_index = last + 1
        self.committed += len(rows)
        self.commits += 1
        self.last_commit = time.monotonic()


def _drain(pending: deque[tuple[str, list[dict[str, Any]]]], lock: threading.Lock,
           committer: _Committer) -> None:
    """Move duplicates the reader decided into the committer: retry ones replace failed rows,
    main ones wait in order for the engine rows around them."""
    with lock:
        while pending:
            kind, dups = pending.popleft()
            if kind == "retry":
                committer.retry_buffer.extend(dups)
            else:
                committer.hold(dups)


def run(cfg: RunConfig, *, reporter: Reporter | None = None) -> RunResult:
    """Run the enricher to ``cfg.until``. Safe to kill at any moment and run again."""
    started = time.time()
    run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    table = CaptionsTable(cfg.table, storage_options=storage_options_from_env())
    reporter = reporter or Reporter(total=cfg.until)
    counts = Counts()
    plan = make_plan(cfg, table)
    if plan.nothing_to_do:  # answered from the Delta log alone: no source listing, no Ray
        reporter.start(plan)
        return RunResult(run_id, counts, 0, 0, time.time() - started, 0, "nothing to do", plan)
    shards = list_shards(cfg.source, image_column=cfg.image_column)  # a bad source fails here, before anything is written
    from enrich.engines import make_engine

    journal = Journal(cfg, run_id, plan)
    engine = make_engine(cfg, starts_dir=journal.engine_dir)
    _init_ray(cfg)
    engine.check_cluster()  # no GPU for the model: fail now, before anything is written
    with table.lock():
        plan = make_plan(cfg, table)  # again under the lock: another run may have moved it
        journal.plan = plan
        reporter.start(plan)
        if plan.nothing_to_do:
            return RunResult(run_id, counts, 0, 0, time.time() - started, 0, "nothing to do", plan)
        skip = SkipIndex.from_arrow(table.captioned_hashes(plan.caption_config))
        reader = Reader(shards, plan.progress, cfg.until, skip, plan.retry_rows)
        journal.write("running", counts)
        chunks = reader.chunks()
        first = next(chunks, None)
        if first is None:
            result = RunResult(run_id, counts, 0, 0, time.time() - started, 0,
                               "nothing to do (source exhausted)", plan)
            journal.write(result.outcome, counts, result)
            return result
        try:
            result = _execute(cfg, table, plan, engine, reader, first, chunks, run_id, counts,
                              reporter, journal, started)
        except BaseException as exc:
            journal.write(f"failed: {type(exc).__name__}: {exc}", counts)
            raise
        journal.write(result.outcome, counts, result)
        return result


def _execute(cfg: RunConfig, table: CaptionsTable, plan: Plan, engine: Engine, reader: Reader,
             first: tuple[str, pa.Table, list[dict[str, Any]]], chunks: Iterator[Any],
             run_id: str, counts: Counts, reporter: Reporter, journal: Journal,
             started: float) -> RunResult:
    import ray
    import ray.data

    from enrich.prepare import prepare_batch

    _configure_data_context()

    retry_n = plan.failed_to_retry
    n_chunks = math.ceil(retry_n / CHUNK_ROWS) + math.ceil(
        max(0, cfg.until - plan.progress.next_index) / CHUNK_ROWS) + 1
    per_block = max(1, math.ceil(n_chunks / MAX_RANGE_BLOCKS))
    feeder_name = f"enrich-feeder-{run_id}"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The feeder lives on the driver's node: losing another node must not lose its chunks.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    feeder = _make_feeder_class().options(name=feeder_name, scheduling_strategy=here).remote(
        chunks_in_flight(cfg))
    committer = _Committer(cfg, table, plan, reader, run_id, counts)
    retry_indices = set(reader.retry_rows.column("source_index").to_pylist())
    held_lock = threading.Lock()
    pending_dups: deque[tuple[str, list[dict[str, Any]]]] = deque()
    reader_error: list[BaseException] = []

    sent: deque[tuple[int, int]] = deque()  # (chunk id, rows sent to Ray) in order
    received = 0

    def feed() -> None:
        j = 0
        try:
            item: Any = first
            while item is not None:
                kind, rows, dups = item
                with held_lock:
                    pending_dups.append((kind, dups))
                    sent.append((j, rows.num_rows))
                ray.get(feeder.put.remote(j, [ray.put(rows)]))
                j += 1
                item = next(chunks, None)
            ray.get(feeder.finish.remote(j))
        except BaseException as exc:  # noqa: BLE001 - handed to the driver thread below
            reader_error.append(exc)
            ray.get(feeder.finish.remote(j, f"source read failed: {type(exc).__name__}: {exc}"))

    # The chunk numbers, as blocks made here rather than by read tasks: `ray.data.range` runs
    # read tasks of 1 CPU each, which cannot start once the engine's actors hold the CPUs.
    ds: ray.data.Dataset = ray.data.from_items([{"id": j} for j in range(n_chunks)],
                             override_num_blocks=math.ceil(n_chunks / per_block))
    ds = ds.map_batches(FetchChunks, fn_constructor_kwargs={"feeder_name": feeder_name},
                        # waiting on the feeder is all it does: no CPU reserved (on 2 cores a
                        # reserved slot here would starve prepare, FACTS.md)
                        batch_size=None, batch_format="numpy", num_cpus=0,
                        compute=ray.data.ActorPoolStrategy(size=1))
    ds = ds.map_batches(prepare_batch,  # type: ignore[arg-type]
                        fn_kwargs={"size": cfg.image_size}, batch_size=None,
                        batch_format="pyarrow", num_cpus=engine.prepare_cpus())
    ds = engine.apply(ds)

    thread = threading.Thread(target=feed, name="enrich-reader", daemon=True)
    thread.start()
    try:
        batch: pa.Table
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None,  # type: ignore[assignment]
                                     prefetch_batches=2):
            _drain(pending_dups, held_lock, committer)
            committer.accept(batch, retry_indices)
            received += batch.num_rows
            done_chunk = None
            with held_lock:
                while sent and sent[0][1] <= received:
                    received -= sent[0][1]
                    done_chunk = sent.popleft()[0]
            if done_chunk is not None:
                feeder.release.remote(done_chunk)
            committer.maybe_commit()
            reporter.update(counts, plan.progress.next_index + counts.total)
        thread.join()
        if reader_error:
            raise reader_error[0]
        _drain(pending_dups, held_lock, committer)
        committer.maybe_commit(final=True)
    finally:
        ray.kill(feeder)
    reporter.update(counts, committer.next_index)
    starts = journal.engine_starts()
    return RunResult(run_id, counts, committer.committed, committer.commits,
                     time.time() - started, starts, "completed", plan)
