"""The hand-off between the driver's reader and Ray: the :class:`Chunk` the reader makes, the
feeder actor that holds the chunks the driver read until the fetch stage takes them (bounded: memory stays flat), the fetch stage
itself (a chunk's rows joined with their prepared images: the engine's input), and
:class:`Handoff`, the one owner of the feed thread and the ledger of chunks sent."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa

from enrich import retry
from enrich.prepare import ENGINE_INPUT_SCHEMA, PREPARED_SCHEMA, engine_rows

# Blocks of chunk ids. Each block is one fetch task; past the end of the source a task returns
# at once, but each still costs Ray ~40 ms, so a --until far beyond the source must not mean
# thousands of them.
MAX_RANGE_BLOCKS = 256
RELEASED = "released"  # feeder answer for a chunk the driver already has


# One chunk as the driver hands it out: which image block (``part``) and row in it, and the
# row's number and status. The prepared images stay in the read tasks' blocks until the fetch
# stage joins them to the rows (``assemble``).
CHUNK_SCHEMA = pa.schema([
    pa.field("part", pa.int32()),
    pa.field("position", pa.int32()),
    pa.field("source_index", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
])


@dataclass
class Chunk:
    """Source rows the reader decided, in order, as they go to Ray: the rows to caption
    (``rows``, positions in the image blocks ``parts``), the duplicates it decided itself and
    every row's source metadata."""

    kind: str  # "retry" (failed rows read again) or "main"
    parts: list[Any] = field(default_factory=list)  # ObjectRefs of image blocks
    rows: list[pa.Table] = field(default_factory=list)  # CHUNK_SCHEMA pieces
    dups: list[dict[str, Any]] = field(default_factory=list)  # held in the driver
    meta: list[pa.Table] = field(default_factory=list)  # reader.SOURCE_COLUMNS of every row
    source_rows: int = 0

    def table(self) -> pa.Table:
        return pa.concat_tables(self.rows) if self.rows else CHUNK_SCHEMA.empty_table()


def assemble(parts: list[pa.Table], rows: pa.Table) -> pa.Table:
    """A chunk's rows with their prepared images taken from its blocks: the engine's input."""
    part = rows.column("part").to_numpy()
    position = rows.column("position").to_numpy()
    pieces = [parts[p].take(pa.array(position[part == p])) for p in range(len(parts))]
    prepared = pa.concat_tables(pieces) if pieces else PREPARED_SCHEMA.empty_table()
    return engine_rows(rows, prepared)


def call_feeder(method: Any, *args: Any) -> Any:
    """``ray.get(method.remote(*args))`` on the feeder, under ``retry.ACTOR``: every feeder call
    is safe to repeat, so one Ray says it cannot reach for a moment is tried again."""
    import ray

    return retry.call(lambda: ray.get(method.remote(*args)), what="a call to the feeder actor",
                      policy=retry.ACTOR, transient=retry.actor_transient,
                      give_up=lambda exc, attempts: exc)


def make_feeder_class() -> Any:
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
            self.end: int | None = None  # chunks from here on never come (the source ended or failed)
            self.released = -1  # every chunk up to this one is in the driver's hands
            self.cond = asyncio.Condition()

        async def put(self, j: int, chunk: list[Any]) -> None:
            """``chunk``: [refs of its image blocks, its rows (CHUNK_SCHEMA)]. A repeated
            put of a chunk already handed out changes nothing."""
            async with self.cond:
                if j in self.taken or j <= self.released:
                    return
                # Backpressure on the reader: everything between it and the committer is bounded,
                # so memory stays flat however many rows a run covers.
                await self.cond.wait_for(
                    lambda: len(self.chunks) + len(self.taken) < self.capacity)
                self.chunks[j] = chunk
                self.cond.notify_all()

        async def finish(self, end: int) -> None:
            async with self.cond:
                self.end = end
                self.cond.notify_all()

        async def release(self, upto: int) -> None:
            async with self.cond:
                self.released = max(self.released, upto)
                for j in [j for j in self.taken if j <= upto]:
                    del self.taken[j]
                self.cond.notify_all()

        async def take(self, j: int) -> list[Any] | str | None:
            """[the chunk]; RELEASED; or None past the end of the stream."""
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
                return None

    return Feeder


