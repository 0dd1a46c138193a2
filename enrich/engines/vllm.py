"""The ``vllm`` engine: Qwen2.5-VL on vLLM through Ray Data LLM (``ray.data.llm``), on GPU workers.

Pure parts (no Ray, no vllm): :func:`processor_config_kwargs`, :func:`build_messages`,
:class:`Preprocess`, :class:`Postprocess`, :func:`normalize_row`. The Ray adapter,
:class:`VLLMEngine`, builds the processor once per run with ``build_processor`` and applies it
to the run's one dataset, so each replica loads the model once.

Rows that must not reach the model (rejected images) ride through the processor untouched:
Ray Data LLM lets any row whose ``__inference_error__`` is non-empty bypass every stage and
the postprocess; we mark them with :data:`BYPASS`. Every other row must carry an explicit ``""``
there: a block that mixes rows gets ``None`` filled in, which the stages would also read as
an error.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from enrich.errors import NoAcceleratorError, UsageError

if TYPE_CHECKING:
    import ray.data

    from enrich.config import RunConfig

BYPASS = "enrich:bypass"
ERROR_KEY = "__inference_error__"
# Qwen2.5-VL: 14 px patches merged 2x2, so image sides are rounded to multiples of 28.
QWEN_FACTOR = 28
# vLLM engine defaults we choose, each overridable with --engine-kwargs (PERFORMANCE.md has
# the arithmetic):
# - max_num_seqs 256: a caption needs ~116 prompt (64 of them image) + ~100 generated tokens at
#   36 KB of KV cache per token (36 layers x 2 KV heads x 128 x K,V x bf16), so 256 sequences
#   hold ~2 GB of KV, well inside the ~12 GB an L4 has left after weights; decode of a 3B model
#   stays memory-bandwidth bound up to about this batch, so fewer sequences waste the GPU.
# - enable_prefix_caching: every prompt starts with the same system prompt and template.
# - gpu_memory_utilization 0.90: room for the CUDA graphs and the vision encoder activations.
ENGINE_DEFAULTS: dict[str, Any] = {
    "max_num_seqs": 256,
    "enable_prefix_caching": True,
    "gpu_memory_utilization": 0.90,
    "dtype": "bfloat16",
}


# --accelerator-type cpu: the replica runs vLLM's CPU backend. There vLLM reads
# gpu_memory_utilization as a share of host RAM (0.9 of it!), so the KV cache is sized explicitly.
CPU = "cpu"
CPU_KV_CACHE_BYTES = 512 * 2**20
# KV cache of each engine when several share a GPU (--replicas-per-gpu > 1): 6 GiB is ~170k
# tokens of Qwen2.5-VL-3B (36 KB each), ~3x what max_num_seqs 256 captions of ~220 tokens hold.
SHARED_GPU_KV_BYTES = 6 * 2**30
# Ray Data LLM's CPU stages (prepare-multimodal, chat template, tokenize, detokenize): one actor
# pool each, sized like the engine's. Their work per row is small (a 225² JPEG decode, a template,
# a tokenizer call), so they reserve a fraction of a CPU; see CpuPlan.
CPU_STAGES = ("prepare_multimodal_stage", "chat_template_stage", "tokenize_stage",
              "detokenize_stage")


def is_cpu(accelerator_type: str | None) -> bool:
    return (accelerator_type or "").lower() == CPU


@dataclass(frozen=True)
class CpuPlan:
    """What each part of a run reserves of the cluster's CPUs, so that every stage can start.

    Ray admits an actor or task only when its ``num_cpus`` are free, and actors keep theirs for
    the whole run. With Ray Data LLM's defaults (1 CPU per stage actor) a run needs
    replicas x 5 + 1 CPUs before the first row moves, and on fewer it waits forever (FACTS.md).
    Here: each engine replica keeps one CPU (on a GPU node for its Python loop, on the CPU
    backend for the model); the CPU stages' actors share at most half of what is left; every
    task (enrich's prepare, the pre/post-processing maps) fits in what the actors leave free, so
    one of each can always run."""

    total: float
    replicas: int
    replica: float = 1.0
    stage_actor: float = 0.0
    prepare_task: float = 0.0
    map_task: float = 0.0

    @classmethod
    def fit(cls, total: float, replicas: int) -> CpuPlan:
        free = total - replicas * 1.0
        if free < 0.5:
            raise UsageError(
                f"--engine vllm with {replicas} replica(s) needs at least {replicas + 0.5:g} "
                f"CPUs (1 per replica plus 0.5 for the CPU stages), the Ray cluster has {total:g}; "
                "give it more (--num-cpus) or lower --concurrency / --replicas-per-gpu")
        n_actors = len(CPU_STAGES) * replicas
        stage_actor = min(1.0, free / 2 / n_actors)
        left = free - n_actors * stage_actor
        return cls(total=total, replicas=replicas, stage_actor=round(stage_actor, 4),
                   prepare_task=round(min(1.0, left), 4), map_task=round(min(0.25, left), 4))

    @property
    def reserved(self) -> float:
        return self.replicas * self.replica + len(CPU_STAGES) * self.replicas * self.stage_actor


def image_tokens(size: int) -> int:
    """Image tokens Qwen2.5-VL spends on a size x size image (plus 2 marker tokens)."""
    side = max(QWEN_FACTOR, round(size / QWEN_FACTOR) * QWEN_FACTOR)
    return (side // QWEN_FACTOR) ** 2


def processor_config_kwargs(cfg: RunConfig, cpus: CpuPlan | None = None) -> dict[str, Any]:
    """The exact keyword arguments for ``vLLMEngineProcessorConfig`` (JSON-able, for --plan)."""
    # Without a plan fitted to a cluster: a nominal one, as if every stage had a CPU of its own.
    cpus = cpus or CpuPlan.fit(max(local_cpus(cfg), cfg.replicas * 5 + 1.0), cfg.replicas)
    on_cpu = is_cpu(cfg.accelerator_type)
    side = max(QWEN_FACTOR, round(cfg.image_size / QWEN_FACTOR) * QWEN_FACTOR)
    # Tell vLLM the largest image it will see: one image per prompt, at most side x side pixels.
    # Without this it profiles and reserves memory for a ~16k-token worst-case image.
    mm_processor_kwargs = {"min_pixels": QWEN_FACTOR * QWEN_FACTOR, "max_pixels": side * side}
    engine_kwargs: dict[str, Any] = {
        **ENGINE_DEFAULTS,
        "max_model_len": cfg.max_model_len,
        "revision": cfg.model_revision,
        "limit_mm_per_prompt": {"image": 1},
        "mm_processor_kwargs": mm_processor_kwargs,
    }
    share = cfg.gpu_share
    if on_cpu:
        del engine_kwargs["gpu_memory_utilization"]
        engine_kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    elif share > 1:
        # N engines on one GPU, so N scheduler loops feed it (PERFORMANCE.md: one engine's loop is
        # the bound). Each is told its share of the memory, and its KV cache size outright: vLLM
        # sizes the cache by profiling the memory in use, and engines that start together see
        # each other's allocations there ("No available memory for the cache blocks", measured
        # on an H100). SHARED_GPU_KV_BYTES holds max_num_seqs x ~220-token captions many times.
        engine_kwargs["gpu_memory_utilization"] = round(ENGINE_DEFAULTS["gpu_memory_utilization"] / share, 3)
        engine_kwargs["kv_cache_memory_bytes"] = SHARED_GPU_KV_BYTES
    engine_kwargs.update(dict(cfg.engine_kwargs))
    if share > 1 and int(engine_kwargs.get("tensor_parallel_size", 1)) * int(
            engine_kwargs.get("pipeline_parallel_size", 1)) > 1:
        raise UsageError("--replicas-per-gpu > 1 cannot be combined with tensor or pipeline parallelism")
    stage = {"enabled": True, "num_cpus": cpus.stage_actor}
    placement: dict[str, Any] = {}
    if on_cpu:
        # No GPU in the replica's resources: one CPU bundle per replica instead.
        placement = {"placement_group_config": {"bundles": [{"CPU": cpus.replica}]}}
    elif share > 1:
        placement = {"placement_group_config": {"bundles": [{"GPU": round(1 / share, 4),
                                                             "CPU": cpus.replica}]}}
    return {
        "model_source": cfg.model,
        "engine_kwargs": engine_kwargs,
        "batch_size": cfg.batch_size,
        # (n, n): a fixed pool of n replicas. A bare n lets Ray autoscale from 1 to n, and each
        # replica that scales in and out again reloads the model.
        "concurrency": [cfg.replicas, cfg.replicas],
        "accelerator_type": None if on_cpu else cfg.accelerator_type,
        **placement,
        # Rows whose generation raises become `failed` rows instead of ending the run.
        "should_continue_on_error": True,
        # Several batches in flight per replica, so the GPU never waits on the next batch.
        "max_concurrent_batches": 4,
        "prepare_multimodal_stage": {
            **stage,
            "model_config_kwargs": {
                "revision": cfg.model_revision,
                "limit_mm_per_prompt": {"image": 1},
                "mm_processor_kwargs": mm_processor_kwargs,
            },
        },
        "chat_template_stage": dict(stage),
        "tokenize_stage": dict(stage),
        "detokenize_stage": dict(stage),
    }


def local_cpus(cfg: RunConfig) -> float:
    """The CPUs a local Ray gets (as enrich starts it); --plan's estimate before Ray runs."""
    return float(cfg.num_cpus or max(2, os.cpu_count() or 2))


def sampling_params(cfg: RunConfig) -> dict[str, Any]:
    return {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


def image_data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def build_messages(jpeg: bytes, *, system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    """OpenAI-style chat messages as vLLM's chat parser reads them: an ``image_url`` part holding
    the prepared JPEG as a data URL, then the text part. Every message uses a list of parts, so
    the Arrow blocks between stages see one content type."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(jpeg)}},
            {"type": "text", "text": prompt},
        ]},
    ]


class Preprocess:
    """Row → what the processor's stages need. Non-pending rows are marked to bypass them."""

    def __init__(self, *, size: int, system_prompt: str, prompt: str, params: dict[str, Any]) -> None:
        self.size, self.system_prompt, self.prompt, self.params = size, system_prompt, prompt, params

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != "pending":
            return {"image_jpeg": None, ERROR_KEY: BYPASS}
        messages = build_messages(row["image_jpeg"], system_prompt=self.system_prompt,
                                  prompt=self.prompt)
        # the bytes column is dropped here: the data URL carries the image through the stages.
        return {"image_jpeg": None, "messages": messages, "sampling_params": dict(self.params),
                ERROR_KEY: ""}


class Postprocess:
    """A generated row → the engine output columns (only rows that reached the model)."""

    def __init__(self, *, max_tokens: int) -> None:
        self.max_tokens = max_tokens

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        text = (row.get("generated_text") or "").strip()
        tokens = row.get("num_generated_tokens")
        tokens = int(tokens) if tokens is not None else None
        ok = bool(text)
        return {
            "source_index": row["source_index"],
            "status": "captioned" if ok else "failed",
            "error": None if ok else "engine returned an empty caption",
            "caption": text if ok else None,
            "num_generated_tokens": tokens,
            # vLLM reports no finish reason: a caption that used every allowed token was cut off.
            "caption_truncated": tokens is not None and tokens >= self.max_tokens,
            "image_width": row.get("image_width"),
            "image_height": row.get("image_height"),
        }


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """After the processor: bypassed and errored rows arrive with the full internal column set
    (they skip postprocess); map every row to the engine output columns."""
    marker = row.get(ERROR_KEY) or ""
    if marker == BYPASS:
        status, error = row["status"], row.get("error")
    elif marker:
        status, error = "failed", f"engine error: {marker}"[:2000]
    else:
        status, error = row["status"], row.get("error")
    captioned = status == "captioned"
    return {
        "source_index": int(row["source_index"]),
        "status": status,
        "error": error,
        "caption": row.get("caption") if captioned else None,
        "num_generated_tokens": row.get("num_generated_tokens") if captioned else None,
        "caption_truncated": row.get("caption_truncated") if captioned else None,
        "image_width": row.get("image_width"),
        "image_height": row.get("image_height"),
    }


def _quiet_start_up() -> None:
    """Start-up chatter that says nothing to an operator, at INFO/WARNING in the driver:
    ``build_processor`` calls ``ray.init()`` on a connected driver ("Calling ray.init() again"),
    Ray Data LLM reports that no cloud mirror is configured, and importing vllm on a host
    without a GPU Triton warns that Triton is disabled. Errors still show."""
    import logging

    logging.getLogger("ray._private.worker").setLevel(logging.WARNING)
    # Ray Data LLM gives each of its loggers an INFO console handler of its own, unless the
    # "ray.llm" logger already has a handler: give it one, so they all defer to its level.
    llm = logging.getLogger("ray.llm")
    llm.setLevel(logging.WARNING)
    if not llm.handlers:
        llm.addHandler(logging.NullHandler())
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.llm."):
            logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the driver's vllm import only


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.cpus: CpuPlan | None = None  # fitted to the cluster by check_cluster

    def _cpu_plan(self) -> CpuPlan:
        if self.cpus is not None:
            return self.cpus
        if self.cfg.ray_address:  # the cluster's size is known only once connected
            return CpuPlan.fit(max(local_cpus(self.cfg), self.cfg.replicas * 5 + 1.0),
                               self.cfg.replicas)
        return CpuPlan.fit(local_cpus(self.cfg), self.cfg.replicas)

    def describe(self) -> dict[str, Any]:
        tp = int(self.cfg.engine_kwargs.get("tensor_parallel_size", 1))
        pp = int(self.cfg.engine_kwargs.get("pipeline_parallel_size", 1))
        cpus = self._cpu_plan()
        return {
            "engine": "vllm",
            "device": "cpu" if is_cpu(self.cfg.accelerator_type) else "gpu",
            "processor_config": processor_config_kwargs(self.cfg, cpus),
            "sampling_params": sampling_params(self.cfg),
            "gpus_per_replica": 0 if is_cpu(self.cfg.accelerator_type) else tp * pp / self.cfg.gpu_share,
            "replicas": self.cfg.replicas,
            "cpus": {"cluster": cpus.total, "per_replica": cpus.replica,
                     "per_cpu_stage_actor": cpus.stage_actor, "per_prepare_task": cpus.prepare_task,
                     "per_map_task": cpus.map_task},
            "image_tokens_per_image": image_tokens(self.cfg.image_size),
        }

    def processor_config(self) -> Any:
        try:
            from ray.data.llm import vLLMEngineProcessorConfig
        except ImportError as exc:
            raise UsageError(f"--engine vllm needs Ray Data LLM: pip install 'enrich[gpu]' ({exc})") from None
        return vLLMEngineProcessorConfig(**processor_config_kwargs(self.cfg, self._cpu_plan()))

    def check_cluster(self) -> None:
        """Ray waits forever for a GPU that no node has, or for CPUs that its actors already hold
        (FACTS.md): look before we ask, and size the CPU stages to the cluster."""
        import ray

        self.cpus = CpuPlan.fit(float(ray.cluster_resources().get("CPU", 0)), self.cfg.replicas)
        if is_cpu(self.cfg.accelerator_type):
            return
        acc = self.cfg.accelerator_type
        need = self.describe()["gpus_per_replica"] * self.cfg.replicas
        deadline = time.monotonic() + self.cfg.gpu_wait_s
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            gpus = sum(n["Resources"].get("GPU", 0) for n in nodes
                       if not acc or n["Resources"].get(f"accelerator_type:{acc}", 0) > 0)
            if gpus >= need:
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

    def prepare_cpus(self) -> float:
        return self._cpu_plan().prepare_task

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        _quiet_start_up()
        from ray.data.llm import build_processor

        cfg = self.cfg
        light: dict[str, Any] = {"num_cpus": self._cpu_plan().map_task}
        processor = build_processor(
            self.processor_config(),
            preprocess=Preprocess(size=cfg.image_size, system_prompt=cfg.system_prompt,
                                  prompt=cfg.prompt, params=sampling_params(cfg)),
            postprocess=Postprocess(max_tokens=cfg.max_tokens),
            preprocess_map_kwargs=light, postprocess_map_kwargs=light,
        )
        return processor(ds).map(normalize_row, num_cpus=light["num_cpus"])
