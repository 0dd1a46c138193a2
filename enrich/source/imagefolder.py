"""Image folders: one row per image file, named by its path in the folder; texts (source_text)
from ``metadata.jsonl`` files, as the hub's image-folder convention keeps them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from enrich.source.naming import Sample, Shard, text_field


def samples(fileobj: IO[bytes], shard: Shard) -> Iterator[Sample]:
    """An image folder's file: one row. Undecodable bytes are the prepare stage's to reject."""
    stem, _, ext = shard.name.rpartition(".")
    yield Sample(shard.name, 0, stem, fileobj.read(), ext.lower(), text=shard.text)


def _local_image(meta: str, file_name: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(meta)), file_name))


def folder_texts(files: Iterable[str], *, open_text: Callable[[str], IO[str]] | None = None,
                 image_path: Callable[[str, str], str] = _local_image) -> dict[str, str]:
    """An image folder's texts: ``metadata.jsonl`` files whose lines name a ``file_name``
    (relative to that file's folder) and a caption, text or txt field. Image path (as
    ``image_path(metadata file, file_name)`` gives it) → text; unreadable lines are skipped.
    Local files by default; ``open_text``/``image_path`` for a filesystem of fsspec."""
    opener = open_text or (lambda p: open(p, encoding="utf-8", errors="replace"))
    texts: dict[str, str] = {}
    for meta in (f for f in files if f.replace("\\", "/").rsplit("/", 1)[-1] == "metadata.jsonl"):
        with opener(meta) as fh:
            for line in fh:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                text = text_field(doc)
                if text is not None and isinstance(doc.get("file_name"), str):
                    texts[image_path(meta, doc["file_name"])] = text
    return texts
