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

Pure parts (no Ray, no vllm): :func:`engine_kwargs`, :class:`CpuPlan`, :func:`render_prompt`,
:func:`caption_from_output`, :func:`caption_outputs`. The Ray adapter is :class:`VLLMEngine`;
the replica is :class:`VLLMCaptioner`.
"""

from __future__ import annotations

import io
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from enrich.engines.base import output_table
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
RENDER_START_S = 300.0
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
    the whole run: a run whose actors take every CPU waits forever for its prepare tasks. Each
    engine replica keeps the CPUs it wants (on a GPU: its render processes, engine loop and vLLM's
    engine-core process; on the CPU backend: the model's core) where the cluster has them to
    spare, never fewer than one; a prepare task may take what is left, up to one CPU, so that
    one can always run."""

    total: float
    replicas: int
    replica: float = 1.0
    prepare_task: float = 0.0

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
                   prepare_task=round(min(1.0, free), 4))

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


def chat(system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    """The conversation every row sends: the system prompt, then one image and the prompt."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
    ]


IMAGE_PLACEHOLDER = "<|image_pad|>"


def render_prompt(tokenizer: Any, system_prompt: str, prompt: str) -> str:
    """The model's chat template applied once: the prompt text every row shares. vLLM expands
    its one image placeholder into the image's tokens."""
    text = tokenizer.apply_chat_template(chat(system_prompt, prompt), tokenize=False,
                                         add_generation_prompt=True)
    if text.count(IMAGE_PLACEHOLDER) != 1:
        raise UsageError(f"the model's chat template did not place one image ({IMAGE_PLACEHOLDER}) "
                         "in the prompt: --engine vllm supports Qwen2-VL-family models")
    return str(text)


@dataclass
class Caption:
    """One row's outcome from the engine."""

    text: str | None = None
    tokens: int | None = None
    truncated: bool | None = None
    error: str | None = None


def caption_from_output(output: Any) -> Caption:
    """A finished ``vllm.RequestOutput`` → the row's caption (pure: reads attributes only)."""
    completion = output.outputs[0]
    text = (completion.text or "").strip()
    tokens = len(completion.token_ids)
    if not text:
        return Caption(tokens=tokens, error="engine returned an empty caption")
    return Caption(text=text, tokens=tokens, truncated=completion.finish_reason == "length")


def caption_outputs(batch: pa.Table, results: dict[int, Caption]) -> pa.Table:
    """The engine output rows of ``batch``: rows at the positions in ``results`` get their
    caption (or failure); every other row passes through with its own status."""
    status = batch.column("status").to_pylist()
    errors = batch.column("error").to_pylist()
    n = batch.num_rows
    captions: list[str | None] = [None] * n
    tokens: list[int | None] = [None] * n
    truncated: list[bool | None] = [None] * n
    for i, c in results.items():
        if c.error is not None:
            status[i], errors[i] = "failed", c.error[:2000]
        else:
            status[i], errors[i] = "captioned", None
            captions[i], tokens[i], truncated[i] = c.text, c.tokens, c.truncated
    return output_table(batch, status, errors, captions, tokens, truncated)


class EngineDead(RuntimeError):
    """The replica's engine stopped (its core process died, CUDA failed): no row is to blame."""


class _Unreadable(ValueError):
    """A row's prepared JPEG did not decode (its row fails, worded as such)."""


def _decode(jpeg: bytes) -> Any:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(jpeg)).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - prepare made this JPEG; never expected
        raise _Unreadable(f"prepared image unreadable: {type(exc).__name__}: {exc}") from exc


