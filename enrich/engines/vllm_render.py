"""vLLM's per-request input processing for a replica (decode the prepared JPEG, the HF image
processor, the tokenizer), beside its engine: :class:`ProcessRenderer` in spawned processes (the
GPU default: each has its own GIL), :class:`ThreadRenderer` in threads (the CPU backend, where
the model is the bound). Both hand back what the engine's ``add_request`` takes."""

from __future__ import annotations

import io
import os
from typing import Any


class Unreadable(ValueError):
    """A row's prepared JPEG did not decode (its row fails, worded as such)."""


def _decode(jpeg: bytes) -> Any:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(jpeg)).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - prepare made this JPEG; never expected
        raise Unreadable(f"prepared image unreadable: {type(exc).__name__}: {exc}") from exc


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
