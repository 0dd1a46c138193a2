"""The captions table schema: the single source of truth is ``captions.json`` beside this file.

Installed as ``enrich.schemas``. Everything that writes or checks the table uses ``CAPTIONS``.
"""

from __future__ import annotations

import json
from importlib import resources

import pyarrow as pa

_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}


def _load() -> tuple[pa.Schema, dict[str, str]]:
    spec = json.loads(resources.files(__name__).joinpath("captions.json").read_text("utf-8"))
    fields = [pa.field(c["name"], _TYPES[c["type"]], nullable=c["nullable"]) for c in spec["columns"]]
    return pa.schema(fields), {c["name"]: c["doc"] for c in spec["columns"]}


CAPTIONS, COLUMN_DOCS = _load()
COLUMNS: tuple[str, ...] = tuple(CAPTIONS.names)
STATUSES = ("captioned", "duplicate", "rejected", "failed")

__all__ = ["CAPTIONS", "COLUMNS", "COLUMN_DOCS", "STATUSES"]
