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

def _kind(t: pa.DataType) -> object:
    """A column type as the Delta log keeps it: string flavours and timestamp units are one."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return "timestamp" if pa.types.is_timestamp(t) else t


def schema_problem(have: pa.Schema, want: pa.Schema) -> str | None:
    """Why a table's columns cannot be written as ``want``, or None. The schema may only grow:
    a table may lack columns that ``want`` adds at its end as nullable (they are added on the
    next write); a column removed, renamed, retyped or out of order is refused, named."""
    extra = [n for n in have.names if n not in want.names]
    if extra:
        return "columns enrich does not write (removed or renamed?): " + ", ".join(extra)
    retyped = [a.name for a in have if _kind(a.type) != _kind(want.field(a.name).type)]
    if retyped:
        return "columns of another type: " + ", ".join(
            f"{n} ({have.field(n).type}, enrich writes {want.field(n).type})" for n in retyped)
    if have.names != want.names[:len(have.names)]:
        return "columns in another order than enrich's"
    required = [f.name for f in want if f.name not in have.names and not f.nullable]
    if required:
        return "missing required columns: " + ", ".join(required)
    return None


__all__ = ["CAPTIONS", "COLUMNS", "COLUMN_DOCS", "STATUSES", "schema_problem"]
