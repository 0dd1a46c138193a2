"""What the ``vllm`` engine asks vLLM and Ray for, and why: the engine arguments and their
measured defaults, the sampling parameters, the CPUs a replica and a read task reserve. Pure
(no vLLM, no Ray): --plan shows these before anything starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enrich.errors import UsageError

if TYPE_CHECKING:
    from enrich.config import RunConfig

# Qwen2.5-VL: 14 px patches merged 2x2, so image sides are rounded to multiples of 28.
QWEN_FACTOR = 28
# vLLM engine defaults we choose, each overridable with --engine-kwargs (PERFORMANCE.md has
# the measurements):
# - max_num_seqs 256: a caption needs ~116 prompt (64 of them image) + ~100 generated tokens at
#   36 KB of KV cache per token (36 layers x 2 KV heads x 128 x K,V x bf16), so 256 sequences
#   hold ~2 GB of KV; vLLM's own benchmark on an H200 ran faster at 256 than at 512.
# - enable_prefix_caching: every prompt starts with the same system prompt and template.
# - gpu_memory_utilization 0.90: room for the CUDA graphs and the vision encoder activations.
# - mm_processor_cache_gb 0: vLLM caches processed images by their pixels; a dataset's images
#   are distinct (duplicates never reach the engine), so the cache would only copy tensors, and
#   it is not safe to use from the replica's render threads.
ENGINE_DEFAULTS: dict[str, Any] = {
    "max_num_seqs": 256,
    "enable_prefix_caching": True,
    "gpu_memory_utilization": 0.90,
    "dtype": "bfloat16",
    "mm_processor_cache_gb": 0,
}
# On GPUs only: the vision encoder compiled and replayed as CUDA graphs (both off in vLLM 0.24,
# which runs it eagerly: ~21 % of each engine-core process, launching kernels one by one). On one
# H200 with 3 engines: 185.1 -> 220.3 captions/s sustained, the first row ~20 s later (the
# compile). A --engine-kwargs "compilation_config" replaces this one.
GPU_ENGINE_DEFAULTS: dict[str, Any] = {
    "compilation_config": {"compile_mm_encoder": True, "cudagraph_mm_encoder": True},
}
# vLLM's input processing per row (decode, HF image processor, tokenizer) runs beside the engine:
# on a GPU in RENDER_PROCESSES processes per replica (threads hold the GIL: on one H200 four ran
# ~1.2 threads' worth, PERFORMANCE.md), on the CPU backend in RENDER_THREADS threads (the model
# is the bound there), or where processes cannot start; --render-processes overrides the count.
# REPLICA_CPUS: what a GPU replica reserves for them, its engine loop and vLLM's engine-core
# process (a busy loop of its own).
RENDER_PROCESSES = 2
RENDER_THREADS = 4
REPLICA_CPUS = 3.0
# Rows a GPU replica holds at once (running, rendered and queued, waiting their turn), in
# multiples of max_num_seqs: the next rows are rendered and queued while the last of the earlier
# ones finish, so the engine never drains. As batches (Ray actor concurrency): at least
# BATCHES_IN_FLIGHT, more where --batch-size is smaller than twice max_num_seqs, so a batch of
# max_num_seqs rows (one wave through the engine: the first rows back sooner) keeps the engine
# as full as the default 512-row batches do. The CPU backend: BATCHES_IN_FLIGHT.
ROWS_IN_FLIGHT_PER_SEQ = 4
BATCHES_IN_FLIGHT = 2

# --accelerator-type cpu: the replica runs vLLM's CPU backend. There vLLM reads
# gpu_memory_utilization as a share of host RAM (0.9 of it!), so the KV cache is sized explicitly.
CPU = "cpu"
CPU_KV_CACHE_BYTES = 512 * 2**20
# KV cache of each engine when several share a GPU (--replicas-per-gpu > 1): 6 GiB is ~170k
# tokens of Qwen2.5-VL-3B (36 KB each), ~3x what max_num_seqs 256 captions of ~220 tokens hold.
SHARED_GPU_KV_BYTES = 6 * 2**30


def is_cpu(accelerator_type: str | None) -> bool:
    return (accelerator_type or "").lower() == CPU


@dataclass(frozen=True)
class CpuPlan:
    """What each part of a run reserves of the cluster's CPUs, so that every stage can start.

    Ray admits an actor or task only when its ``num_cpus`` are free, and actors keep theirs for
    the whole run: a run whose actors take every CPU waits forever for its read tasks (which
    also prepare the images). Each engine replica keeps the CPUs it wants (on a GPU: its render
    processes, engine loop and vLLM's engine-core process; on the CPU backend: the model's core)
    where the cluster has them to spare, never fewer than one; a read task may take what is
    left, up to one CPU, so that one can always run."""

    total: float
    replicas: int
    replica: float = 1.0
    read_task: float = 0.0

    @classmethod
    def fit(cls, total: float, replicas: int, want: float = 1.0) -> CpuPlan:
        """``want`` CPUs per replica where the cluster has them to spare, else down to one."""
        replica = max(1.0, min(want, (total - 1.0) / replicas))
        replica = float(int(replica * 4) / 4)  # quarter CPUs: a readable plan
        free = total - replicas * replica
        if free < 0.5:
            raise UsageError(
                f"--engine vllm with {replicas} replica(s) needs at least {replicas + 0.5:g} "
                f"CPUs (1 per replica plus 0.5 for preparing images), the Ray cluster has {total:g}; "
                "give it more (--num-cpus) or lower --concurrency / --replicas-per-gpu")
        return cls(total=total, replicas=replicas, replica=replica,
                   read_task=round(min(1.0, free), 4))

    @property
    def reserved(self) -> float:
        return self.replicas * self.replica


def model_side(size: int) -> int:
    """The side Qwen2.5-VL resizes a size x size image to (a multiple of 28)."""
    return max(QWEN_FACTOR, round(size / QWEN_FACTOR) * QWEN_FACTOR)


def image_tokens(size: int) -> int:
    """Image tokens Qwen2.5-VL spends on a size x size image (plus 2 marker tokens)."""
    return (model_side(size) // QWEN_FACTOR) ** 2


def engine_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The exact keyword arguments of each replica's ``vllm.LLM`` (JSON-able, for --plan)."""
    side = model_side(cfg.image_size)
    kwargs: dict[str, Any] = {
        **ENGINE_DEFAULTS,
        "model": cfg.model,
        "revision": cfg.model_revision,
        "max_model_len": cfg.max_model_len,
        # Tell vLLM the largest image it will see: one image per prompt, at most side x side
        # pixels. Without this it profiles and reserves memory for a ~16k-token worst case.
        "limit_mm_per_prompt": {"image": 1},
        "mm_processor_kwargs": {"min_pixels": QWEN_FACTOR * QWEN_FACTOR, "max_pixels": side * side},
    }
    share = cfg.gpu_share
    if is_cpu(cfg.accelerator_type):
        del kwargs["gpu_memory_utilization"]
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        kwargs.update(GPU_ENGINE_DEFAULTS)
    if share > 1 and not is_cpu(cfg.accelerator_type):
        # N engines on one GPU, so N Python loops feed it. Each is told its share of the memory,
        # and its KV cache size outright: vLLM sizes the cache by profiling the memory in use,
        # and engines that start together see each other's allocations there ("No available
        # memory for the cache blocks", measured on an H100).
        kwargs["gpu_memory_utilization"] = round(ENGINE_DEFAULTS["gpu_memory_utilization"] / share, 3)
        kwargs["kv_cache_memory_bytes"] = SHARED_GPU_KV_BYTES
    kwargs.update(dict(cfg.engine_kwargs))
    if int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1)) > 1:
        raise UsageError("--engine vllm runs one GPU (or a share of one) per replica: tensor and "
                         "pipeline parallelism are not supported; a 3B-class model fits one GPU")
    return kwargs


def batches_in_flight(cfg: RunConfig) -> int:
    """Engine batches each replica works on at once (see ROWS_IN_FLIGHT_PER_SEQ)."""
    if is_cpu(cfg.accelerator_type):
        return BATCHES_IN_FLIGHT
    rows = ROWS_IN_FLIGHT_PER_SEQ * int(engine_kwargs(cfg)["max_num_seqs"])  # ENGINE_DEFAULTS has one
    return max(BATCHES_IN_FLIGHT, -(-rows // cfg.engine_batch_size))


def sampling_params(cfg: RunConfig) -> dict[str, Any]:
    return {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


def local_cpus(cfg: RunConfig) -> float:
    """The CPUs a local Ray gets (as enrich starts it); --plan's estimate before Ray runs."""
    return float(cfg.num_cpus or max(2, os.cpu_count() or 2))
