"""What a source is called and what it holds: shards, samples, and the source's identity (a hub
dataset id or its ``hf://datasets/`` spelling, ``--subset``/``--split``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt",)
TEXT_FIELDS = ("caption", "text", "txt")  # a sample's .json fields, and parquet column names


@dataclass(frozen=True)
class Shard:
    name: str  # the shard's file name, the table's source_shard
    url: str  # what to open
    open: Callable[[], IO[bytes]]
    remote: bool = False  # on an object store or the hub: a read task downloads it whole
    kind: str = "tar"  # "tar" (webdataset), "parquet" (a file of rows) or "image" (one image file)
    column: str | None = None  # parquet: the image column
    text_column: str | None = None  # parquet: the text column (source_text), if any
    text: str | None = None  # an image folder's file: its text from metadata.jsonl, if any


@dataclass(frozen=True)
class Sample:
    """One webdataset sample, raw. ``error`` is set for a shard-level error marker."""

    shard: str
    offset: int
    key: str
    image: bytes | None
    image_ext: str | None
    error: str | None = None
    text: str | None = None  # the source's own text for the image (source_text)

    @property
    def image_hash(self) -> str | None:
        return None if self.image is None else hashlib.sha256(self.image).hexdigest()


def looks_like_path(source: str) -> bool:
    """A local path as typed: ``./``, ``../``, ``/``, ``~``, or a data file's extension. Such a
    source is never taken for a hub dataset id, so a typo is answered at once."""
    if "://" in source:
        return False
    bare = source.rstrip("/\\")
    return (source.startswith(("./", "../", "/", "~", ".\\", "..\\")) or bare in (".", "..")
            or source.endswith(("/", "\\"))
            or bare.lower().endswith(tuple("." + e for e in ("tar", "parquet", *IMAGE_EXTS))))


def is_hub_id(source: str) -> bool:
    return (
        "://" not in source
        and source.count("/") == 1
        and not looks_like_path(source)
        and not os.path.exists(source)
        and not is_glob(source)
    )


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


HUB_PREFIX = "hf://datasets/"


def source_spellings(source: str) -> list[str]:
    """The ways of writing this source that name the same dataset, its canonical one first.

    A hub dataset is ``ORG/NAME`` whether given so or as ``hf://datasets/ORG/NAME[/]``. The
    table keys a stream by the source string (``source`` column, app id), so a table must keep
    the spelling it started with: the planner takes the first spelling the table already has
    progress under, and the canonical one for a new stream."""
    if source.startswith(HUB_PREFIX):
        rest = source[len(HUB_PREFIX):].strip("/")
        if rest.count("/") == 1 and not any(ch in rest for ch in "*?[@"):
            return list(dict.fromkeys([rest, source, HUB_PREFIX + rest, HUB_PREFIX + rest + "/"]))
        return [source]
    if is_hub_id(source):
        return [source, HUB_PREFIX + source, HUB_PREFIX + source + "/"]
    return [source]


def is_hub_dataset(source: str) -> bool:
    """``ORG/NAME`` or ``hf://datasets/ORG/NAME``: a whole dataset on the hub (not a path in it)."""
    return len(source_spellings(source)) > 1


def stream_selector(subset: str | None, split: str | None) -> str:
    """What ``--subset``/``--split`` add to a hub source's identity in the table (nothing when
    neither is given: tables that predate the flags keep their stream)."""
    parts = [f"{k}={v}" for k, v in (("subset", subset), ("split", split)) if v]
    return "?" + "&".join(parts) if parts else ""


def split_stream(stream: str) -> tuple[str, str | None, str | None]:
    """A table's ``source`` value back into (source, subset, split): the inverse of appending
    :func:`stream_selector`."""
    base, sep, query = stream.partition("?")
    if not sep or not is_hub_dataset(base):
        return stream, None, None
    got = dict(p.partition("=")[::2] for p in query.split("&"))
    return base, got.get("subset") or None, got.get("split") or None


class Broken(Exception):
    """A shard's content broke after ``count`` complete samples (a format's reader raises it)."""

    def __init__(self, cause: BaseException, count: int) -> None:
        super().__init__(str(cause))
        self.count = count


def text_field(doc: object) -> str | None:
    """The first of TEXT_FIELDS that a JSON object holds as a string."""
    if not isinstance(doc, dict):
        return None
    return next((doc[f] for f in TEXT_FIELDS if isinstance(doc.get(f), str)), None)
