"""The plan of a run: what it would do, computed from the Delta log and the config alone,
without reading an image or starting Ray (``--plan`` prints it; a finished ``--until`` is
answered from it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from enrich.config import RunConfig, run_identity
from enrich.positions import Progress
from enrich.sink import CaptionsTable


@dataclass
class Plan:
    """What a run would do, computed without reading an image or starting Ray."""

    source: str
    table: str
    app_id: str
    caption_config: str
    caption: dict[str, Any]
    progress: Progress
    until: int
    retry_rows: pa.Table = dataclasses.field(repr=False)  # the failed rows a run retries first
    engine: dict[str, Any]

    @property
    def failed_to_retry(self) -> int:
        return self.retry_rows.num_rows

    @property
    def rows_to_do(self) -> int:
        return max(0, self.until - self.progress.next_index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "table": self.table,
            "until": self.until,
            "rows_done": self.progress.next_index,
            "rows_to_do": 0 if self.progress.exhausted else self.rows_to_do,
            "source_exhausted": self.progress.exhausted,
            "failed_rows_to_retry": self.failed_to_retry,
            "resume_at": {"shard": self.progress.next_shard, "offset": self.progress.next_offset},
            "caption_config": self.caption_config,
            "caption": self.caption,
            "engine": self.engine,
        }

    @property
    def nothing_to_do(self) -> bool:
        return (self.rows_to_do == 0 or self.progress.exhausted) and self.failed_to_retry == 0

    def follow(self, shard_names: list[str],
               read: Callable[[], set[str]] | None = None) -> tuple[Plan, list[str]]:
        """This plan against the source as listed now (names in canonical order). A stream that
        was exhausted continues if files were added after the last one it read: numbering goes
        on from there. Files added *before* that one cannot be numbered without renumbering the
        table, so they are returned (given ``read()``: the files the stream has rows from, one
        scan of the table's source_shard column) for the caller to name; they are not captioned."""
        last = self.progress.next_shard
        if not last:
            return self, []
        unread: list[str] = []
        if read is not None and any(n < last for n in shard_names):
            known = read()
            unread = [n for n in shard_names if n < last and n not in known]
        if self.progress.exhausted and any(n > last for n in shard_names):
            return dataclasses.replace(
                self, progress=dataclasses.replace(self.progress, exhausted=False)), unread
        return self, unread



def make_plan(cfg: RunConfig, table: CaptionsTable) -> Plan:
    from enrich.engines import make_engine
    from enrich.source import source_spellings, stream_selector

    caption = cfg.caption
    selector = stream_selector(cfg.subset, cfg.split)  # another subset or split: another stream
    spellings = [s + selector for s in source_spellings(cfg.source)]
    # One stream per dataset however it is spelled: continue under the spelling the table
    # already knows (tables written before spellings were unified keep theirs), else the
    # canonical one.
    source = next((s for s in spellings if table.has_progress(run_identity(s, caption))),
                  spellings[0])
    app_id = run_identity(source, caption)
    return Plan(source=source, table=cfg.table, app_id=app_id, caption_config=caption.id,
                caption=dataclasses.asdict(caption), progress=table.progress(app_id),
                until=cfg.until, retry_rows=table.failed_rows(source, caption.id),
                engine=make_engine(cfg).describe())
