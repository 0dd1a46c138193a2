"""Parquet files of rows: the image from a ``{bytes, path}`` struct (what ``datasets`` writes for
an ``Image`` feature), a binary column or a column of file paths, the text (source_text) from a string column."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import IO

import pyarrow as pa

from enrich.errors import SourceError, one_line
from enrich.source.naming import TEXT_FIELDS, Broken, Sample, Shard


def samples(fileobj: IO[bytes], shard: Shard) -> Iterator[Sample]:
    """A parquet file's rows in file order; the image from a ``{bytes, path}`` struct or a binary
    column. A file that cannot be read as parquet is a broken shard (one error marker)."""
    import pyarrow.parquet as pq

    assert shard.column is not None
    offset = 0
    stem = shard.name.rsplit(".", 1)[0]
    try:
        pf = pq.ParquetFile(fileobj)
        if shard.column not in pf.schema_arrow.names:
            raise ValueError(f"no column {shard.column!r}")
        texts = shard.text_column if shard.text_column in pf.schema_arrow.names else None
        batches = pf.iter_batches(columns=[shard.column, *([texts] if texts else [])], batch_size=256)
        for batch in batches:
            text_cells = batch.column(1).to_pylist() if texts else [None] * batch.num_rows
            for cell, text in zip(batch.column(0).to_pylist(), text_cells, strict=True):
                if isinstance(cell, dict):
                    image, path = cell.get("bytes"), cell.get("path")
                elif isinstance(cell, str):  # a column of paths: the file is read by its path
                    image, path = None, cell
                else:
                    image, path = cell, None
                ext = path.rsplit(".", 1)[-1].lower() if path and "." in path else None
                error = None
                if image is None:
                    image, error = _image_by_path(shard, path)
                yield Sample(shard.name, offset, path or f"{stem}/{offset}", image, ext, error=error,
                             text=text if isinstance(text, str) else None)
                offset += 1
    except (pa.ArrowException, ValueError) as exc:  # pyarrow's errors: the content is broken
        raise Broken(exc, offset) from exc


def _image_by_path(shard: Shard, path: str | None) -> tuple[bytes | None, str | None]:
    """A parquet row whose image cell holds no bytes: ``datasets`` writes ``{bytes: None, path}``
    for an ``Image`` column made from file paths. Read the file where the parquet is local (a
    relative path from the parquet file's folder, as ``datasets`` resolves it); otherwise the
    row is rejected with a reason that says so. A remote parquet's paths are not followed: they
    name files on the machine that wrote it."""
    column = f"parquet column {shard.column!r}"
    if not path:
        return None, f"no image: {column} is empty in this row"
    if shard.remote:
        return None, (f"image not in the parquet file: {column} holds only the path {path!r} (no "
                      "bytes); embed the images when writing it (datasets: embed_external_files)")
    full = os.path.join(os.path.dirname(shard.url), os.path.expanduser(path))
    try:
        with open(full, "rb") as f:
            return f.read(), None
    except OSError as exc:
        return None, (f"image not in the parquet file and its path could not be read: {column} "
                      f"holds only {path!r} ({type(exc).__name__}: {exc.strerror or exc})")


def image_column_of(schema: pa.Schema, wanted: str | None) -> str | None:
    """The image column of a parquet schema: ``wanted``, else the first struct with a ``bytes``
    field (what `datasets` writes for an Image feature), else a binary column named like an
    image, else the first binary column."""
    if wanted:
        return wanted if wanted in schema.names else None
    for f in schema:
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0:
            return f.name
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    named = [n for n in binary if any(w in n.lower() for w in ("image", "img", "jpg", "png"))]
    return (named or binary or [None])[0]


def _holds_images(kind: pa.DataType) -> bool:
    """A column enrich can take images from: a ``{bytes, path}`` struct, bytes, or path strings."""
    if pa.types.is_struct(kind):
        return kind.get_field_index("bytes") >= 0 or kind.get_field_index("path") >= 0
    return any(test(kind) for test in (pa.types.is_binary, pa.types.is_large_binary,
                                       pa.types.is_string, pa.types.is_large_string))


def text_column_of(schema: pa.Schema, wanted: str | None) -> str | None:
    """The text column of a parquet schema (source_text): ``wanted``, else the first string
    column named caption, text or txt (in that order of preference), else none."""
    if wanted:
        return wanted if wanted in schema.names else None
    strings = {f.name.lower(): f.name for f in schema
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
    return next((strings[n] for n in TEXT_FIELDS if n in strings), None)


def with_columns(shards: list[Shard], wanted: str | None, source: str,
                       text_wanted: str | None = None) -> list[Shard]:
    """Find the image and text columns once, from the first file's schema (all files of a split
    share it)."""
    import pyarrow.parquet as pq

    try:
        with shards[0].open() as fh:
            schema = pq.ParquetFile(fh).schema_arrow
    except Exception as exc:  # noqa: BLE001 - a first file that is not parquet: unusable source
        raise SourceError(f"--source {source!r}: {shards[0].name} is not a readable parquet file "
                          f"({type(exc).__name__}: {one_line(str(exc))[:200]})") from None
    column = image_column_of(schema, wanted)
    if column is None:
        what = f"no column {wanted!r}" if wanted else "no image column (a {bytes, path} struct or binary)"
        raise SourceError(f"--source {source!r}: {what} in {shards[0].name}; columns: "
                          f"{', '.join(schema.names)} (choose one with --image-column)")
    kind = schema.field(column).type
    if not _holds_images(kind):
        raise SourceError(f"--source {source!r}: column {column!r} of {shards[0].name} holds {kind}, "
                          "not images (a {bytes, path} struct, binary bytes or file paths as strings)")
    text = text_column_of(schema, text_wanted)
    if text_wanted and text is None:
        raise SourceError(f"--source {source!r}: no column {text_wanted!r} in {shards[0].name}; "
                          f"columns: {', '.join(schema.names)} (--text-column)")
    return [dataclasses.replace(s, column=column, text_column=text) for s in shards]
