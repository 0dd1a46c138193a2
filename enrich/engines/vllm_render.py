"""vLLM's per-request input processing for a replica (decode the prepared JPEG, the HF image
processor, the tokenizer), beside its engine: :class:`ProcessRenderer` in spawned processes (the
GPU default: each has its own GIL), :class:`ThreadRenderer` in threads (the CPU backend, where
the model is the bound). Both hand back what the engine's ``add_request`` takes. Also the prompt
every row shares (:func:`render_prompt`, pure) and the engine config a replica's renderers are
built from before its engine exists (vllm_compat.engine_config)."""

from __future__ import annotations

import io
import os
import pickle
import time
from typing import Any

from enrich.engines.vllm_compat import make_renderer, render_in_llm, render_with
from enrich.errors import UsageError


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
        return render_in_llm(self.llm, self.prompt, _decode(jpeg))

    @staticmethod
    def load(result: Any) -> Any:
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# The render processes' own state: vLLM's renderer, built when the process starts, from the
# engine config the replica publishes (before its engine starts, as a rule), and the prompt text.
_PROCESS: dict[str, Any] = {}
CONFIG_POLL_S = 0.05


def _render_process_init(config_file: str) -> None:
    """Each render process: the slow imports, then, once the replica has published the engine's
    config, vLLM's renderer and one throw-away image through it (the HF image processor loads
    on its first image). On one H200 the first rows had waited ~15 s for this after the engine
    was ready. Ends with the replica if the replica dies first."""
    import torch

    torch.set_num_threads(1)  # one process per core: no intra-op threads for small tensors
    import vllm.renderers  # noqa: F401 - the slow imports, done while the engine starts

    parent = os.getppid()
    while not os.path.exists(config_file):
        if os.getppid() != parent:  # the replica is gone
            raise SystemExit(0)
        time.sleep(CONFIG_POLL_S)
    from PIL import Image

    with open(config_file, "rb") as f:
        config, system_prompt, prompt = pickle.load(f)
    renderer = make_renderer(config)
    _PROCESS.update(config=config, renderer=renderer,
                    prompt=render_prompt(renderer.get_tokenizer(), system_prompt, prompt))
    _render(Image.new("RGB", (224, 224)))


def _render_process_ready() -> str:
    """The prompt text this process renders rows with (the replica checks it against its own)."""
    return str(_PROCESS["prompt"])


def _render(image: Any) -> Any:
    """One row's engine input, on this process's renderer."""
    return render_with(_PROCESS["renderer"], _PROCESS["config"], _PROCESS["prompt"], image)


def _render_in_process(jpeg: bytes) -> bytes:
    """One row's processed request, pickled: the request the replica's own engine would have
    made from it (tests compare them)."""
    return pickle.dumps(_render(_decode(jpeg)), protocol=pickle.HIGHEST_PROTOCOL)


class ProcessRenderer:
    """vLLM's input processing in ``processes`` separate processes (spawned, each with its own
    GIL), the processed requests pickled back (~0.3 MB each, tensors included) and handed to
    the replica's engine as ``LLM`` would hand its own. On one H200 a replica's input
    processing in threads ran ~1.2 threads' worth (PERFORMANCE.md).

    The processes start before the engine is built and build their renderer as soon as the
    replica publishes the engine's config and the prompt (``publish``), so both overlap the
    engine's start-up; ``wait_ready`` then waits for them."""

    def __init__(self, processes: int) -> None:
        import multiprocessing
        import tempfile
        from concurrent.futures import ProcessPoolExecutor

        # the hand-off folder is this object's: removed once every process has read the config
        # (wait_ready) or when the processes are given up (close), never left in /tmp
        self.folder = tempfile.mkdtemp(prefix="enrich-render-")
        config_file = self.config_file = os.path.join(self.folder, "engine.pkl")
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_render_process_init,
                                        initargs=(config_file,))
        # one task per process: the pool starts a process for each while none is idle
        self.started = [self.pool.submit(_render_process_ready) for _ in range(processes)]

    def publish(self, engine_config: Any, system_prompt: str, prompt: str) -> None:
        """Hand the engine's config and the prompt to the processes (atomically: a process
        never reads half a file)."""
        tmp = f"{self.config_file}.part"
        with open(tmp, "wb") as f:
            pickle.dump((engine_config, system_prompt, prompt), f)
        os.replace(tmp, self.config_file)

    @property
    def published(self) -> bool:
        return os.path.exists(self.config_file)

    def wait_ready(self, prompt: str, timeout_s: float) -> None:
        """Wait until each process has built its renderer: raises if one could not, or if one
        renders another prompt text than the replica's engine (``prompt``)."""
        for fut in self.started:
            theirs = fut.result(timeout=timeout_s)
            if theirs != prompt:
                raise RuntimeError("a render process made another prompt text than the engine's "
                                   f"({theirs[:80]!r} vs {prompt[:80]!r})")
        self._remove_folder()  # every process has read it

    def _remove_folder(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._remove_folder()

    def submit(self, jpeg: bytes) -> Any:
        return self.pool.submit(_render_in_process, jpeg)

    @staticmethod
    def load(result: bytes) -> Any:
        return pickle.loads(result)
