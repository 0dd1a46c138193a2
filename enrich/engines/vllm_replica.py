"""One ``vllm`` engine replica (a Ray Data actor): a ``vllm.LLM``, the prompt every row shares,
the renderers that run vLLM's input processing beside it (:class:`ProcessRenderer`: spawned
processes, the GPU default; :class:`ThreadRenderer`: threads, for the CPU backend), and the
:class:`EngineLoop` that keeps the engine full across the replica's batches.

Pure parts: :func:`caption_from_output`, :func:`caption_outputs` (the prompt, :func:`render_prompt`,
is in ``vllm_render.py``). The engine's settings and its Ray adapter are in ``vllm.py``.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from enrich.engines.base import output_table
from enrich.engines.vllm_compat import engine_config, running_config
from enrich.engines.vllm_render import ProcessRenderer, ThreadRenderer, Unreadable, render_prompt

# How long a replica waits for its render processes to start (imports, vLLM's renderer).
RENDER_START_S = 300.0
# A replica logs the timing of its first batches: the last part of the time to the first row.
LOGGED_BATCHES = 2


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
        # One batch at a time hands its rows to the engine, in the order the batches came: the
        # first batch's rows all go in before the next one's, so it finishes (and its rows reach
        # the table) first, instead of both finishing late with their rows interleaved.
        self._turn = threading.Lock()
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
        with self._turn:
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
        except Unreadable as exc:
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

    logged_batches = LOGGED_BATCHES  # none logged by a replica made in tests without __init__

    def __init__(self, *, llm_kwargs: dict[str, Any], system_prompt: str, prompt: str,
                 params: dict[str, Any], render_threads: int, render_processes: int,
                 lookahead: int, engine_in_process: bool = False) -> None:
        t_start = time.time()
        if engine_in_process:
            # vLLM runs its engine core in a process of its own unless told otherwise; in a Ray
            # actor it must spawn it, and the new process imports torch and vLLM again before
            # the engine starts (~11 s on a 2-core VM's CPU build, ~16 s on an H200 host: PERFORMANCE.md).
            # In this process the loop thread steps the engine core directly and it starts
            # that much sooner. Set before vLLM is imported; VLLM_ENABLE_V1_MULTIPROCESSING=1 in
            # the environment keeps vLLM's own process.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

        import torch
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Parallelism comes from the render threads or processes; one intra-op thread each for
        # the image processor's small tensors.
        torch.set_num_threads(1)
        procs = None
        if render_processes > 0:
            # Started first, and given the engine's config before the engine starts: their
            # imports and their renderer's build overlap the engine's start-up.
            procs = ProcessRenderer(render_processes)
        t_imported = time.time()
        if procs is not None:
            try:
                procs.publish(engine_config(llm_kwargs), system_prompt, prompt)
            except Exception as exc:  # noqa: BLE001 - published from the engine itself below
                print(f"enrich: engine config not made ahead ({type(exc).__name__}: {exc}); the "
                      "render processes get the engine's own once it has started",
                      file=sys.stderr, flush=True)
        llm = LLM(**llm_kwargs)
        t_engine = time.time()
        sampling = SamplingParams(**params)
        sampling.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks: no streaming
        text = render_prompt(llm.get_tokenizer(), system_prompt, prompt)
        renderer: ThreadRenderer | ProcessRenderer | None = None
        if procs is not None:
            try:
                if not procs.published:
                    procs.publish(running_config(llm), system_prompt, prompt)
                procs.wait_ready(text, timeout_s=RENDER_START_S)
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
        t_ready = self.t_ready = time.time()
        self.logged_batches = 0
        print(f"enrich: replica start-up {t_ready - t_start:.1f} s: imports {t_imported - t_start:.1f} s, "
              f"engine {t_engine - t_imported:.1f} s, renderer {t_ready - t_engine:.1f} s more "
              f"[t_start={t_start:.3f} t_ready={t_ready:.3f}]", file=sys.stderr, flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        t_called = time.time()
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
        if self.logged_batches < LOGGED_BATCHES:
            self.logged_batches += 1
            index = batch.column("source_index")
            print(f"enrich: replica batch {self.logged_batches} of {batch.num_rows} rows "
                  f"({index[0]}..{index[-1]}): taken {t_called - self.t_ready:.1f} s after ready, "
                  f"done {time.time() - self.t_ready:.1f} s after ready", file=sys.stderr, flush=True)
        return caption_outputs(batch, results)
