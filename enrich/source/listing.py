"""Listing a source's shards in canonical (name) order: a local folder, file or glob, any fsspec
URL (``s3://``, ``gs://``, ``hf://``, ``memory://``...), a hub dataset id, or the word ``sample``."""

from __future__ import annotations

import glob as globmod
import os
import posixpath
from collections.abc import Callable
from typing import IO, Any, NamedTuple

from enrich.errors import SourceError
from enrich.source.access import listing, opener_fs, opener_local
from enrich.source.formats import BY_KIND, NONE_FOUND, pick_format
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
    if not is_glob(source) and not os.path.exists(source):  # `shardz` as `./shardz`
        hint = "" if looks_like_path(source) else " (and not a hub dataset id: ORG/NAME)"
        raise SourceError(f"--source {source!r}: no such file or folder{hint}")
    if os.path.isdir(source):
        found = sorted(globmod.glob(os.path.join(source, "**", "*"), recursive=True))
    elif os.path.isfile(source):
        found = [source]
    else:
        found = sorted(globmod.glob(source, recursive=True))
    found = [p for p in found if os.path.isfile(p)]
    base = source if os.path.isdir(source) else os.path.dirname(source)
    files = Files(remote=False, open_file=opener_local, path=os.path, text_key=os.path.abspath,
                  texts=lambda: folder_texts(found))
    return _shards(found, base, source, files, (image_column, text_column))


class Files(NamedTuple):
    """Where listed files live: on this machine or on a filesystem of fsspec (``path``:
    ``os.path`` or ``posixpath``); how one is opened; an image folder's texts (``texts()``,
    keyed by ``text_key(path)``)."""

    remote: bool
    open_file: Callable[[str], Callable[[], IO[bytes]]]
    path: Any
    text_key: Callable[[str], str]
    texts: Callable[[], dict[str, str]]


def _shards(found: list[str], base: str, shown: str, files: Files,
            columns: tuple[str | None, str | None]) -> list[Shard]:
    """The listed files as shards of the format they hold. Tar and parquet files are named by
    their file name; an image folder's files by their path under ``base``, with their texts.
    ``columns``: --image-column and --text-column, for the format's options."""
    remote, open_file, path, text_key, texts = files
    kind, paths = pick_format(found)
    if not paths:
        raise SourceError(f"--source {shown!r}: {NONE_FOUND}")
    fmt = BY_KIND[kind]
    if fmt.file_per_row:  # one row per file, named by its path in the folder, in name order
        by_key = texts()
        return sorted((Shard(path.relpath(p, base) if base else p, p, open_file(p), remote=remote,
                             kind=kind, text=by_key.get(text_key(p))) for p in paths),
                      key=lambda s: (s.name, s.url))
    paths.sort(key=lambda p: (path.basename(p), p))
    shards = [Shard(path.basename(p), p, open_file(p), remote=remote, kind=kind) for p in paths]
    return fmt.options(shards, columns[0], shown, columns[1])


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
    base = root.rstrip("/") if not is_glob(root) else posixpath.dirname(root.split("*")[0])

    def texts() -> dict[str, str]:
        return folder_texts(found, open_text=lambda p: fs.open(p, "r", encoding="utf-8", errors="replace"),
                            image_path=lambda meta, name: posixpath.normpath(
                                posixpath.join(posixpath.dirname(meta), name)))

    files = Files(remote=True, open_file=lambda p: opener_fs(fs, p), path=posixpath,
                  text_key=posixpath.normpath, texts=texts)
    return _shards(found, base, shown, files, (image_column, text_column))
