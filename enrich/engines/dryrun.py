"""The ``dry-run`` engine: deterministic captions computed from the pixels, on CPU.

Its rows carry model ``dry-run`` (and so another caption config): they never count as
captioned for a real model. ``--dry-run-ms-per-image`` makes it spend time like a GPU would,
for fault drills and capacity planning. :data:`DRILL` is the fault drills' hook (a model load's
wait, replicas that die, rows that fail): set by tests in the driver's process, never a user
setting.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image

from enrich.engines.base import output_table

if TYPE_CHECKING:
    import ray.data

    from enrich.config import RunConfig

# Ray resources of one replica: none. It stands in for a GPU replica, whose work is not on our
# CPUs; it sleeps --dry-run-ms-per-image and computes a mean. Reserving a CPU for it would starve
# the read tasks (which prepare the images) on a 2-core machine (a re-creation of the tutorial
# deadlocks there: actors held both CPUs and the tasks never got one).
REPLICA_CPUS = 0.0


@dataclass(frozen=True)
class Drill:
    startup_s: float = 0.0  # each replica waits this long before its first batch (a model load)
    crash_on: str = ""  # source indices, comma-separated, at which a replica dies (os._exit) once
    fail_on: str = ""  # ...and at which it reports an engine error for the row (a vLLM error)


# Fault drills only (tests set it with monkeypatch); read when a run builds its replicas.
DRILL = Drill()


def caption_array(rgb: np.ndarray) -> tuple[str, int]:
    """The dry-run caption of an RGB array (H x W x 3), and its 'token' count."""
    mean = rgb.reshape(-1, 3).mean(axis=0)
    r, g, b = (int(round(float(v))) for v in mean)
    level = "bright" if (r + g + b) / 3 > 150 else "dark" if (r + g + b) / 3 < 70 else "mid-tone"
    text = f"dry-run: mean RGB {r},{g},{b}; a {level} image"
    return text, len(text.split())


def caption_jpeg(data: bytes, size: int) -> tuple[str, int]:
    """The dry-run caption of a prepared image. The JPEG is decoded at 1/4 scale inside the DCT:
    the same colour summary for ~1/10 of the cost of a full decode and mean."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (max(1, size // 4), max(1, size // 4)))
    return caption_array(np.asarray(img.convert("RGB")))


class DryRunCaptioner:
    """One replica (a Ray actor). Counts its starts in ``starts_dir`` so runs can prove that the
    engine starts once per replica, not once per commit."""

    def __init__(self, *, image_size: int, ms_per_image: float, startup_s: float,
                 starts_dir: str | None, crash_on: str, fail_on: str = "") -> None:
        if startup_s:
            time.sleep(startup_s)  # stands in for loading weights
        self.size = image_size
        self.ms = ms_per_image
        self.starts_dir = starts_dir
        self.crash_on = {int(x) for x in crash_on.split(",") if x.strip()}
        self.fail_on = {int(x) for x in fail_on.split(",") if x.strip()}
        if starts_dir:
            Path(starts_dir).mkdir(parents=True, exist_ok=True)
            (Path(starts_dir) / f"start-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()

    def _maybe_crash(self, indices: list[int]) -> None:
        for idx in self.crash_on.intersection(indices):
            marker = Path(self.starts_dir or ".") / f"crashed-{idx}"
            if not marker.exists():
                marker.touch()
                os._exit(1)  # a replica dying mid-batch, as a GPU fault would

    def __call__(self, batch: pa.Table) -> pa.Table:
        indices = batch.column("source_index").to_pylist()
        status = batch.column("status").to_pylist()
        images = batch.column("image_jpeg").to_pylist()
        if self.crash_on:
            self._maybe_crash(indices)
        captions: list[str | None] = [None] * len(indices)
        tokens: list[int | None] = [None] * len(indices)
        truncated: list[bool | None] = [None] * len(indices)
        pending = [i for i, s in enumerate(status) if s == "pending"]
        if self.ms and pending:
            time.sleep(self.ms * len(pending) / 1000.0)
        errors = batch.column("error").to_pylist()
        for i in pending:
            if indices[i] in self.fail_on:
                status[i], errors[i] = "failed", "engine error: injected by the fault drill (fail_on)"
                continue
            image = images[i]
            if image is None:  # a pending row always carries its prepared image
                raise ValueError(f"row {indices[i]} is pending without an image")
            captions[i], tokens[i] = caption_jpeg(image, self.size)
            truncated[i] = False
            status[i] = "captioned"
        return output_table(batch, status, errors, captions, tokens, truncated)


class DryRunEngine:
    name = "dry-run"
    batches_in_flight = 2  # Ray Data's own default for a one-call-at-a-time actor

    def __init__(self, cfg: RunConfig, *, starts_dir: str | None = None) -> None:
        self.cfg = cfg
        self.starts_dir = starts_dir

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "dry-run",
            "model": "dry-run",
            "replicas": self.cfg.concurrency,
            "batch_size": self.cfg.engine_batch_size,
            "cpus_per_replica": REPLICA_CPUS,
            "ms_per_image": self.cfg.dry_run_ms_per_image,
        }

    def check_cluster(self) -> None:
        return None  # runs anywhere

    def read_cpus(self) -> float:
        return 1.0  # its replicas reserve no CPU

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        import ray.data

        return ds.map_batches(
            DryRunCaptioner,
            fn_constructor_kwargs=dict(
                image_size=self.cfg.image_size,
                ms_per_image=self.cfg.dry_run_ms_per_image,
                startup_s=DRILL.startup_s,
                starts_dir=self.starts_dir,
                crash_on=DRILL.crash_on,
                fail_on=DRILL.fail_on,
            ),
            batch_size=self.cfg.engine_batch_size,
            batch_format="pyarrow",
            # A fixed pool. Ray Data restarts a replica that dies and retries its batch
            # (its actor pools default to max_restarts=-1, max_task_retries=-1).
            compute=ray.data.ActorPoolStrategy(size=self.cfg.concurrency,
                                               max_tasks_in_flight_per_actor=self.batches_in_flight),
            num_cpus=REPLICA_CPUS,
        )
