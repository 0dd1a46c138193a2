"""The engine interface every caption engine implements.

An engine turns the prepared stream into a captioned stream, as one lazy Ray Data transform
applied once per run: its replicas (and the model) start once and live for the whole run,
however many commits the driver makes meanwhile.

Input rows carry ``source_index``, ``status`` (``pending`` for images to caption; anything else
passes through untouched), ``error``, ``image_jpeg`` (the ``image_size``² image as a JPEG) and the original
``image_width``/``image_height``. Output rows carry exactly :data:`OUTPUT_SCHEMA`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from enrich.schemas import CAPTIONS

if TYPE_CHECKING:
    import ray.data

# The columns an engine adds, typed as the table (schemas/captions.json) types them. Nullable
# here whatever the table says: the committer completes and checks the rows before a commit.
OUTPUT_COLUMNS = ("source_index", "status", "error", "caption", "num_generated_tokens",
                  "caption_truncated", "image_width", "image_height")
OUTPUT_SCHEMA = pa.schema([pa.field(n, CAPTIONS.field(n).type) for n in OUTPUT_COLUMNS])


def output_table(batch: pa.Table, status: list[str], errors: list[str | None],
                 captions: list[str | None], tokens: list[int | None],
                 truncated: list[bool | None]) -> pa.Table:
    """An engine's output rows for ``batch``: its identity and image size columns, and the
    per-row outcome lists given."""
    given = {"status": status, "error": errors, "caption": captions, "num_generated_tokens": tokens,
             "caption_truncated": truncated}
    return pa.table([batch.column(f.name).cast(f.type) if f.name not in given
                     else pa.array(given[f.name], f.type) for f in OUTPUT_SCHEMA], schema=OUTPUT_SCHEMA)


class Engine(Protocol):
    name: str
    # Batches each replica holds at once (running and queued): the pipeline keeps that many per
    # replica in flight, and no more.
    batches_in_flight: int

    def describe(self) -> dict[str, Any]:
        """The engine's resolved settings, JSON-able, for ``--plan`` and the run journal."""

    def check_cluster(self) -> None:
        """Fail fast (``NoAcceleratorError``) when the cluster cannot host a replica."""

    def read_cpus(self) -> float:
        """The CPUs one of enrich's read tasks (read, hash and prepare a shard's images) may
        reserve beside this engine's actors (after ``check_cluster``), so that the run can
        always make progress."""

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Add captions to the ``pending`` rows of ``ds``; rows out follow OUTPUT_SCHEMA."""
