"""The one typed configuration of a run (validated when made), and the caption config that keys
the table. Where each value comes from (flags, environment, settings file) is settings.py's."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

if sys.version_info >= (3, 11):
    pass
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    pass

from enrich import __version__
from enrich.errors import UsageError

DEFAULT_SOURCE = "BLIP3o/BLIP3o-Pretrain-Short-Caption"
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that generates accurate and descriptive captions for images."
)
DEFAULT_PROMPT = (
    "Describe this image in detail. Focus on the main subjects, actions, and setting."
)
DRY_RUN_MODEL = "dry-run"

# vLLM engines per GPU when --replicas-per-gpu is not given, as measured (PERFORMANCE.md;
# Qwen2.5-VL-3B, random weights, 100-token captions, distinct images, 40,000 rows). H200, with
# render processes and the compiled vision encoder: 2 engines 218.5 captions/s, 3 engines 220.3
# (the GPU ~99.5 % busy either way, time-sliced), the first row 110 s vs 154 s after start: 2.
# H100 and A100-80G keep 3, measured on an H100 before those changes. Several engines need
# ~16 GB each: 80 GB+ cards only. An L4 (24 GB) holds one.
REPLICAS_PER_GPU: dict[str, int] = {"H100": 3, "H200": 2, "A100-80G": 3}

# Rows per engine batch when --batch-size is not given. A vLLM replica on a GPU holds 4 x
# max_num_seqs (256) rows at once (vllm_settings.ROWS_IN_FLIGHT_PER_SEQ), here two batches of
# twice max_num_seqs: the engine never drains, and since a batch's rows come back together when
# its last row is done, the first rows reach the table after one 512-row batch, not 1,024. The
# dry-run engine and vLLM's CPU backend take small batches, so that a short run commits early
# and often.
GPU_BATCH_SIZE = 512
SMALL_BATCH_SIZE = 64

EngineName = Literal["vllm", "dry-run"]
ENGINES: tuple[str, ...] = get_args(EngineName)  # the names, written once

# Environment variables that hold secrets: never logged, never written anywhere.
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@dataclass(frozen=True)
class CaptionConfig:
    """Everything that changes a caption. Its ``id`` is the table's ``caption_config`` column."""

    model: str
    model_revision: str
    system_prompt: str
    prompt: str
    temperature: float
    max_tokens: int
    image_size: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        return f"{self.model.rsplit('/', 1)[-1]}-{digest}"


