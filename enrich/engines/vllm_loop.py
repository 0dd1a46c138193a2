"""A replica's engine loop: one thread owns the ``vllm.LLM`` engine, adds the requests its
renderer has processed and steps the engine, for the batches a replica works on at once (the
older one's rows first), and hands each finished request back as a :class:`Caption`. Pure
parts: :func:`caption_from_output`, :func:`caption_outputs`."""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from enrich.engines.base import output_table
from enrich.engines.vllm_render import Unreadable


@dataclass
class Caption:
    """One row's outcome from the engine."""

    text: str | None = None
    tokens: int | None = None
    truncated: bool | None = None
    error: str | None = None


def caption_from_output(output: Any, text: str | None = None) -> Caption:
    """A finished ``vllm.RequestOutput`` → the row's caption (pure: reads attributes only).
    ``text``: its tokens decoded here, where the engine was asked not to detokenize."""
    completion = output.outputs[0]
    text = ((completion.text if text is None else text) or "").strip()
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
        # position -> a Caption (a refused row) or the finished vllm.RequestOutput
        self.results: dict[int, Any] = {}
        self.done = threading.Event()
        # finished from the caller's thread (a refused render) and the loop's (a caption)
        self._lock = threading.Lock()

    def finish(self, pos: int, caption: Any) -> None:
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
    is free, not a whole batch at once ahead of the engine.

    ``decode`` (token id lists → texts): where the sampling parameters ask vLLM not to
    detokenize, a batch's captions are decoded at once in the caller's thread when the batch is
    done, instead of token by token in the loop thread at every engine step (vLLM's incremental
    detokenizer: ~100 calls per caption in the thread that must keep the GPU fed)."""

    # How long the first batch at an idle replica waits for the others Ray sent with it (they
    # start within milliseconds); a 256-row batch takes seconds.
    SETTLE_S = 0.05

    def __init__(self, llm: Any, params: Any, *, renderer: Any, lookahead: int,
                 decode: Any = None) -> None:
        self.params, self.renderer, self.decode = params, renderer, decode
        self.engine = llm.llm_engine
        self.slots = threading.Semaphore(lookahead)
        # One batch at a time hands its rows to the engine, the one earliest in source order
        # first: its rows all go in before the next one's, so it finishes (and its rows reach
        # the table, which commits in source order) first, instead of both finishing late with
        # their rows interleaved. Ray starts a replica's batches in threads in no set order
        # (on 2026-12-07's H100 lease the batch of rows 0..255 went in third of four and the
        # first commit waited ~7 s for it), so turns go by the batch's source position, not
        # by arrival; at an idle replica the first batch waits SETTLE_S for the others sent
        # with it before the earliest goes.
        self._turns = threading.Condition()
        self.tickets = 0  # batches that have asked for a turn
        self._queued: list[tuple[int, int]] = []  # (key, arrival) of the batches waiting, a heap
        self._holder: tuple[int, int] | None = None  # the batch handing its rows over
        self._settle_until: float | None = None
        self.inbox: queue.Queue[tuple[str, Any, _Batch, int]] = queue.Queue()
        self.waiting: dict[str, tuple[_Batch, int]] = {}
        self.ids = itertools.count()
        self.dead: BaseException | None = None
        threading.Thread(target=self._run, name="enrich-engine", daemon=True).start()

    def caption(self, images: list[tuple[int, bytes]], key: int) -> dict[int, Caption]:
        """Caption ``images`` (position, prepared JPEG); returns position → caption. ``key``
        (the batch's first source index) orders its turn among the batches waiting; equal keys
        go in arrival order. Raises :class:`EngineDead` when the engine stops."""
        if not images:
            return {}
        batch = _Batch(len(images))
        futures: list[tuple[int, Any]] = []
        self._take_turn(key)
        try:
            for pos, jpeg in images:
                while not self.slots.acquire(timeout=0.05):
                    self._hand_over_done(batch, futures)
                if self.dead is not None:
                    raise EngineDead(str(self.dead))
                try:
                    futures.append((pos, self.renderer.submit(jpeg)))
                except BrokenExecutor as exc:  # a render process died before this row went in
                    raise EngineDead(f"render pool broken: {exc}") from exc
                self._hand_over_done(batch, futures)
            for pos, fut in futures:
                self._hand_over(batch, pos, fut)
        finally:  # the next batch's turn, whatever became of this one
            with self._turns:
                self._holder = None
                self._turns.notify_all()
        while not batch.done.wait(1.0):
            if self.dead is not None:
                raise EngineDead(str(self.dead))
        return self._captions(batch.results)

    def _take_turn(self, key: int) -> None:
        """Wait until this batch is the earliest waiting and no batch holds the turn."""
        with self._turns:
            me = (key, self.tickets)
            self.tickets += 1
            heapq.heappush(self._queued, me)
            idle = self._holder is None and not self.waiting and self.inbox.empty()
            if idle and self._settle_until is None:
                self._settle_until = time.monotonic() + self.SETTLE_S
            while True:
                if self._holder is None and self._queued[0] == me:
                    left = (self._settle_until or 0.0) - time.monotonic()
                    if left <= 0:
                        break
                    self._turns.wait(left)
                else:
                    self._turns.wait()
            heapq.heappop(self._queued)
            self._holder, self._settle_until = me, None

    def _captions(self, results: dict[int, Any]) -> dict[int, Caption]:
        """Finished outputs → captions, their texts decoded in one call where ``decode`` is set."""
        done = [(pos, out) for pos, out in results.items() if not isinstance(out, Caption)]
        texts: list[str | None] = [None] * len(done)
        if self.decode is not None and done:
            texts = list(self.decode([out.outputs[0].token_ids for _, out in done]))
        captions = {pos: c for pos, c in results.items() if isinstance(c, Caption)}
        for (pos, out), text in zip(done, texts, strict=True):
            captions[pos] = caption_from_output(out, text)
        return captions

    def _hand_over_done(self, batch: _Batch, futures: list[tuple[int, Any]]) -> None:
        """Hand the rendered requests at the head of ``futures`` to the loop, in order."""
        while futures and futures[0][1].done():
            self._hand_over(batch, *futures.pop(0))

    def _hand_over(self, batch: _Batch, pos: int, fut: Any) -> None:
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
                        batch.finish(pos, out)  # made a Caption in the caller's thread
        except BaseException as exc:  # noqa: BLE001 - every caller learns that the engine is gone
            self.dead = exc  # callers see it within a second and end the replica
            self.slots.release(1_000_000)


def _fatal(exc: BaseException) -> bool:
    """An error that leaves the engine unusable (its core process died): no row is to blame."""
    return type(exc).__name__ in ("EngineDeadError", "EngineGenerateError") or isinstance(
        exc, (MemoryError, SystemError))
