"""What a commit records beside its rows, as Delta commit metadata under ``META_PREFIX``: who
wrote it, for which stream and caption config, and how far the stream got (``Progress``): the
table's log is the only resume state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

META_PREFIX = "enrich."


def run_metadata(*, run_id: str, source: str, caption_config: str, caption_config_json: str,
                 enricher_version: str) -> dict[str, str]:
    """What every commit of a run records beside its rows (Delta commit metadata, under
    META_PREFIX): who wrote it, for which stream and caption config."""
    return {META_PREFIX + "run_id": run_id, META_PREFIX + "caption_config": caption_config,
            META_PREFIX + "caption_config_json": caption_config_json,
            META_PREFIX + "source": source, META_PREFIX + "enricher_version": enricher_version}


@dataclass(frozen=True)
class Stream:
    """One stream's position, as ``enrich status`` shows it."""

    source: str | None
    caption_config: str | None
    next_index: int | None
    shard: str | None
    offset: int
    exhausted: bool


@dataclass(frozen=True)
class Progress:
    """Where the stream of one (source, caption config) stands in the table."""

    next_index: int = 0
    next_shard: str | None = None
    next_offset: int = 0
    exhausted: bool = False


def position(entry: dict[str, Any]) -> Progress:
    """The stream position a commit recorded in its metadata (what ``append`` writes)."""
    return Progress(next_index=int(entry.get(META_PREFIX + "next_index", -1)),
                    next_shard=entry.get(META_PREFIX + "next_shard"),
                    next_offset=int(entry.get(META_PREFIX + "next_offset", 0)),
                    exhausted=str(entry.get(META_PREFIX + "exhausted", "false")) == "true")