@dataclass(frozen=True)
class RunConfig:
    """A resolved run. Build it with :func:`enrich.settings.resolve`; it validates itself."""

    until: int
    source: str = DEFAULT_SOURCE
    image_column: str | None = None  # parquet sources: the image column (default: found from the schema)
    text_column: str | None = None  # parquet sources: the text column for source_text (default: found)
    subset: str | None = None  # hub datasets: the subset (a `datasets` config name); default as `datasets` picks
    split: str | None = None  # hub datasets: the split; default "train", or the only one
    table: str = "./captions"
    engine: EngineName = "vllm"
    image_size: int = 225
    model: str = DEFAULT_MODEL
    model_revision: str = "main"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt: str = DEFAULT_PROMPT
    temperature: float = 0.3
    max_tokens: int = 256
    max_model_len: int = 8192
    accelerator_type: str = "L4"
    concurrency: int = 1
    replicas_per_gpu: int = 0  # 0: as measured best for the accelerator (REPLICAS_PER_GPU)
    render_processes: int = -1  # per vLLM replica; -1: the engine's default, 0: threads
    batch_size: int = 0  # 0: GPU_BATCH_SIZE for vLLM on GPUs, else SMALL_BATCH_SIZE
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    gpu_wait_s: float = 0.0
    dry_run_ms_per_image: float = 0.0
    commit_every: int = 2000
    commit_seconds: float = 60.0
    # Object-store tables: the run lease's time to live (renewed every third of it); a run whose
    # holder died is taken over this long after its last renewal.
    lock_ttl: float = 120.0
    checkpoint_dir: str = "./checkpoints"
    ray_address: str | None = None
    num_cpus: int | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.until < 0:
            raise self._invalid("until", f"--until must be >= 0, got {self.until}")
        if self.engine not in ENGINES:
            raise self._invalid("engine", f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not 28 <= self.image_size <= 2048:
            raise self._invalid("image_size", f"--image-size must be between 28 and 2048, got {self.image_size}")
        if self.replicas_per_gpu < 0:
            raise self._invalid("replicas_per_gpu", f"--replicas-per-gpu must be >= 1, got {self.replicas_per_gpu}")
        if self.render_processes < -1:
            raise self._invalid("render_processes", f"--render-processes must be >= 0, got {self.render_processes}")
        if self.batch_size < 0:
            raise self._invalid("batch_size", f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("concurrency", "commit_every", "max_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise self._invalid(name, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpu_wait_s < 0:
            raise self._invalid("gpu_wait_s", "--gpu-wait must be >= 0")
        if self.dry_run_ms_per_image < 0:
            raise self._invalid("dry_run_ms_per_image", "--dry-run-ms-per-image must be >= 0")
        if self.commit_seconds <= 0:
            raise self._invalid("commit_seconds", "--commit-seconds must be > 0")
        if self.lock_ttl < 10:
            raise self._invalid("lock_ttl", f"--lock-ttl must be >= 10 (seconds), got {self.lock_ttl:g}")
        if not 0.0 <= self.temperature <= 2.0:
            raise self._invalid("temperature", f"--temperature must be between 0 and 2, got {self.temperature}")
        if not self.source.strip():
            raise self._invalid("source", "--source must not be empty")
        if not self.table.strip():
            raise self._invalid("table", "--table must not be empty")

    def _invalid(self, name: str, message: str) -> UsageError:
        """A bad value's error; one that came from the environment or the settings file says
        where it came from (a flag's error names the flag already)."""
        origin = self.origins.get(name, "flag")
        return UsageError(message if origin in ("flag", "default") else f"{message} (set by {origin})")

    @property
    def caption(self) -> CaptionConfig:
        dry = self.engine == "dry-run"
        return CaptionConfig(
            model=DRY_RUN_MODEL if dry else self.model,
            model_revision="" if dry else self.model_revision,
            system_prompt=self.system_prompt,
            prompt=self.prompt,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            image_size=self.image_size,
        )

    @property
    def gpu_share(self) -> int:
        """vLLM engines per GPU: --replicas-per-gpu, else the measured best for the accelerator."""
        if self.replicas_per_gpu >= 1:
            return self.replicas_per_gpu
        if self.engine != "vllm" or self.accelerator_type.lower() == "cpu":
            return 1
        parallel = int(self.engine_kwargs.get("tensor_parallel_size", 1)) * int(
            self.engine_kwargs.get("pipeline_parallel_size", 1))
        if parallel > 1:
            return 1
        return REPLICAS_PER_GPU.get(self.accelerator_type, 1)

    @property
    def engine_batch_size(self) -> int:
        """Rows per engine batch: --batch-size, else the engine's own default."""
        if self.batch_size >= 1:
            return self.batch_size
        on_gpu = self.engine == "vllm" and self.accelerator_type.lower() != "cpu"
        if not on_gpu:
            return SMALL_BATCH_SIZE
        # two batches in flight keep the engine at max_num_seqs: each holds twice that
        seqs = int(self.engine_kwargs.get("max_num_seqs", 0) or 0)
        return max(GPU_BATCH_SIZE, 2 * seqs)

    @property
    def replicas(self) -> int:
        """Engine replicas in all: --concurrency GPUs (or CPU slots) x engines per GPU."""
        return self.concurrency * self.gpu_share

    def public_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able values (no secrets are ever part of it)."""
        d = dataclasses.asdict(self)
        d.pop("origins")
        d["engine_kwargs"] = dict(self.engine_kwargs)
        return d


def run_identity(source: str, caption: CaptionConfig) -> str:
    """The Delta app-transaction id under which a (source, caption config) records its progress."""
    src = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"enrich:{src}:{caption.id}"


def enricher_version() -> str:
    return __version__
