"""The Ray side of the hand-off: the feeder actor that holds the chunks the driver read until
the fetch stage takes them (bounded: memory stays flat), and the fetch stage itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from enrich.reader import FETCH_SCHEMA, assemble

# Blocks of chunk ids. Each block is one fetch task; past the end of the source a task returns
# at once, but each still costs Ray ~40 ms, so a --until far beyond the source must not mean
# thousands of them.
MAX_RANGE_BLOCKS = 256
RELEASED = "released"  # feeder answer for a chunk the driver already has


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
            self.end: int | None = None
            self.failure: str | None = None
            self.released = -1  # every chunk up to this one is in the driver's hands
            self.cond = asyncio.Condition()

        async def put(self, j: int, chunk: list[Any]) -> None:
            """``chunk``: [refs of its image blocks, its rows (reader.CHUNK_SCHEMA)]."""
            async with self.cond:
                # Backpressure on the reader: everything between it and the committer is bounded,
                # so memory stays flat however many rows a run covers.
                await self.cond.wait_for(
                    lambda: len(self.chunks) + len(self.taken) < self.capacity)
                self.chunks[j] = chunk
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
            parts, rows = got[0]
            yield assemble(ray.get(parts), rows)


