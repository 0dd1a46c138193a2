"""The vllm engine up to the GPU boundary: processor config, the real processor built offline,
message format checked with the types vLLM's chat parser validates against, bypass/failed rows,
and failing fast without a GPU. Needs no vllm and no GPU."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from enrich.config import RunConfig
from enrich.engines.vllm import (
    ERROR_KEY,
    Postprocess,
    Preprocess,
    build_messages,
    image_tokens,
    normalize_row,
    processor_config_kwargs,
)
from enrich.errors import UsageError
from tests.conftest import cli

SIZE = 225


def _pixels(seed: int = 0) -> bytes:
    """A prepared image, as the prepare stage hands it to the engine (a 225x225 JPEG)."""
    arr = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_image_tokens_for_225_pixels() -> None:
    assert image_tokens(225) == 64  # 225 -> 224 = 8 x 28, so 8 x 8 merged patches
    kwargs = processor_config_kwargs(RunConfig(until=1, engine="vllm"))
    assert kwargs["engine_kwargs"]["mm_processor_kwargs"]["max_pixels"] == 224 * 224
    assert kwargs["engine_kwargs"]["limit_mm_per_prompt"] == {"image": 1}


def test_processor_config_is_accepted_by_ray() -> None:
    llm = pytest.importorskip("ray.data.llm", reason="needs pydantic and aiohttp")
    cfg = RunConfig(until=1, engine="vllm", concurrency=3, batch_size=32,
                    engine_kwargs={"max_num_seqs": 64})
    config = llm.vLLMEngineProcessorConfig(**processor_config_kwargs(cfg))
    assert config.model_source == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert config.accelerator_type == "L4" and tuple(config.concurrency) == (3, 3)
    assert config.engine_kwargs["max_num_seqs"] == 64 and config.engine_kwargs["max_model_len"] == 8192
    assert config.should_continue_on_error


def test_real_processor_builds_offline_with_gpu_stage(ray_address: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    llm = pytest.importorskip("ray.data.llm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = RunConfig(until=1, engine="vllm", concurrency=2)
    processor = llm.build_processor(
        llm.vLLMEngineProcessorConfig(**processor_config_kwargs(cfg)),
        preprocess=Preprocess(size=SIZE, system_prompt="s", prompt="p", params={}),
        postprocess=Postprocess(max_tokens=256))
    assert list(processor.stages) == ["PrepareMultimodalStage", "ChatTemplateStage",
                                      "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    kw = processor.stages["vLLMEngineStage"].get_dataset_map_batches_kwargs(
        batch_size=cfg.batch_size, data_column="__data")
    assert kw["num_gpus"] == 1 and kw["accelerator_type"] == "L4"
    assert (kw["compute"].min_size, kw["compute"].max_size) == (2, 2)  # fixed: models load once


def _arrow_roundtrip(obj: object) -> object:
    """What Ray Data does to a row between stages."""
    return pa.array([obj]).to_pylist()[0]


def test_messages_validate_as_vllm_chat_parser_reads_them() -> None:
    types = pytest.importorskip("openai.types.chat")
    from pydantic import TypeAdapter

    # vllm 0.29 entrypoints/chat_utils.py MM_PARSER_MAP: "image_url" parts go through
    # TypeAdapter(ChatCompletionContentPartImageParam) and then ["image_url"]["url"];
    # "text" parts through TypeAdapter(ChatCompletionContentPartTextParam) and then ["text"].
    image_parser = TypeAdapter(types.ChatCompletionContentPartImageParam).validate_python
    text_parser = TypeAdapter(types.ChatCompletionContentPartTextParam).validate_python
    messages = _arrow_roundtrip(build_messages(_pixels(), system_prompt="sys",
                                               prompt="Describe."))
    assert [m["role"] for m in messages] == ["system", "user"]
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    url = image_parser(parts[0]).get("image_url", {}).get("url")
    assert text_parser(parts[1]).get("text") == "Describe."
    assert text_parser(messages[0]["content"][0]).get("text") == "sys"
    header, data = url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.size == (SIZE, SIZE) and img.mode == "RGB"


def test_real_chat_parser_when_vllm_is_installed() -> None:
    chat_utils = pytest.importorskip("vllm.entrypoints.chat_utils", reason="GPU machines only")
    parts = build_messages(_pixels(), system_prompt="s", prompt="p")[1]["content"]
    kinds = [chat_utils._parse_chat_message_content_mm_part(p)[0] for p in parts]
    assert kinds == ["image_url", "text"]


def _through_stages(rows: list[dict], generate) -> list[dict]:
    """Apply Ray Data LLM's own pre/postprocess wrappers and its error-row bypass, with
    ``generate`` standing in for the GPU stages."""
    from ray.llm._internal.batch.stages.base import wrap_postprocess, wrap_preprocess

    pre = wrap_preprocess(Preprocess(size=SIZE, system_prompt="s", prompt="p",
                                     params={"max_tokens": 8}), "__data")
    post = wrap_postprocess(Postprocess(max_tokens=8), "__data", include_error_column=True)
    out = []
    for row in rows:
        data = pre(row)["__data"]
        if data.get(ERROR_KEY, "") == "":  # the bypass rule of StatefulStageUDF.__call__
            data.update(generate(data))
        out.append(normalize_row(_arrow_roundtrip(post({"__data": data}))))
    return out


def test_rejected_bypass_errors_fail_and_truncation_is_flagged() -> None:
    pytest.importorskip("ray.llm._internal.batch.stages.base")
    base = {"error": None, "image_width": 10, "image_height": 10}
    rows = [
        {"source_index": 0, "status": "pending", "image_jpeg": _pixels(0), **base},
        {"source_index": 1, "status": "rejected", "image_jpeg": None, **base, "error": "zero-byte image"},
        {"source_index": 2, "status": "pending", "image_jpeg": _pixels(2), **base},
        {"source_index": 3, "status": "pending", "image_jpeg": _pixels(3), **base},
    ]

    def generate(data: dict) -> dict:
        assert data["image_jpeg"] is None and data["messages"][1]["content"][0]["type"] == "image_url"
        if data["source_index"] == 2:
            return {ERROR_KEY: "CUDA error: device-side assert", "generated_text": ""}
        tokens = 8 if data["source_index"] == 3 else 5
        return {"generated_text": " A cat on a mat. ", "num_generated_tokens": tokens, ERROR_KEY: ""}

    out = _through_stages(rows, generate)
    assert [r["status"] for r in out] == ["captioned", "rejected", "failed", "captioned"]
    assert out[0]["caption"] == "A cat on a mat." and out[0]["caption_truncated"] is False
    assert out[1]["error"] == "zero-byte image" and out[1]["caption"] is None
    assert "CUDA error" in out[2]["error"] and out[2]["caption"] is None
    assert out[3]["caption_truncated"] is True and out[3]["num_generated_tokens"] == 8


def test_vllm_without_a_gpu_fails_fast_and_writes_nothing(tmp_path: Path, ray_address: str) -> None:
    t0 = time.monotonic()
    proc = cli("--until", "5", "--source", "sample", "--engine", "vllm", "--table",
               str(tmp_path / "t"), "--ray-address", ray_address, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("enrich: error: --engine vllm needs 1 GPU(s) of type L4"), last
    assert not (tmp_path / "t").exists() and not (tmp_path / "checkpoints").exists()
    assert elapsed < 60  # seconds, not Ray's wait-forever


def test_plan_for_vllm_prints_an_accepted_processor_config(tmp_path: Path) -> None:
    proc = cli("--until", "1000000", "--plan", "--table", str(tmp_path / "t"), cwd=tmp_path,
               env={"HF_TOKEN": "hf_canary_secret"})
    assert proc.returncode == 0, proc.stderr
    assert "hf_canary_secret" not in proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["source"] == "BLIP3o/BLIP3o-Pretrain-Short-Caption"
    pc = plan["engine"]["processor_config"]
    assert pc["model_source"] == "Qwen/Qwen2.5-VL-3B-Instruct" and pc["accelerator_type"] == "L4"
    assert plan["caption"]["temperature"] == 0.3 and plan["caption"]["max_tokens"] == 256
    llm = pytest.importorskip("ray.data.llm")
    llm.vLLMEngineProcessorConfig(**pc)


def test_engines_per_gpu_default_to_the_measured_best() -> None:
    def share(**kw: object) -> int:
        return RunConfig(until=1, engine="vllm", **kw).gpu_share  # type: ignore[arg-type]

    assert share() == 1  # L4: one engine fits its 24 GB
    assert share(accelerator_type="H100") == 3 and share(accelerator_type="H100", concurrency=2) == 3
    assert RunConfig(until=1, engine="vllm", accelerator_type="H100", concurrency=2).replicas == 6
    assert share(accelerator_type="H100", replicas_per_gpu=2) == 2
    assert share(accelerator_type="H100", engine_kwargs={"tensor_parallel_size": 2}) == 1
    assert share(accelerator_type="cpu") == 1
    assert RunConfig(until=1, engine="dry-run", accelerator_type="H100").replicas == 1


def test_shared_gpu_engines_get_a_share_and_a_fixed_kv_cache() -> None:
    cfg = RunConfig(until=1, engine="vllm", accelerator_type="H100", concurrency=2)
    kw = processor_config_kwargs(cfg)
    assert tuple(kw["concurrency"]) == (6, 6)  # 2 GPUs x 3 engines, a fixed pool
    assert kw["placement_group_config"] == {"bundles": [{"GPU": 0.3333, "CPU": 1.0}]}
    assert kw["engine_kwargs"]["gpu_memory_utilization"] == 0.3
    assert kw["engine_kwargs"]["kv_cache_memory_bytes"] == 6 * 2**30
    with pytest.raises(UsageError, match="tensor or pipeline"):
        processor_config_kwargs(RunConfig(until=1, engine="vllm", accelerator_type="H100",
                                          replicas_per_gpu=2,
                                          engine_kwargs={"tensor_parallel_size": 2}))
    one = processor_config_kwargs(RunConfig(until=1, engine="vllm"))  # L4: one whole GPU
    assert "placement_group_config" not in one and "kv_cache_memory_bytes" not in one["engine_kwargs"]
