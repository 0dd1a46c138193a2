"""webdataset tar shards: a sample is the run of consecutive members sharing a key
(``<key>.jpg`` + ``<key>.txt`` / ``<key>.json``), in tar order. Nothing is decoded here."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import IO

from enrich.source.naming import IMAGE_EXTS, Broken, Sample, Shard, text_field


def samples(fileobj: IO[bytes], shard: Shard) -> Iterator[Sample]:
    """The samples of one tar shard in order; a break in the tar raises :class:`Broken` after the
    samples read before it."""
    return _group(_iter_members(fileobj), shard.name)


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is everything before the first dot of the base name."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, (ext.lower() if dot else "")


def _iter_members(fileobj: IO[bytes]) -> Iterator[tuple[str, str, bytes]]:
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            key, ext = _split_name(member.name)
            yield key, ext, data


def _group(members: Iterator[tuple[str, str, bytes]], shard: str) -> Iterator[Sample]:
    offset = 0
    key: str | None = None
    image: bytes | None = None
    image_ext: str | None = None
    text: str | None = None
    json_text: str | None = None
    try:
        for mkey, ext, data in members:
            new_image_same_key = mkey == key and ext in IMAGE_EXTS and image is not None
            if key is not None and (mkey != key or new_image_same_key):
                # A new key, or the same key again with a second image: a new sample, never a
                # silent overwrite.
                yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))
                offset += 1
                image, image_ext, text, json_text = None, None, None, None
            key = mkey
            if ext in IMAGE_EXTS and image is None:
                image, image_ext = data, ext
            elif ext == "txt" and text is None:
                text = data.decode("utf-8", errors="replace")
            elif ext == "json" and json_text is None:
                json_text = _json_text(data)
    except (tarfile.ReadError, EOFError) as exc:
        # The members read before the break are intact: hand them out, then report the break.
        if key is not None and image is not None:
            yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))
            offset += 1
        raise Broken(exc, offset) from exc
    if key is not None:
        yield Sample(shard, offset, key, image, image_ext, text=_or(text, json_text))


def _or(text: str | None, json_text: str | None) -> str | None:
    return text if text is not None else json_text


def _json_text(data: bytes) -> str | None:
    """The caption (or text) field of a webdataset sample's .json, if it has one."""
    import json

    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return text_field(doc)