class FetchChunks:
    """Ray stage: turn chunk ids into the engine's input: the rows the driver read for each chunk
    (numbers, statuses) joined with their prepared images, taken from the read tasks' blocks
    (zero-copy from the object store; the feeder keeps the blocks' refs until the driver has the
    chunk's rows)."""

    def __init__(self, feeder_name: str) -> None:
        import ray

        # Looked up by name: an actor handle in the constructor arguments would live in the
        # object store, and Ray warns that a restart could then fail.
        self.feeder = ray.get_actor(feeder_name)

    def __call__(self, batch: dict[str, Any]) -> Iterator[pa.Table]:
        import ray

        for j in batch["id"].tolist():
            got: Any = call_feeder(self.feeder.take, int(j))
            if got is None:
                # The stream ended before this chunk: the source's end, or a source that failed,
                # whose error the driver raises itself (Handoff.finish) once the rows before it
                # are in (raising here would end the run in Ray Data's traceback of this stage).
                return
            if got == RELEASED:
                # A retry of this block (its actor died) re-asks for chunks the driver already
                # received: yield an empty block in their place, so the retried generator's
                # outputs line up with the ones Ray already delivered.
                yield ENGINE_INPUT_SCHEMA.empty_table()
                continue
            parts, rows = got[0]
            yield assemble(ray.get(parts), rows)


class Decided(NamedTuple):
    """What the driver decided of one chunk's rows, for the committer: the source's columns of
    every row (reader.SOURCE_COLUMNS) and the rows it decided itself (duplicates), which are
    ``retry`` ones (replacing failed rows) or ``main`` ones."""

    kind: str
    meta: dict[int, dict[str, Any]]  # source_index -> the row's source columns
    dups: list[dict[str, Any]]


class Handoff:
    """The hand-off from the reader to Ray and back to the committer, owned in one place: the
    feeder actor (on the driver's node: losing another node must not lose its chunks), the feed
    thread that puts the reader's chunks into it, the ledger of what was sent, and the queue of
    what was decided of each chunk (its rows' metadata and duplicates), filled before the chunk
    goes to Ray so that it is there before any of its rows come back.

    The driver thread calls :meth:`received` for each batch it takes from Ray (a chunk is
    released from the feeder once all its rows are back), :meth:`take_decided` before it hands
    a batch to the committer, and :meth:`finish` at the end (raises the reader's error, if any;
    returns whether the source ended).
    """

    def __init__(self, name: str, chunks_in_flight: int, chunks: Generator[Any, None, bool],
                 flow: Any) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.name = name
        self.feeder = make_feeder_class().options(name=name, scheduling_strategy=here).remote(
            chunks_in_flight)
        self._chunks, self._flow = chunks, flow
        self.first_chunk_at: float | None = None  # when the reader gave its first chunk
        self._lock = threading.Lock()
        self._decided: deque[Decided] = deque()  # in chunk order
        self._exhausted = False  # the source ended before --until (what the reader returned)
        self._sent: deque[tuple[int, int]] = deque()  # (chunk id, rows sent to Ray) in order
        self._received = 0  # rows of the oldest unreleased chunk back so far
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._feed, name="enrich-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _next(self) -> Any:
        """The reader's next chunk; None at the end of the stream (and whether the source ended)."""
        try:
            return next(self._chunks)
        except StopIteration as end:
            self._exhausted = self._flow.exhausted = bool(end.value)
            return None

    def _feed(self) -> None:
        j = 0
        try:
            item = self._next()
            if item is not None:
                self.first_chunk_at = time.time()
            while item is not None:
                rows = item.table()
                # made into rows here, in the feed thread, off the driver thread's path
                meta = {r["source_index"]: r for piece in item.meta for r in piece.to_pylist()}
                with self._lock:
                    self._decided.append(Decided(item.kind, meta, item.dups))
                    self._sent.append((j, rows.num_rows))
                call_feeder(self.feeder.put, j, [item.parts, rows])
                self._flow.read += item.source_rows
                j += 1
                item = self._next()
        except BaseException as exc:  # noqa: BLE001 - raised in the driver thread by finish()
            self._error.append(exc)
        try:
            call_feeder(self.feeder.finish, j)  # the end of the stream, or the chunk that failed
        except BaseException as exc:  # noqa: BLE001 - likewise
            self._error.append(exc)

    def received(self, rows: int) -> None:
        """``rows`` more rows came back from Ray: release the chunks that are now all back."""
        done = None
        with self._lock:
            self._received += rows
            while self._sent and self._sent[0][1] <= self._received:
                self._received -= self._sent[0][1]
                done = self._sent.popleft()[0]
        if done is not None:
            self.feeder.release.remote(done)

    def take_decided(self) -> list[Decided]:
        """What was decided of the chunks sent since the last call, in order."""
        with self._lock:
            out = list(self._decided)
            self._decided.clear()
        return out

    def finish(self) -> bool:
        """After Ray's stream ended: the feed thread is done; its error, if any, is raised.
        Returns whether the source ended before --until."""
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._exhausted

    def close(self) -> None:
        import ray

        ray.kill(self.feeder)
