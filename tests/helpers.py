"""Reading a captions table back for assertions; what a failed run said, for the failure message."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable


def read_table(uri: str) -> pa.Table:
    return DeltaTable(uri).to_pyarrow_dataset().to_table()


def outcome(uri: str, *, caption_config: str | None = None) -> dict[int, tuple[Any, ...]]:
    """source_index -> (status, image_hash, caption); asserts each index appears once."""
    rows = read_table(uri).to_pylist()
    if caption_config:
        rows = [r for r in rows if r["caption_config"] == caption_config]
    out: dict[int, tuple[Any, ...]] = {}
    for r in rows:
        assert r["source_index"] not in out, f"duplicate row for source_index {r['source_index']}"
        out[r["source_index"]] = (r["status"], r["image_hash"], r["caption"])
    return out


def error_text(row: dict[str, Any]) -> str:
    """A table row's error whole: its reason and its particulars (error, error_detail)."""
    return ": ".join(filter(None, (row.get("error"), row.get("error_detail"))))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard with these (name, bytes) members, in this order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def said(stderr: str, tail: int = 2000) -> str:
    """A failed run's stderr for an assertion message: the lines that name the failure (enrich's
    own error line, a Python exception, a failed Ray check) wherever they are, then the tail. A
    native stack trace printed at exit can fill the tail and hide the cause above it."""
    lines = stderr.splitlines()
    keys = ("enrich: error", "Error", "Exception", "Check failed", "Traceback", "FATAL")
    marked = [line for line in lines if any(k in line for k in keys)][:40]
    return "\n".join(["-- lines naming the failure:", *marked, "-- last lines:", stderr[-tail:]])
