"""Listing a source's shards in canonical (name) order: a local folder, file or glob, any fsspec
URL (``s3://``, ``gs://``, ``hf://``, ``memory://``...), a hub dataset id, or the word ``sample``."""

from __future__ import annotations

import glob as globmod
import os
import posixpath
from pathlib import PurePosixPath
from typing import Any

from enrich.errors import SourceError
from enrich.source.access import listing, opener_fs, opener_local
from enrich.source.formats import pick_format
from enrich.source.hub import list_hub, probe_hub
from enrich.source.imagefolder import folder_texts
from enrich.source.naming import (
    Shard,
    is_glob,
    is_hub_dataset,
    is_hub_id,
    looks_like_path,
    source_spellings,
)
from enrich.source.parquet import with_columns


def list_shards(source: str, *, sample_dir: str | None = None, image_column: str | None = None,
                subset: str | None = None, split: str | None = None,
                text_column: str | None = None) -> list[Shard]:
    """The shards of ``source`` in canonical (name) order. Raises :class:`SourceError`."""
    if (subset or split) and not is_hub_dataset(source):
        raise SourceError(f"--subset/--split choose among a hub dataset's files; --source {source!r} "
                          "is not a hub dataset id")
    if source == "sample":
        from enrich.sample import ensure_sample

        return list_shards(str(ensure_sample(sample_dir)), image_column=image_column,
                           text_column=text_column)
    if is_hub_dataset(source):
        return list_hub(source_spellings(source)[0], source, image_column, subset, split,
                         text_column)
    if is_hub_id(source) or source.startswith("hf://"):
        return _list_fsspec(source if source.startswith("hf://") else f"hf://datasets/{source}",
                            shown=source, image_column=image_column, text_column=text_column)
    if "://" in source:
        return _list_fsspec(source, image_column=image_column, text_column=text_column)
    source = os.path.expanduser(source)
    if looks_like_path(source) and not is_glob(source) and not os.path.exists(source):
        raise SourceError(f"--source {source!r}: no such file or folder")
    if os.path.isdir(source):
        found = sorted(globmod.glob(os.path.join(source, "**", "*"), recursive=True))
    elif os.path.isfile(source):
        found = [source]
    else:
        found = sorted(globmod.glob(source, recursive=True))
    found = [p for p in found if os.path.isfile(p)]
    kind, paths = pick_format(found)
    if not paths:
        raise SourceError(f"--source {source!r}: no .tar shards, .parquet files or images found")
    base = source if os.path.isdir(source) else os.path.dirname(source)
    if kind == "image":  # one row per file, named by its path in the folder, in name order
        names = [os.path.relpath(p, base) for p in paths]
        order = sorted(zip(names, paths, strict=True))
        texts = folder_texts(found)
        return [Shard(n, p, opener_local(p), kind="image", text=texts.get(os.path.abspath(p)))
                for n, p in order]
    paths.sort(key=lambda p: (os.path.basename(p), p))
    shards = [Shard(os.path.basename(p), p, opener_local(p), kind=kind) for p in paths]
    return with_columns(shards, image_column, source, text_column) if kind == "parquet" \
        else shards


def _list_fsspec(url: str, shown: str | None = None, image_column: str | None = None,
                 text_column: str | None = None) -> list[Shard]:
    import fsspec

    shown = shown or url  # the spelling the user typed, for messages
    if url.startswith("hf://"):
        probe_hub(shown)

    def list_once() -> tuple[Any, str, list[str]]:
        if url.startswith("hf://"):
            # HfFileSystem reads HF_TOKEN from the environment itself; enrich never handles it.
            from huggingface_hub import HfFileSystem

            fs = HfFileSystem(skip_instance_cache=True)  # no listing cached from a failed try
            root = url[len("hf://") :]
        else:
            fs, root = fsspec.core.url_to_fs(url)
        if is_glob(root):
            paths = fs.glob(root)
        else:
            paths = [p for p in fs.find(root.rstrip("/")) if not p.endswith("/")]
        return fs, root, sorted(paths)

    fs, root, found = listing(shown, list_once)
    kind, paths = pick_format(found)
    if not paths:
        raise SourceError(f"--source {shown!r}: no .tar shards, .parquet files or images found")
    if kind == "image":  # one row per file, named by its path under the listed folder
        base = root.rstrip("/") if not is_glob(root) else posixpath.dirname(root.split("*")[0])
        texts = folder_texts(found, open_text=lambda p: fs.open(p, "r", encoding="utf-8", errors="replace"),
                             image_path=lambda meta, name: posixpath.normpath(
                                 posixpath.join(posixpath.dirname(meta), name)))
        return sorted((Shard(posixpath.relpath(p, base) if base else p, p, opener_fs(fs, p),
                             remote=True, kind="image", text=texts.get(posixpath.normpath(p)))
                       for p in paths), key=lambda s: (s.name, s.url))
    paths.sort(key=lambda p: (PurePosixPath(p).name, p))
    shards = [Shard(PurePosixPath(p).name, p, opener_fs(fs, p), remote=True, kind=kind) for p in paths]
    return with_columns(shards, image_column, shown, text_column) if kind == "parquet" else shards
