"""The formats enrich reads, one module each, behind one registry. A format is a ``Shard.kind``,
the file endings that make a listing choose it, ``samples(fileobj, shard)`` (the shard's samples
in order, raising ``Broken`` where its content breaks) and the few ways formats differ, as hooks
here rather than branches elsewhere: how a broken file is described, how its files are named
and grouped into read tasks, what its options do. Adding a format is one module and one line in
FORMATS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from enrich.source import imagefolder, parquet, webdataset
from enrich.source.naming import IMAGE_EXTS, Sample, Shard

# (shards, --image-column, the source as the user typed it, --text-column) -> shards
Options = Callable[[list[Shard], "str | None", str, "str | None"], list[Shard]]


def _no_options(shards: list[Shard], image_column: str | None, shown: str,
                text_column: str | None) -> list[Shard]:
    return shards


@dataclass(frozen=True)
class Format:
    kind: str  # Shard.kind
    exts: tuple[str, ...]  # file endings, lower case
    samples: Callable[[IO[bytes], Shard], Iterator[Sample]]
    unit: str  # what a broken file is counted in: "samples" or "rows"
    hub: str  # the hub's (`datasets`') builder module for datasets of this format
    # one row per file (an image folder): files are named by their path under the folder, and
    # a read task takes many of them; otherwise a file is a shard named by its file name
    file_per_row: bool = False
    options: Options = _no_options  # the format's own flags applied to its listed shards
    broken_words: tuple[str, str] | None = None  # (unreadable, broken after N): see broken()

    def broken(self, count: int) -> str:
        """How a file whose content breaks after ``count`` samples is described in its row."""
        if self.broken_words:
            return self.broken_words[0] if count == 0 else self.broken_words[1].format(count)
        return (f"not a readable {self.kind} file" if count == 0
                else f"{self.kind} file broken after {count} {self.unit}")

    def files_per_task(self, rows_per_task: int) -> int:
        """Files one read task takes, for read tasks of about ``rows_per_task`` rows."""
        return rows_per_task if self.file_per_row else 1

    def matches(self, path: str) -> bool:
        return path.lower().endswith(self.exts)


# In order of preference: a folder with tar shards is read as webdataset even if it also holds
# parquet files or loose images.
FORMATS = (
    Format("tar", (".tar",), webdataset.samples, "samples", "webdataset",
           broken_words=("not a tar file", "truncated tar after {} samples")),
    Format("parquet", (".parquet",), parquet.samples, "rows", "parquet",
           options=parquet.with_columns),
    Format("image", tuple("." + e for e in IMAGE_EXTS), imagefolder.samples, "rows", "imagefolder",
           file_per_row=True),
)
BY_KIND = {f.kind: f for f in FORMATS}
BY_HUB_MODULE = {f.hub: f.kind for f in FORMATS}
NONE_FOUND = "no .tar shards, .parquet files or images found"


def pick_format(paths: list[str]) -> tuple[str, list[str]]:
    """The first format of FORMATS that ``paths`` hold files of, and those files."""
    for fmt in FORMATS:
        chosen = [p for p in paths if fmt.matches(p)]
        if chosen:
            return fmt.kind, chosen
    return FORMATS[0].kind, []
