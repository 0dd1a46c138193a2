"""One read task's work (reader.py runs it in Ray): a shard's samples from a position, in
canonical order, as blocks of hashed rows. The metadata and the image bytes are separate tables,
so the driver can take the small one and leave the bytes in the object store for the fetch stage.

Nothing is decoded here: one corrupt image must become one rejected row (the prepare stage
judges the bytes), not end the stream."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import IO

import pyarrow as pa

from enrich.retry import read_transient
from enrich.schemas import CAPTIONS
from enrich.skip import PREFIX
from enrich.source.access import read_retries, retried_read, unreadable
from enrich.source.formats import BY_KIND
from enrich.source.naming import Broken, Sample, Shard

log = logging.getLogger(__name__)


def iter_shard(shard: Shard, *, start: int = 0) -> Iterator[Sample]:
    """The samples of one shard from position ``start``. A shard whose content is broken ends with
    one error marker (``Sample.error``) after the samples that could be read; transient read errors
    are retried by reopening and skipping ahead; if they persist, ``OSError`` propagates."""
    done = start
    retries = read_retries(f"reading shard {shard.name}")
    fmt = BY_KIND[shard.kind]
    while True:
        try:
            with shard.open() as fileobj:
                for sample in fmt.samples(fileobj, shard):
                    if sample.offset < done:
                        continue
                    yield sample
                    done = sample.offset + 1
            return
        except Broken as exc:
            if exc.count == 0 and "empty file" in str(exc):
                log.warning("shard %s is empty", shard.name)
                return
            if exc.count >= done:  # not yet reported by the run being resumed
                yield Sample(shard.name, exc.count, "", None, None,
                             error=f"shard error: {shard.name}: {fmt.broken(exc.count)} ({exc})")
            return
        except Exception as exc:
            if not read_transient(exc):
                if isinstance(exc, OSError):  # a file gone since the listing: one line naming it
                    raise _unreadable(shard, exc) from exc
                raise
            retries.wait(exc)


def download(shard: Shard) -> bytes:
    """A remote shard's bytes, whole, under the read retries; a read no retry can fix (no
    credentials, access denied, gone) is a SourceError naming the shard."""

    def once() -> bytes:
        with shard.open() as fh:
            return fh.read()

    return retried_read(f"downloading shard {shard.name}", once, lambda exc: _unreadable(shard, exc))


def _unreadable(shard: Shard, exc: BaseException) -> BaseException:
    return unreadable(f"cannot read shard {shard.name}", exc)


def _bytes_opener(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


# A block's metadata: the table's own columns for what the source says of each row (named and
# typed as schemas/captions.json has them), and two the reader uses on the way.
META_COLUMNS = ("source_shard", "source_offset", "source_key", "image_hash", "source_text")
META_SCHEMA = pa.schema([
    *(CAPTIONS.field(name) for name in META_COLUMNS),
    pa.field("hash16", pa.binary(PREFIX)),  # the hash's first bytes (the skip index's key); zeros if null
    pa.field("error", pa.string()),  # a shard-level error marker
])
IMAGES_SCHEMA = pa.schema([pa.field("image", pa.binary())])
_NO_HASH = bytes(PREFIX)


def _block(samples: list[Sample]) -> tuple[pa.Table, pa.Table]:
    digests = [None if s.image is None else hashlib.sha256(s.image).digest() for s in samples]
    meta = pa.table({
        "source_shard": pa.array([s.shard for s in samples], pa.string()),
        "source_offset": pa.array([s.offset for s in samples], pa.int32()),
        "source_key": pa.array([s.key for s in samples], pa.string()),
        "image_hash": pa.array([d.hex() if d else None for d in digests], pa.string()),
        "source_text": pa.array([s.text for s in samples], pa.string()),
        "hash16": pa.array([d[:PREFIX] if d else _NO_HASH for d in digests], pa.binary(PREFIX)),
        "error": pa.array([s.error for s in samples], pa.string()),
    }, schema=META_SCHEMA)
    return meta, pa.table({"image": pa.array([s.image for s in samples], pa.binary())},
                          schema=IMAGES_SCHEMA)


def read_blocks(shards: list[Shard], *, start: int = 0, only: frozenset[int] | None = None,
                limit: int | None = None, block_rows: int = 128) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The rows of ``shards`` in order (the first from position ``start``; or, for retried rows,
    just the offsets in ``only`` of a single shard), at most ``limit`` of them, as (metadata,
    image bytes) table pairs of up to ``block_rows`` rows.

    A remote shard (object store, hub) is downloaded whole first, with retries: one request
    stream instead of many range reads, and a dropped connection costs one shard's download."""
    wanted = set(only) if only is not None else None
    buf: list[Sample] = []
    count = 0
    for n, shard in enumerate(shards):
        if wanted == set() or (limit is not None and count >= limit):
            break
        if shard.remote:
            shard = dataclasses.replace(shard, open=_bytes_opener(download(shard)))
        first = min(wanted) if wanted else (start if n == 0 else 0)
        for sample in iter_shard(shard, start=first):
            if wanted is not None:
                if sample.offset not in wanted or sample.error:
                    continue
                wanted.discard(sample.offset)
            buf.append(sample)
            count += 1
            if len(buf) == block_rows:
                yield _block(buf)
                buf = []
            if (limit is not None and count >= limit) or wanted == set():
                break
    if buf:
        yield _block(buf)
