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

if TYPE_CHECKING:
    import ray.data

OUTPUT_SCHEMA = pa.schema([
    pa.field("source_index", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("num_generated_tokens", pa.int32()),
    pa.field("caption_truncated", pa.bool_()),
    pa.field("image_width", pa.int32()),
    pa.field("image_height", pa.int32()),
])


def output_table(batch: pa.Table, status: list[str], errors: list[str | None],
                 captions: list[str | None], tokens: list[int | None],
                 truncated: list[bool | None]) -> pa.Table:
    """An engine's output rows for ``batch``: its identity and image size columns, and the
    per-row outcome lists given."""
    return pa.table({
        "source_index": batch.column("source_index"),
        "status": pa.array(status, pa.string()),
        "error": pa.array(errors, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "num_generated_tokens": pa.array(tokens, pa.int32()),
        "caption_truncated": pa.array(truncated, pa.bool_()),
        "image_width": batch.column("image_width"),
        "image_height": batch.column("image_height"),
    }, schema=OUTPUT_SCHEMA)


class Engine(Protocol):
    name: str
    # Batches each replica holds at once (running and queued): the pipeline keeps that many per
    # replica in flight, and no more.
    batches_in_flight: int

    def describe(self) -> dict[str, Any]:
        """The engine's resolved settings, JSON-able, for ``--plan`` and the run journal."""

    def check_cluster(self) -> None:
        """Fail fast (``NoAcceleratorError``) when the cluster cannot host a replica."""

    def prepare_cpus(self) -> float:
        """The CPUs one task of enrich's prepare stage may reserve beside this engine's actors
        (after ``check_cluster``), so that the run can always make progress."""

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Add captions to the ``pending`` rows of ``ds``; rows out follow OUTPUT_SCHEMA."""
