"""Reading a captions table back for assertions."""

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


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard with these (name, bytes) members, in this order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