class ThreadRenderer:
    """vLLM's input processing (decode the prepared JPEG, the HF image processor, the tokenizer)
    in threads of the replica's own process: ``LLM``'s own render step, the same call
    ``LLM.generate`` makes per prompt. Most of it holds the GIL, so threads add little; used on
    the CPU backend, where the model itself is the bound."""

    def __init__(self, llm: Any, prompt: str, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.llm, self.prompt = llm, prompt
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="enrich-render")

    def submit(self, jpeg: bytes) -> Any:
        return self.pool.submit(self._render, jpeg)

    def _render(self, jpeg: bytes) -> Any:
        return self.llm._preprocess_cmpl_one(
            {"prompt": self.prompt, "multi_modal_data": {"image": _decode(jpeg)}}, None)

    @staticmethod
    def load(result: Any) -> Any:
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# The render processes' own state (one renderer per process, built on its first row).
_PROCESS: dict[str, Any] = {}


def _render_process_init(config_file: str) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: no intra-op threads for small tensors
    _PROCESS["config_file"] = config_file
    import vllm.renderers  # noqa: F401 - the slow imports, done while the engine starts


def _render_process_ready() -> bool:
    return True


def _render_in_process(jpeg: bytes) -> bytes:
    """One row's processed request, pickled. What ``LLM._preprocess_cmpl_one`` does (vLLM
    0.24–0.29: parse the prompt, ``render_cmpl`` with the default tokenization), on a renderer
    built from the replica's own engine config, so the request is the one its engine would
    have made (tests compare the captions)."""
    import pickle

    if "renderer" not in _PROCESS:
        from vllm.renderers import renderer_from_config

        with open(_PROCESS["config_file"], "rb") as f:
            config, _PROCESS["prompt"] = pickle.load(f)
        _PROCESS["model_config"] = config.model_config
        _PROCESS["renderer"] = renderer_from_config(config)
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    renderer = _PROCESS["renderer"]
    prompt = parse_model_prompt(_PROCESS["model_config"], {
        "prompt": _PROCESS["prompt"], "multi_modal_data": {"image": _decode(jpeg)}})
    (engine_input,) = renderer.render_cmpl([prompt], renderer.default_cmpl_tok_params)
    return pickle.dumps(engine_input, protocol=pickle.HIGHEST_PROTOCOL)


class ProcessRenderer:
    """vLLM's input processing in ``processes`` separate processes (spawned, each with its own
    GIL), the processed requests pickled back (~0.3 MB each, tensors included) and handed to
    the replica's engine as ``LLM`` would hand its own. On one H200 a replica's input
    processing in threads ran ~1.2 threads' worth (PERFORMANCE.md).

    The processes start before the engine is built (their imports overlap its start-up) and
    read the engine's config and the prompt, written to ``config_file`` once the engine exists,
    on their first row."""

    def __init__(self, processes: int, config_file: str) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.config_file = config_file
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_render_process_init,
                                        initargs=(config_file,))
        # one task per process: the pool starts a process for each while none is idle
        self.started = [self.pool.submit(_render_process_ready) for _ in range(processes)]

    def publish(self, engine_config: Any, prompt: str, timeout_s: float) -> None:
        """Hand the engine's config and the prompt to the processes (before the first row), and
        wait until each process has started: raises if one could not."""
        import pickle

        tmp = f"{self.config_file}.part"
        with open(tmp, "wb") as f:
            pickle.dump((engine_config, prompt), f)
        os.replace(tmp, self.config_file)
        for fut in self.started:
            fut.result(timeout=timeout_s)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, jpeg: bytes) -> Any:
        return self.pool.submit(_render_in_process, jpeg)

    @staticmethod
    def load(result: bytes) -> Any:
        import pickle

        return pickle.loads(result)


