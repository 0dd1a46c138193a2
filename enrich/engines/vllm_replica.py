"""One ``vllm`` engine replica (a Ray Data actor): :func:`start_replica` starts a ``vllm.LLM`` and
the renderers that run vLLM's input processing beside it (:class:`ProcessRenderer`: spawned
processes, the GPU default; :class:`ThreadRenderer`: threads, for the CPU backend), from one
:class:`ReplicaSpec`; :class:`VLLMCaptioner` hands each batch to the :class:`EngineLoop`
(``vllm_loop.py``) that keeps the engine full across the replica's batches. The engine's
settings are in ``vllm_settings.py``, its Ray adapter in ``vllm.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from enrich.engines.vllm_compat import engine_config, running_config
from enrich.engines.vllm_loop import EngineDead, EngineLoop, caption_outputs
from enrich.engines.vllm_render import ProcessRenderer, ThreadRenderer, render_prompt

# The replica's own record of its start-up and first batches, for the GPU benchmark's breakdown
# of the time to the first row: one log line each in the replica's log (Ray's worker logs),
# "enrich: replica EVENT {json}", through a logger of its own, so that Ray's logging levels
# neither hide nor reformat it.
log = logging.getLogger("enrich.replica")
REPORT_PREFIX = "enrich: replica "


def report(event: str, **fields: Any) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    log.info("%s%s %s", REPORT_PREFIX, event, json.dumps(fields, sort_keys=True))


# How long a replica waits for its render processes to start (imports, vLLM's renderer).
RENDER_START_S = 300.0
# A replica logs the timing of its first batches: the last part of the time to the first row.
LOGGED_BATCHES = 2


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica is made from (Ray Data hands it to each replica actor it starts)."""

    llm_kwargs: dict[str, Any]
    system_prompt: str
    prompt: str
    params: dict[str, Any]  # vllm.SamplingParams
    render_threads: int
    render_processes: int
    lookahead: int  # requests queued ahead in the engine (EngineLoop)
    engine_in_process: bool = False


def start_replica(spec: ReplicaSpec) -> tuple[Any, ThreadRenderer | ProcessRenderer, Any,
                                              tuple[float, float]]:
    """A replica's engine and renderer, started: (the ``vllm.LLM``, its renderer, the sampling
    parameters, (when the imports were done, when the engine was up)). Render processes start
    first and get the engine's config before the engine, so that their start-up overlaps it;
    where they cannot start, threads render instead."""
    if spec.engine_in_process:
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
    procs = ProcessRenderer(spec.render_processes) if spec.render_processes > 0 else None
    t_imported = time.time()
    if procs is not None:
        try:
            procs.publish(engine_config(spec.llm_kwargs), spec.system_prompt, spec.prompt)
        except Exception as exc:  # noqa: BLE001 - published from the engine itself below
            print(f"enrich: engine config not made ahead ({type(exc).__name__}: {exc}); the "
                  "render processes get the engine's own once it has started",
                  file=sys.stderr, flush=True)
    llm = LLM(**spec.llm_kwargs)
    t_engine = time.time()
    sampling = SamplingParams(**spec.params)
    sampling.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate asks: no streaming
    text = render_prompt(llm.get_tokenizer(), spec.system_prompt, spec.prompt)
    if procs is not None:
        try:
            if not procs.published:
                procs.publish(running_config(llm), spec.system_prompt, spec.prompt)
            procs.wait_ready(text, timeout_s=RENDER_START_S)
            return llm, procs, sampling, (t_imported, t_engine)
        except Exception as exc:  # noqa: BLE001 - slower, not wrong: the replica still runs
            procs.close()
            print(f"enrich: render processes did not start ({type(exc).__name__}: {exc}); "
                  f"rendering in {spec.render_threads} threads instead", file=sys.stderr, flush=True)
    return llm, ThreadRenderer(llm, text, spec.render_threads), sampling, (t_imported, t_engine)


def batch_decoder(tokenizer: Any) -> Any:
    """Token id lists → texts, as vLLM's detokenizer would give them (special tokens skipped)."""
    def decode(ids: list[list[int]]) -> list[str]:
        return list(tokenizer.batch_decode(ids, skip_special_tokens=True))
    return decode


class VLLMCaptioner:
    """One engine replica (a Ray actor): a ``vllm.LLM``, the prompt every row shares, and the
    loop that feeds it. Ray Data runs several batches on it at once
    (``vllm_settings.batches_in_flight``: two of the default 512 rows)."""

    logged_batches = LOGGED_BATCHES  # none logged by a replica made in tests without __init__

    def __init__(self, spec: ReplicaSpec) -> None:
        t_start = time.time()
        self.llm, self.renderer, sampling, times = start_replica(spec)
        # Token ids only: the loop decodes each batch's captions at once, so vLLM's detokenizer
        # does not run per token in the thread that steps the engine. Nothing needs text during
        # generation (no stop strings; EOS is a token id).
        sampling.detokenize = False
        self.loop = EngineLoop(self.llm, sampling, renderer=self.renderer, lookahead=spec.lookahead,
                               decode=batch_decoder(self.llm.get_tokenizer()))
        t_imported, t_engine = times
        t_ready = self.t_ready = time.time()
        self.logged_batches = 0
        report("start-up", t_start=round(t_start, 3), t_ready=round(t_ready, 3),
               imports_s=round(t_imported - t_start, 1), engine_s=round(t_engine - t_imported, 1),
               renderer_s=round(t_ready - t_engine, 1))

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
            # the turn among this replica's waiting batches: the earliest in source order first
            results = self.loop.caption(pending, key=batch.column("source_index")[0].as_py()
                                        if batch.num_rows else 0)
        except EngineDead:
            # Ray restarts the actor (a fresh engine) and retries its batches; nothing of them
            # was committed. Raising instead would fail the whole dataset.
            import traceback

            traceback.print_exc()
            os._exit(1)
        if self.logged_batches < LOGGED_BATCHES:
            self.logged_batches += 1
            index = batch.column("source_index")
            report("batch", n=self.logged_batches, rows=f"{index[0]}..{index[-1]}",
                   taken_after_ready_s=round(t_called - self.t_ready, 1),
                   done_after_ready_s=round(time.time() - self.t_ready, 1))
        return caption_outputs(batch, results)
