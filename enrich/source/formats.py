"""The formats enrich reads, one module each, behind one registry. A format is a ``Shard.kind``,
the file endings that make a listing choose it, and ``samples(fileobj, shard)``: the shard's
samples in order, raising ``Broken`` where its content breaks. Adding a format is one module and
one line in FORMATS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from enrich.source import imagefolder, parquet, webdataset
from enrich.source.naming import IMAGE_EXTS, Sample, Shard


@dataclass(frozen=True)
class Format:
    kind: str  # Shard.kind
    exts: tuple[str, ...]  # file endings, lower case
    samples: Callable[[IO[bytes], Shard], Iterator[Sample]]
    unit: str  # what a broken file is counted in: "samples" or "rows"
    hub: str  # the hub's (`datasets`') builder module for datasets of this format


# In order of preference: a folder with tar shards is read as webdataset even if it also holds
# parquet files or loose images.
FORMATS = (
    Format("tar", (".tar",), webdataset.samples, "samples", "webdataset"),
    Format("parquet", (".parquet",), parquet.samples, "rows", "parquet"),
    Format("image", tuple("." + e for e in IMAGE_EXTS), imagefolder.samples, "rows", "imagefolder"),
)
BY_KIND = {f.kind: f for f in FORMATS}
BY_HUB_MODULE = {f.hub: f.kind for f in FORMATS}
NONE_FOUND = "no .tar shards, .parquet files or images found"


def pick_format(paths: list[str]) -> tuple[str, list[str]]:
    """The first format of FORMATS that ``paths`` hold files of, and those files."""
    for fmt in FORMATS:
        chosen = [p for p in paths if p.lower().endswith(fmt.exts)]
        if chosen:
            return fmt.kind, chosen
    return FORMATS[0].kind, []