class _Batch:
    """One caller's rows on their way through the engine loop."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.results: dict[int, Caption] = {}
        self.done = threading.Event()
        # finished from the caller's thread (a refused render) and the loop's (a caption)
        self._lock = threading.Lock()

    def finish(self, pos: int, caption: Caption) -> None:
        with self._lock:
            self.results[pos] = caption
            self.left -= 1
            if self.left == 0:
                self.done.set()


class EngineLoop:
    """Owns a ``vllm.LLM``'s engine: one thread adds rendered requests and steps the engine, for
    every batch in flight on this replica, so the engine keeps ``max_num_seqs`` sequences
    running across batch boundaries instead of draining at the end of each batch.

    The multimodal input processing (the HF image processor, the tokenizer) is the costly part
    per row outside the GPU and ran serially in ``LLM.generate``; here callers hand it to the
    ``renderer`` (a process or thread pool) while the loop thread alone talks to the engine (its
    sockets are not thread-safe). ``lookahead`` bounds the rendered requests held per replica
    (each holds its image's pixel tensor): a row's JPEG goes to the renderer only when its slot
    is free, not a whole batch at once ahead of the engine."""

    def __init__(self, llm: Any, params: Any, *, renderer: Any, lookahead: int) -> None:
        self.params, self.renderer = params, renderer
        self.engine = llm.llm_engine
        self.slots = threading.Semaphore(lookahead)
        self.inbox: queue.Queue[tuple[str, Any, _Batch, int]] = queue.Queue()
        self.waiting: dict[str, tuple[_Batch, int]] = {}
        self.ids = itertools.count()
        self.dead: BaseException | None = None
        threading.Thread(target=self._run, name="enrich-engine", daemon=True).start()

    def caption(self, images: list[tuple[int, bytes]]) -> dict[int, Caption]:
        """Caption ``images`` (position, prepared JPEG); returns position → caption. Raises
        :class:`EngineDead` when the engine stops."""
        if not images:
            return {}
        batch = _Batch(len(images))
        futures: list[tuple[int, Any]] = []
        for pos, jpeg in images:
            while not self.slots.acquire(timeout=0.05):
                self._hand_over_done(batch, futures)
            if self.dead is not None:
                raise EngineDead(str(self.dead))
            futures.append((pos, self.renderer.submit(jpeg)))
            self._hand_over_done(batch, futures)
        for pos, fut in futures:
            self._hand_over(batch, pos, fut)
        while not batch.done.wait(1.0):
            if self.dead is not None:
                raise EngineDead(str(self.dead))
        return batch.results

    def _hand_over_done(self, batch: _Batch, futures: list[tuple[int, Any]]) -> None:
        """Hand the rendered requests at the head of ``futures`` to the loop, in order."""
        while futures and futures[0][1].done():
            self._hand_over(batch, *futures.pop(0))

    def _hand_over(self, batch: _Batch, pos: int, fut: Any) -> None:
        from concurrent.futures import BrokenExecutor

        try:
            rendered = self.renderer.load(fut.result())
        except BrokenExecutor as exc:  # a render process died: the replica, not the row
            raise EngineDead(f"render pool broken: {exc}") from exc
        except _Unreadable as exc:
            self.slots.release()
            batch.finish(pos, Caption(error=str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - vLLM refused this row's input: the row fails
            self.slots.release()
            batch.finish(pos, Caption(error=f"engine error: {type(exc).__name__}: {exc}"))
            return
        self.inbox.put((str(next(self.ids)), rendered, batch, pos))

    def _add_queued(self, block: bool) -> None:
        while True:
            try:
                rid, rendered, batch, pos = self.inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            try:
                self.engine.add_request(rid, rendered, self.params)
            except Exception as exc:  # noqa: BLE001 - refused at admission: the row fails
                if _fatal(exc):
                    raise
                self.slots.release()
                batch.finish(pos, Caption(error=f"engine error: {type(exc).__name__}: {exc}"))
                continue
            self.waiting[rid] = (batch, pos)

    def _run(self) -> None:
        try:
            while True:
                self._add_queued(block=not self.engine.has_unfinished_requests())
                if not self.engine.has_unfinished_requests():
                    continue
                for out in self.engine.step():
                    if out.finished and out.request_id in self.waiting:
                        batch, pos = self.waiting.pop(out.request_id)
                        self.slots.release()
                        batch.finish(pos, caption_from_output(out))
        except BaseException as exc:  # noqa: BLE001 - every caller learns that the engine is gone
            self.dead = exc  # callers see it within a second and end the replica
            self.slots.release(1_000_000)


def _fatal(exc: BaseException) -> bool:
    """An error that leaves the engine unusable (its core process died): no row is to blame."""
    return type(exc).__name__ in ("EngineDeadError", "EngineGenerateError") or isinstance(
        exc, (MemoryError, SystemError))


class VLLMCaptioner:
    """One engine replica (a Ray actor): a ``vllm.LLM``, the prompt every row shares, and the
    loop that feeds it. Ray Data runs two batches on it at once (``BATCHES_IN_FLIGHT``)."""

    def __init__(self, *, llm_kwargs: dict[str, Any], system_prompt: str, prompt: str,
                 params: dict[str, Any], render_threads: int, render_processes: int,
                 lookahead: int) -> None:
        import sys
        import tempfile

        t_start = time.time()

        import torch
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Parallelism comes from the render threads or processes; one intra-op thread each for
        # the image processor's small tensors.
        torch.set_num_threads(1)
        procs = None
        if render_processes > 0:  # started first: their imports overlap the engine's start-up
            procs = ProcessRenderer(render_processes,
                                    os.path.join(tempfile.mkdtemp(prefix="enrich-render-"), "engine.pkl"))
        t_imported = time.time()
        llm = LLM(**llm_kwargs)
        t_engine = time.time()
        sampling = SamplingParams(**params)
        sampling.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks: no streaming
        text = render_prompt(llm.get_tokenizer(), system_prompt, prompt)
        renderer: ThreadRenderer | ProcessRenderer | None = None
        if procs is not None:
            try:
                procs.publish(llm.llm_engine.vllm_config, text, timeout_s=RENDER_START_S)
                renderer = procs
            except Exception as exc:  # noqa: BLE001 - slower, not wrong: the replica still runs
                procs.close()
                print(f"enrich: render processes did not start ({type(exc).__name__}: {exc}); "
                      f"rendering in {render_threads} threads instead", file=sys.stderr, flush=True)
        if renderer is None:
            renderer = ThreadRenderer(llm, text, render_threads)
        self.llm, self.renderer = llm, renderer
        self.loop = EngineLoop(llm, sampling, renderer=renderer, lookahead=lookahead)
        # One line in the replica's log (Ray's worker logs) that splits its start-up; the GPU
        # benchmark reads it to break down the time to the first committed row.
        t_ready = time.time()
        print(f"enrich: replica start-up {t_ready - t_start:.1f} s: imports {t_imported - t_start:.1f} s, "
              f"engine {t_engine - t_imported:.1f} s, renderer {t_ready - t_engine:.1f} s more "
              f"[t_start={t_start:.3f} t_ready={t_ready:.3f}]", file=sys.stderr, flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        status = batch.column("status").to_pylist()
        jpegs = batch.column("image_jpeg").to_pylist()
        pending: list[tuple[int, bytes]] = []
        for i, s in enumerate(status):
            if s != "pending":
                continue
            if jpegs[i] is None:  # a pending row always carries its prepared image
                raise ValueError(f"row {batch.column('source_index')[i]} is pending without an image")
            pending.append((i, jpegs[i]))
        try:
            results = self.loop.caption(pending)
        except EngineDead:
            # Ray restarts the actor (a fresh engine) and retries its batches; nothing of them
            # was committed. Raising instead would fail the whole dataset.
            import traceback

            traceback.print_exc()
            os._exit(1)
        return caption_outputs(batch, results)


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
                     "per_prepare_task": cpus.prepare_task},
            "render_processes_per_replica": self.render_processes,
            "render_threads_per_replica": self.render_threads,
            "batches_in_flight_per_replica": BATCHES_IN_FLIGHT,
            "image_tokens_per_image": image_tokens(self.cfg.image_size),
        }

    def check_cluster(self) -> None:
        """Ray waits forever for a GPU that no node has, or for CPUs that its actors already hold
        (Ray admits an actor only when its resources are free): look before we ask, and size the
        prepare tasks to the cluster."""
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

    def prepare_cpus(self) -> float:
        return self._cpu_plan().prepare_task

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
                lookahead=2 * int(llm_kwargs.get("max_num_seqs", 256))),
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
