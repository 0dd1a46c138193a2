"""Caption engines behind one interface: :class:`enrich.engines.base.Engine`.

``dry-run`` is a deterministic CPU engine (captions computed from pixels, model ``dry-run``);
``vllm`` is Qwen2.5-VL on vLLM, one offline engine per Ray Data actor. Both are chosen with
``--engine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from enrich.config import RunConfig
    from enrich.engines.base import Engine


def make_engine(cfg: RunConfig, *, starts_dir: str | None = None) -> Engine:
    if cfg.engine == "dry-run":
        from enrich.engines.dryrun import DryRunEngine

        return DryRunEngine(cfg, starts_dir=starts_dir)
    from enrich.engines.vllm import VLLMEngine

    return VLLMEngine(cfg)
