"""Source stage: list a source's shards and stream their samples as raw bytes, in canonical order.

Canonical order: shards sorted by name, samples in file order (a webdataset sample is the run of
consecutive tar members sharing a key). Nothing is decoded here: with decoding on, one corrupt
JPEG ends a ``datasets`` iterator and loses every later row, so the reader hands out bytes and
the prepare stage judges them.

- ``naming``: shards, samples and a source's identity (hub ids, ``--subset``/``--split``);
- ``listing`` (+ ``hub``): a local folder, file or glob, any fsspec URL, a hub dataset, ``sample``;
- ``formats``: the registry of ``webdataset``, ``parquet`` and ``imagefolder``, one module each;
- ``access``: opening files and the retries of remote reads (the policy is ``enrich.retry``);
- ``read``: one read task's work, a shard's rows in hashed blocks.
"""

from enrich.source.hub import connect_error
from enrich.source.listing import list_shards
from enrich.source.naming import (
    IMAGE_EXTS,
    Sample,
    Shard,
    is_hub_dataset,
    looks_like_path,
    source_spellings,
    split_stream,
    stream_selector,
)
from enrich.source.read import IMAGES_SCHEMA, META_COLUMNS, META_SCHEMA, download, iter_shard, read_blocks

__all__ = [
    "IMAGES_SCHEMA", "IMAGE_EXTS", "META_COLUMNS", "META_SCHEMA", "Sample", "Shard", "connect_error", "download",
    "is_hub_dataset", "iter_shard", "list_shards", "looks_like_path", "read_blocks",
    "source_spellings", "split_stream", "stream_selector",
]
