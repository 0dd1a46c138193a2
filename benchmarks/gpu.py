"""Captions per GPU-second on one CUDA host, every run on the same machine in one session:
vLLM's own benchmark (the anchor nobody here wrote), bare vLLM with enrich's exact prompts (the
limit for this workload), enrich end to end, and the tutorial's pipeline.

    python benchmarks/gpu.py inputs --n 40000 --bare-n 10000
    python benchmarks/gpu.py run --model DIR --dummy-weights --runs vllm-bench,bare:1,enrich:1:3 \\
        --out results.json
    python benchmarks/gpu.py merge a.json b.json > benchmarks/results-gpu.json

Needs vllm and ray on the host (no network there: a runtime built offline, and a model folder of
the real architecture used with vLLM's `load_format="dummy"`: random weights, whose captions run
to --max-tokens, 100 here). A runtime copied without bytecode should be compiled once first
(`python -m compileall -q -j 0 SITE_PACKAGES`): on a host that sets PYTHONDONTWRITEBYTECODE every
process would otherwise compile vLLM's sources at every start (~10 s more to the first row).

Inputs (`inputs`): N web-photo-like JPEGs (long side 300-1000 px), each rendered on its own so
no two share pixels (vLLM caches processed images and prefixes by pixels: reused pictures would
skip vision work), in 500-row tar shards; and the first BARE_N of them prepared by enrich's own
prepare step (225x225 JPEG), for the bare runs.

Runs (`--runs`, comma-separated, in order, each in fresh processes):
  vllm-bench    `vllm bench throughput` on random 224x224 images (random-mm, with a dataset path
                so that vLLM 0.24 does not fall back to its text-only `random` dataset), 50
                prompt + 100 output tokens, one engine, vLLM's own defaults unless a `+seqs*`
                variant sets the batch; its default offline backend reads no image (its prompt
                tokens per request show it): never an anchor (``anchor: false``).
  vllm-bench-chat the same with `--backend vllm-chat` (LLM.chat): the images are processed
                (checked by the prompt tokens per request); vLLM's own number for this work.
  bare:K        K `vllm.LLM` engines sharing GPU 0, started together, each calling
                `LLM.generate` once on its 1/K of the prepared images, with enrich's prompt
                (the model's chat template rendered by enrich's engine code), enrich's engine
                arguments, images decoded to PIL before the clock starts, ignore_eos.
  split:K       as bare:K, but each engine first runs vLLM's input processing on all its images
                (timed on the first 300, one thread; the rest in enrich's render processes),
                then adds the processed requests and
                steps the engine to the end (timed: the engine alone, input processing already
                paid): the ceiling of an engine whose inputs are processed elsewhere.
  enrich:G:K[:P] `python -m enrich --engine vllm --concurrency G --replicas-per-gpu K
                [--render-processes P]` on the shards, N rows. Sustained rate: the rows committed between the commit that
                brought the table past 10% of N and the one that brought it past 90%, over the
                time between them (the middle of the run; the start-up and the drain are
                outside it). Also the whole run's rate and the first committed row.
  tutorial      the tutorial's pipeline re-created on Ray 2.60 (tutorial_gpu.py), --tutorial-n
                rows; its rate is first to last output row.
Any run may end in `+VARIANT` (several: `+a+b`): engine arguments added to enrich's, from
VARIANTS below (for enrich runs through --engine-kwargs; compilation settings merge into
enrich's own); enrich runs also take ENV_VARIANTS (`+mp`: vLLM's engine core in a process of its
own) and FLAG_VARIANTS (`+b256`: 256-row engine batches).
Per run: GPU utilisation (nvidia-smi, mean over the GPUs used while generating) and CPU cores
busy (/proc/stat) over the same window. `--profile` also takes py-spy samples of an enrich
engine replica and its vLLM engine-core process in the middle of the run (py-spy must be
installed there; it is not a dependency of enrich); a summary of them (samples, share of those
asked for, the functions most sampled) goes into the run's JSON, `profile`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from enrich.engines.vllm_settings import GPU_ENGINE_DEFAULTS  # noqa: E402 - pure, after the path

TOKENS = 100
WORK = Path(os.environ.get("ENRICH_BENCH_WORK", "/tmp/enrich-gpu-bench"))
# The compilation settings enrich adds on GPUs (vllm_settings.GPU_ENGINE_DEFAULTS): a variant's
# compilation_config merges into these instead of replacing them.
BASE_COMPILATION: dict[str, Any] = GPU_ENGINE_DEFAULTS["compilation_config"]
# Engine arguments a run can add (`enrich:1:2+enc`), each a lever named in PERFORMANCE.md.
VARIANTS: dict[str, dict[str, Any]] = {
    # the vision encoder compiled and captured in CUDA graphs (off by default in vLLM 0.24;
    # enrich's default on GPUs)
    "enc": {"compilation_config": dict(BASE_COMPILATION)},
    # the encoder eager, as vLLM 0.24 runs it by default (enrich turns its graphs on, above)
    "noenc": {"compilation_config": {"compile_mm_encoder": False, "cudagraph_mm_encoder": False}},
    # larger engine batches: sequences and the tokens one step may batch, as vLLM's own defaults
    # pair them (vllm 0.24 arg_utils: 1024 / 16384 for its offline LLM class on >= 70 GB GPUs)
    "seqs512": {"max_num_seqs": 512, "max_num_batched_tokens": 8192},
    "seqs1024": {"max_num_seqs": 1024, "max_num_batched_tokens": 16384},
    "seqs2048": {"max_num_seqs": 2048, "max_num_batched_tokens": 32768},
    # start-up levers (the warm first row: PERFORMANCE.md). The encoder's CUDA graphs without
    # compiling it: its compile cost 6.9 s of a warm start on an H100 (every graph from the cache)
    "encgraphs": {"compilation_config": {"compile_mm_encoder": False, "cudagraph_mm_encoder": True}},
    # fewer language-model CUDA graphs: vLLM 0.24 captures 51 batch sizes up to 512 at 256
    # sequences (8 s of a warm start on an H100); with these 19 a step of 256-512 tokens is
    # padded to a multiple of 64 instead of 16, one of 129-256 to a multiple of 32 instead of 8
    "fewgraphs": {"compilation_config": {"cudagraph_capture_sizes": [
        1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]}},
}
# Environment a run can add (enrich runs only): vLLM's engine core in a process of its own, as
# before enrich ran it in the replica's.
ENV_VARIANTS: dict[str, dict[str, str]] = {"mp": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}}
# enrich flags a run can add (enrich runs only): engine batches of one wave of 256 rows (four in
# flight per replica instead of two of 512, the same rows): the first rows come back sooner.
FLAG_VARIANTS: dict[str, list[str]] = {"b256": ["--batch-size", "256"]}


def variant(spec: str) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
    """``enrich:1:2+enc+mp+b256`` → (``enrich:1:2``, the engine arguments, the environment and
    the enrich flags the variants add). Compilation settings merge: enrich's own on GPUs
    (BASE_COMPILATION), then each variant's."""
    base, *names = spec.split("+")
    extra: dict[str, Any] = {}
    env: dict[str, str] = {}
    flags: list[str] = []
    for name in names:
        if name in VARIANTS:
            for key, value in VARIANTS[name].items():
                if key == "compilation_config":
                    value = {**BASE_COMPILATION, **extra.get(key, {}), **value}
                extra[key] = value
        elif name in ENV_VARIANTS and base.startswith("enrich:"):
            env.update(ENV_VARIANTS[name])
        elif name in FLAG_VARIANTS and base.startswith("enrich:"):
            flags += FLAG_VARIANTS[name]
        else:
            raise SystemExit(f"unknown variant {name!r} for {base} (engine: {', '.join(VARIANTS)}; "
                             f"enrich runs also: {', '.join([*ENV_VARIANTS, *FLAG_VARIANTS])})")
    return base, extra, env, flags


# ------------------------------------------------------------------------------------------
# Sampling the machine while a run works.
# ------------------------------------------------------------------------------------------
class Sampler:
    """GPU utilisation per GPU (nvidia-smi, every 0.5 s) and busy CPU cores (/proc/stat), with
    times, so a run can average over exactly its generating window."""

    def __init__(self) -> None:
        self.gpu: dict[int, list[tuple[float, float]]] = {}
        self.cpu: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._gpu, daemon=True),
                         threading.Thread(target=self._cpu, daemon=True)]

    def __enter__(self) -> Sampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _gpu(self) -> None:
        if not shutil.which("nvidia-smi"):
            return
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu",
                                 "--format=csv,noheader,nounits", "-lms", "500"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if self._stop.is_set():
                break
            try:
                idx, util = (float(x) for x in line.split(","))
                self.gpu.setdefault(int(idx), []).append((time.time(), util))
            except ValueError:
                pass
        proc.kill()

    def _cpu(self) -> None:
        def read() -> tuple[float, float]:
            f = [float(x) for x in open("/proc/stat").readline().split()[1:]]
            return f[3] + f[4], sum(f)  # idle + iowait, total (jiffies)

        idle0, total0 = read()
        n = os.cpu_count() or 1
        while not self._stop.wait(1.0):
            idle1, total1 = read()
            if total1 > total0:
                self.cpu.append((time.time(), n * (1 - (idle1 - idle0) / (total1 - total0))))
            idle0, total0 = idle1, total1

    @staticmethod
    def mean(series: list[tuple[float, float]], t0: float, t1: float) -> float | None:
        vals = [v for t, v in series if t0 <= t <= t1]
        return round(sum(vals) / len(vals), 1) if vals else None

    def gpu_mean(self, gpus: int, t0: float, t1: float) -> float | None:
        means = [self.mean(self.gpu.get(i, []), t0, t1) for i in range(gpus)]
        vals = [m for m in means if m is not None]
        return round(sum(vals) / len(vals), 1) if vals else None


# ------------------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------------------
def _prepare(data: bytes) -> bytes:
    from enrich.prepare import prepare_image

    p = prepare_image(data, size=225, jpeg=True)
    assert p.ok and p.jpeg
    return p.jpeg


def make_inputs(n: int, bare_n: int) -> tuple[Path, Path]:
    from multiprocessing import Pool

    from benchmarks._common import make_unique_photo_set

    shards = make_unique_photo_set(WORK / f"shards-{n}", n)
    prepared = WORK / f"prepared-{bare_n}.tar"
    if not prepared.exists():
        members: list[bytes] = []
        for tar_path in sorted(shards.glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                for m in tar:
                    f = tar.extractfile(m)
                    assert f is not None
                    members.append(f.read())
                    if len(members) == bare_n:
                        break
            if len(members) == bare_n:
                break
        with Pool(os.cpu_count()) as pool:
            jpegs = pool.map(_prepare, members, chunksize=32)
        tmp = prepared.with_suffix(".part")
        with tarfile.open(tmp, "w") as tar:
            for i, data in enumerate(jpegs):
                info = tarfile.TarInfo(f"{i:08d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        tmp.rename(prepared)
    return shards, prepared


def run_config(model: str, dummy: bool, share: int, accelerator: str, gpus: int = 1,
               extra: dict[str, Any] | None = None) -> Any:
    from enrich.config import RunConfig

    return RunConfig(until=1, engine="vllm", model=model, max_tokens=TOKENS, replicas_per_gpu=share,
                     accelerator_type=accelerator, concurrency=gpus,
                     engine_kwargs={**({"load_format": "dummy"} if dummy else {}), **(extra or {})})


def _logged(name: str, cmd: list[str], d: Path) -> tuple[Sampler, float, float]:
    """Run ``cmd`` with its output in ``d/log``, sampling the machine; raise if it fails."""
    with Sampler() as s:
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)
        t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}: {(d / 'log').read_text()[-3000:]}")
    return s, t0, t1


# ------------------------------------------------------------------------------------------
# vLLM's own benchmark.
# ------------------------------------------------------------------------------------------
# A request of vLLM's random-mm dataset carries --random-input-len text tokens and one 224x224
# image, 64 image tokens in Qwen2.5-VL (+2 markers): fewer prompt tokens than this per request
# mean the images were never processed, and such a run is no anchor for captioning work.
BENCH_TEXT_TOKENS = 50
BENCH_MIN_PROMPT_TOKENS = BENCH_TEXT_TOKENS + 64


def run_vllm_bench(model: str, n: int, work: Path, chat: bool = False,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """vLLM's `bench throughput` on random 224x224 images, one per request.

    vLLM 0.24's `validate_args` turns `--dataset-name random-mm` into the text-only `random`
    dataset whenever no `--dataset-path` is given ("When dataset path is not set, it will
    default to random dataset"), for every backend: the earlier anchors here processed no image.
    A path is given (the model's config; random-mm never reads it), so random-mm's images are
    made. The default (offline `vllm`) backend then hands each image to LLM.generate as a chat
    content part that call does not read; ``chat``: the `vllm-chat` backend (LLM.chat) processes
    them. Either way the prompt tokens per request say which happened, and a run without image
    tokens is marked ``anchor: false``. ``extra`` may set max_num_seqs / max_num_batched_tokens
    (the ``seqs*`` variants)."""
    extra = extra or {}
    seqs = extra.get("max_num_seqs")  # None: vLLM's own default for the GPU
    name = ("vllm-bench-chat" if chat else "vllm-bench") + f"-{seqs or 'default'}"
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "throughput", "--model", model,
           *(["--backend", "vllm-chat"] if chat else []),
           "--dataset-name", "random-mm", "--dataset-path", str(Path(model) / "config.json"),
           "--random-mm-bucket-config", "{(224, 224, 1): 1.0}",
           "--random-mm-base-items-per-request", "1", "--random-mm-num-mm-items-range-ratio", "0",
           "--random-mm-limit-mm-per-prompt", '{"image":1,"video":0}',
           "--random-input-len", str(BENCH_TEXT_TOKENS),
           "--random-output-len", str(TOKENS), "--num-prompts", str(n), "--load-format", "dummy",
           *(["--max-num-seqs", str(seqs)] if seqs else []), "--limit-mm-per-prompt", '{"image":1}',
           *(["--max-num-batched-tokens", str(extra["max_num_batched_tokens"])]
             if "max_num_batched_tokens" in extra else []),
           "--output-json", str(d / "out.json")]
    s, t0, t1 = _logged("vllm bench", cmd, d)
    r = json.loads((d / "out.json").read_text())
    gen_s = float(r["elapsed_time"])
    # its generating window is the last elapsed_time seconds before it wrote its result
    g1 = (d / "out.json").stat().st_mtime
    import re

    log = (d / "log").read_text()
    said = re.search(r"Total num prompt tokens:\s+(\d+)", log)
    prompt_tokens = round(int(said.group(1)) / int(r["num_requests"]), 1) if said else None
    anchor = prompt_tokens is not None and prompt_tokens >= BENCH_MIN_PROMPT_TOKENS
    return {"kind": "vllm-bench", "backend": "vllm-chat" if chat else "vllm",
            "prompt_tokens_per_request": prompt_tokens, "anchor": anchor,
            **({} if anchor else {"not_an_anchor": f"{prompt_tokens} prompt tokens per request: "
                                  f"no image processed (>= {BENCH_MIN_PROMPT_TOKENS} with one)"}),
            "random_dataset_fallback": "default to random dataset" in log,
            "max_num_seqs": seqs or "vLLM's default", "engine_kwargs_added": extra,
            "gpus": 1, "engines_per_gpu": 1, "rows": int(r["num_requests"]),
            "captions_per_s_sustained": round(float(r["requests_per_second"]), 1),
            "sustained_window": f"vLLM's own elapsed time for all requests ({'LLM.chat' if chat else 'LLM.generate'})",
            "output_tokens_per_s": round(float(r["requests_per_second"]) * TOKENS),
            "gpu_util_pct": s.gpu_mean(1, g1 - gen_s, g1), "cpu_cores_busy": Sampler.mean(s.cpu, g1 - gen_s, g1),
            "wall_s": round(t1 - t0, 1), "command": " ".join(cmd[1:])}


# ------------------------------------------------------------------------------------------
# bare vLLM: K worker processes, started together, generating together.
# ------------------------------------------------------------------------------------------
def bare_worker(args: argparse.Namespace) -> None:
    from PIL import Image
    from vllm import LLM, SamplingParams

    from enrich.engines.vllm import render_prompt

    cfg = json.loads(args.cfg)
    with tarfile.open(args.prepared) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar]  # type: ignore[union-attr]
    mine_jpegs = [b for i, b in enumerate(jpegs) if i % args.parts == args.part]
    mine = [Image.open(io.BytesIO(b)).convert("RGB") for b in mine_jpegs]
    t0 = time.time()
    llm = LLM(**cfg["llm_kwargs"])
    prompt = render_prompt(llm.get_tokenizer(), cfg["system_prompt"], cfg["prompt"])
    t_loaded = time.time()
    Path(args.ready).write_text(str(t_loaded - t0))
    while not Path(args.go).exists():
        time.sleep(0.01)
    params = SamplingParams(temperature=0.3, max_tokens=TOKENS, ignore_eos=True)
    inputs: list[Any] = [{"prompt": prompt, "multi_modal_data": {"image": img}} for img in mine]
    extra: dict[str, Any] = {}
    if args.split:
        from vllm.sampling_params import RequestOutputKind

        from enrich.engines.vllm_replica import batch_decoder

        # vLLM's input processing alone, one thread (what LLM.generate does per prompt), timed
        # on the first RENDER_SAMPLE images; the rest in enrich's render processes (the same
        # requests, tests/test_vllm_cpu.py checks), so a 10,000-request ceiling does not wait
        # ~45 s for one thread ...
        r0 = time.time()
        rendered = [llm._preprocess_cmpl_one(x) for x in inputs[:RENDER_SAMPLE]]
        extra["render_ms_per_image"] = round((time.time() - r0) / len(rendered) * 1e3, 2)
        rendered += render_in_processes(cfg, mine_jpegs[RENDER_SAMPLE:], prompt)
        Path(args.ready + ".rendered").write_text("1")
        while not Path(args.go + ".rendered").exists():
            time.sleep(0.01)
        # ... then the engine alone on the processed requests
        # as enrich's replica asks: finished outputs only, token ids decoded at the end
        params.output_kind = RequestOutputKind.FINAL_ONLY
        params.detokenize = False
        engine = llm.llm_engine
        g0 = time.time()
        for i, x in enumerate(rendered):
            engine.add_request(str(i), x, params)
        outs = []
        while engine.has_unfinished_requests():
            outs.extend(o for o in engine.step() if o.finished)
        extra["decoded_chars"] = sum(map(len, batch_decoder(llm.get_tokenizer())(
            [o.outputs[0].token_ids for o in outs])))
        g1 = time.time()
    else:
        g0 = time.time()
        outs = llm.generate(inputs, params, use_tqdm=False)
        g1 = time.time()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    Path(args.result).write_text(json.dumps({"start_s": t_loaded - t0, "t0": g0, "t1": g1,
                                             "captions": len(outs), "tokens": tokens, **extra}))


RENDER_SAMPLE = 300


def render_in_processes(cfg: dict[str, Any], jpegs: list[bytes], prompt: str) -> list[Any]:
    """vLLM's input processing of ``jpegs`` in enrich's render processes, all cores but two."""
    from enrich.engines.vllm_compat import engine_config
    from enrich.engines.vllm_render import ProcessRenderer

    if not jpegs:
        return []
    pool = ProcessRenderer(max(1, (os.cpu_count() or 4) - 2))
    try:
        pool.publish(engine_config(cfg["llm_kwargs"]), cfg["system_prompt"], cfg["prompt"])
        pool.wait_ready(prompt, timeout_s=600)
        futures = [pool.submit(j) for j in jpegs]
        return [pool.load(f.result()) for f in futures]
    finally:
        pool.close()


def run_bare(k: int, model: str, dummy: bool, prepared: Path, work: Path, accelerator: str,
             extra: dict[str, Any], split: bool) -> dict[str, Any]:
    from enrich.engines.vllm import engine_kwargs

    d = work / f"{'split' if split else 'bare'}{k}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rc = run_config(model, dummy, k, accelerator, extra=extra)
    cfg = {"llm_kwargs": engine_kwargs(rc), "system_prompt": rc.system_prompt, "prompt": rc.prompt}
    procs = [subprocess.Popen(
        [sys.executable, __file__, "_bare", "--cfg", json.dumps(cfg), "--prepared", str(prepared),
         "--part", str(i), "--parts", str(k), "--ready", str(d / f"ready{i}"), "--go", str(d / "go"),
         "--result", str(d / f"result{i}"), *(["--split"] if split else [])],
        stdout=open(d / f"log{i}", "w"), stderr=subprocess.STDOUT) for i in range(k)]

    def wait_all(suffix: str) -> None:
        while not all((d / f"ready{i}{suffix}").exists() for i in range(k)):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"bare{k}: a worker died: {(d / 'log0').read_text()[-3000:]}")
            time.sleep(0.2)

    with Sampler() as s:
        wait_all("")
        (d / "go").touch()
        if split:  # the engines start generating together, once all have processed their inputs
            wait_all(".rendered")
            (d / "go.rendered").touch()
        for p in procs:
            p.wait()
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"bare{k}: a worker failed: {(d / 'log0').read_text()[-3000:]}")
    res = [json.loads((d / f"result{i}").read_text()) for i in range(k)]
    t0, t1 = min(r["t0"] for r in res), max(r["t1"] for r in res)
    caps, toks = sum(r["captions"] for r in res), sum(r["tokens"] for r in res)
    split_info = ({"render_ms_per_image": max(r["render_ms_per_image"] for r in res),
                   "note": "input processing done before the clock started (not in the rate)"}
                  if split else {})
    return {"kind": "bare", "gpus": 1, "engines_per_gpu": k, "rows": caps,
            "captions_per_s_sustained": round(caps / (t1 - t0), 1),
            "sustained_window": "first request added to last finished, all engines",
            **split_info, "engine_kwargs_added": extra,
            "output_tokens_per_s": round(toks / (t1 - t0)),
            "gpu_util_pct": s.gpu_mean(1, t0, t1), "cpu_cores_busy": Sampler.mean(s.cpu, t0, t1),
            "engine_start_s": round(max(r["start_s"] for r in res), 1), "llm_kwargs": cfg["llm_kwargs"]}


# ------------------------------------------------------------------------------------------
# enrich end to end.
# ------------------------------------------------------------------------------------------
PROFILE_RATE = 50  # py-spy samples per second
# Fewer rows than this give no sustained rate: the window between their 10 % and 90 % commits
# is seconds long and mostly ramp (a 3,000-row probe "sustained" 220.8/s over 11 s).
SUSTAINED_MIN_ROWS = 40_000


def _profile(d: Path, seconds: int) -> dict[str, Any]:
    """py-spy samples of one engine replica (the Ray actor) and one vLLM engine core."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not spy:
        return {"skipped": "py-spy not on PATH"}
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    targets = {}
    for line in ps.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if "VLLMCaptioner" in args and "replica" not in targets:
            targets["replica"] = pid
        elif "EngineCore" in args and "engine-core" not in targets:
            targets["engine-core"] = pid
    # The replica sampled only where a thread holds its GIL (--gil): the samples taken over the
    # samples asked for is how busy that one lock is, and the frames say with what.
    procs = [subprocess.Popen([spy, "record", "--pid", pid, "--duration", str(seconds), "--rate",
                               str(PROFILE_RATE), "--format", "raw", "--nonblocking",
                               *(["--gil"] if name == "replica" else []),
                               "-o", str(d / f"pyspy-{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
             for name, pid in targets.items()]
    for p in procs:
        p.wait()
    return {name: _profile_summary(d / f"pyspy-{name}.txt", seconds) for name in targets}


def _frame(raw: str) -> str:
    """py-spy's ``func (path/to/file.py:12)`` → ``func file.py:12``."""
    name, _, where = raw.partition(" (")
    return f"{name} {where.rstrip(')').rsplit('/', 1)[-1]}" if where else name


def _profile_summary(path: Path, seconds: int, top: int = 12) -> dict[str, Any]:
    """A py-spy raw profile (``frame;frame;... count`` per line, outermost first) → samples,
    their share of the samples asked for, and the functions with the most samples: as the
    innermost frame (self) and anywhere on the stack (inclusive)."""
    if not path.exists():
        return {"error": "no profile written"}
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += int(count)
        incl.update(dict.fromkeys(frames, int(count)))
    total = own.total()

    def best(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(c / max(1, total), 3)) for f, c in counts.most_common(top)]

    return {"samples": total, "share_of_asked": round(total / (seconds * PROFILE_RATE), 3),
            "self": best(own), "inclusive": best(incl)}


def _census() -> dict[str, int]:
    """The engine's processes as they run: replicas (Ray actors), their render processes (spawned
    children of a replica) and vLLM engine cores."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in ps.splitlines()[1:] if len(line.split(None, 2)) == 3]
    replicas = {pid for pid, _, args in rows if "VLLMCaptioner" in args}
    return {"replicas": len(replicas),
            "render_processes": sum(1 for _, ppid, args in rows
                                    if ppid in replicas and "spawn_main" in args),
            "engine_cores": sum(1 for _, _, args in rows if "EngineCore" in args)}


def run_enrich(gpus: int, k: int, model: str, dummy: bool, shards: Path, n: int, work: Path,
               accelerator: str, profile: bool, extra: dict[str, Any], env_added: dict[str, str],
               render_processes: int | None = None, flags: Sequence[str] = ()) -> dict[str, Any]:
    from deltalake import DeltaTable

    env = {**os.environ, **env_added}
    d = work / f"enrich-{gpus}x{k}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    table = d / "table"
    cmd = [sys.executable, "-m", "enrich", "--until", str(n), "--source", str(shards),
           "--table", str(table), "--checkpoint-dir", str(d / "ck"), "--engine", "vllm",
           "--accelerator-type", accelerator, "--model", model, "--max-tokens", str(TOKENS),
           "--engine-kwargs", json.dumps({**({"load_format": "dummy"} if dummy else {}), **extra}),
           "--concurrency", str(gpus), "--replicas-per-gpu", str(k), "--commit-every", "1000", "--quiet"]
    if render_processes is not None:
        cmd += ["--render-processes", str(render_processes)]
    cmd += list(flags)
    with Sampler() as s:
        t0 = time.time()
        # cwd: not the repo root, where `enrich` would be imported from the source folder
        # rather than the install (which maps enrich.schemas)
        proc = subprocess.Popen(cmd, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT, cwd=d,
                                env=env)
        census: dict[str, int] = {}
        profiled: dict[str, Any] = {}
        while proc.poll() is None and not _committed_past(table, n // 3):
            time.sleep(2)
        if proc.poll() is None:
            census = _census()
            if profile:
                profiled = _profile(d, 20)
        proc.wait()
        t_end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"enrich: exit {proc.returncode}: {(d / 'log').read_text()[-3000:]}")
    logs = _worker_logs(t0)
    startup = _startup_lines(logs)
    (d / "startup.log").write_text("\n".join(startup) + "\n")
    replica_logs = _replica_logs(logs)
    dt = DeltaTable(str(table))
    hist = sorted((h for h in dt.history() if h.get("operation") == "WRITE"), key=lambda h: h["timestamp"])
    commits = [(h["timestamp"] / 1000, int(h.get("operationMetrics", {}).get("num_added_rows", 0)))
               for h in hist]
    commits = [c for c in commits if c[1] > 0]
    cum, acc = [], 0
    for t, r in commits:
        acc += r
        cum.append((t, acc))
    rows = acc
    lo = next(i for i, (_, c) in enumerate(cum) if c >= 0.1 * rows)
    hi = next(i for i, (_, c) in enumerate(cum) if c >= 0.9 * rows)
    (ta, ca), (tb, cb) = cum[lo], cum[hi]
    tokens = dt.to_pyarrow_dataset().to_table(columns=["status", "num_generated_tokens"])
    statuses: dict[str, int] = {}
    for st in tokens.column("status").to_pylist():
        statuses[st] = statuses.get(st, 0) + 1
    import pyarrow.compute as pc

    out_tokens = pc.sum(tokens.column("num_generated_tokens")).as_py() or 0
    sustained = tb > ta and rows >= SUSTAINED_MIN_ROWS  # a short run's middle is its ramp
    r: dict[str, Any] = {
        "kind": "enrich", "gpus": gpus, "engines_per_gpu": k, "rows": rows, "statuses": statuses,
        "captions_per_s_sustained": round((cb - ca) / (tb - ta), 1) if sustained else None,
        "sustained_window": (f"middle of the run: commits from {ca} to {cb} rows ({cb - ca} rows, {tb - ta:.1f} s)"
                             if sustained else f"start-up probe ({rows:,} rows): no sustained rate"),
        "captions_per_s_whole_run": round(rows / (t_end - t0), 1),
        "mean_output_tokens": round(out_tokens / max(1, statuses.get("captioned", 0)), 1),
        "first_committed_row_s": round(cum[0][0] - t0, 1), "wall_s": round(t_end - t0, 1),
        "gpu_util_pct": s.gpu_mean(gpus, ta, tb), "cpu_cores_busy": Sampler.mean(s.cpu, ta, tb),
        "commits": len(commits), "processes_mid_run": census, "profile": profiled,
        "env_added": env_added, "flags_added": list(flags),
        "replica_startup": _replica_startup(startup, t0), "driver_milestones": _milestones(d / "ck", table, t0),
        "startup_log": startup[-40:],
        "command": " ".join(cmd[1:]), "_replica_logs": replica_logs}
    return r


# vLLM's own start-up lines (weights, compile, CUDA graphs, engine init) and enrich's replica line
STARTUP_MARKS = ("enrich: replica start-up", "enrich: replica batch", "Loading weights took",
                 "Model loading took", "torch.compile take", "Compiling a graph", "Directly load the compiled graph",
                 "Graph capturing finished", "init engine", "compile range", "encoder cudagraph",
                 "Available KV cache memory", "GPU KV cache size", "async_scheduling")


def _worker_logs(t0: float) -> list[tuple[str, str]]:
    """(file name, text) of the Ray worker logs written since ``t0``: this run's (enrich keeps
    worker output out of the driver's terminal)."""
    logs = Path("/tmp/ray/session_latest/logs")
    out = []
    for f in sorted(logs.glob("worker-*")) if logs.exists() else []:
        try:
            if f.stat().st_mtime >= t0:
                out.append((f.name, f.read_text(errors="replace")))
        except OSError:
            continue
    return out


def _startup_lines(logs: list[tuple[str, str]]) -> list[str]:
    """The start-up lines of this run's replicas, from its worker logs."""
    import re

    lines: list[str] = []
    for name, text in logs:
        for line in text.splitlines():
            if "Initializing a V1 LLM engine" in line:  # the resolved settings that matter here
                keys = re.findall(r"(?:async_scheduling|max_num_batched_tokens|max_num_seqs|"
                                  r"enable_prefix_caching|cudagraph_mode)[=:] ?[^,]{1,40}", line)
                lines.append(f"{name[:22]}: engine config: {', '.join(keys)}")
            elif any(m in line for m in STARTUP_MARKS):
                lines.append(f"{name[:22]}: {line.strip()[:300]}")
    return lines


def _replica_logs(logs: list[tuple[str, str]], replicas: int = 2, limit: int = 800) -> str:
    """The whole logs of this run's first replicas (vLLM's lines carry their times): where a
    start-up went, line by line, beside the few lines kept in the results."""
    from enrich.engines.vllm_replica import REPORT_PREFIX

    mine = [(name, text) for name, text in logs if f"{REPORT_PREFIX}start-up" in text][:replicas]
    return "".join(f"==> {name}\n" + "\n".join(text.splitlines()[:limit]) + "\n"
                   for name, text in mine)


def _replica_startup(lines: list[str], t0: float) -> list[dict[str, Any]]:
    """enrich's replica records (vllm_replica.report) as seconds after the run's start: when
    each replica's actor began its start-up, and its split (imports, engine, renderer)."""

    from enrich.engines.vllm_replica import REPORT_PREFIX

    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        worker = line.split(":", 1)[0]
        if REPORT_PREFIX not in line:
            continue
        event, _, payload = line.split(REPORT_PREFIX, 1)[1].partition(" ")
        try:
            got = json.loads(payload)
        except json.JSONDecodeError:  # a line cut at 300 characters by _startup_lines
            continue
        if event == "start-up":
            out.setdefault(worker, {}).update({
                "actor_start_s": round(got["t_start"] - t0, 1), "imports_s": got["imports_s"],
                "engine_s": got["engine_s"], "renderer_s": got["renderer_s"],
                "ready_s": round(got["t_ready"] - t0, 1)})
        elif event == "batch":
            out.setdefault(worker, {}).setdefault("batches", []).append({
                "rows": got["rows"], "taken_after_ready_s": got["taken_after_ready_s"],
                "done_after_ready_s": got["done_after_ready_s"]})
    return sorted(out.values(), key=lambda r: r.get("ready_s", 0))


def _milestones(checkpoint_dir: Path, table: Path, t0: float) -> dict[str, Any] | None:
    """The driver's own split of the time to the first row, from the run's journal: seconds
    after `enrich.run` began (``run_began_s`` after the command started: the interpreter's
    imports, the plan)."""
    from enrich.journal import read_journals

    runs = read_journals(str(checkpoint_dir), str(table))
    if not runs:
        return None
    return {"run_began_s": round(runs[-1]["started_at"] - t0, 1), **(runs[-1].get("milestones") or {})}


def _committed_past(table: Path, rows: int) -> bool:
    log = table / "_delta_log"
    if not log.exists():
        return False
    total = 0
    for f in log.glob("*.json"):
        for line in f.read_text().splitlines():
            if '"commitInfo"' in line:
                m = json.loads(line)["commitInfo"].get("operationMetrics", {})
                total += int(m.get("num_added_rows", 0) or 0)
    return total >= rows


def run_tutorial(model: str, dummy: bool, shards: Path, n: int, work: Path, accelerator: str) -> dict[str, Any]:
    d = work / "tutorial"
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tutorial_gpu.py"), str(shards), str(n), model,
           accelerator, "dummy" if dummy else "auto", str(d / "result.json")]
    s, t0, t1 = _logged("tutorial", cmd, d)
    r = json.loads((d / "result.json").read_text())
    g0, g1 = r["first_row_t"], r["last_row_t"]
    return {"kind": "tutorial", "gpus": 1, "engines_per_gpu": 1, "rows": r["rows"],
            "captions_per_s_sustained": r.get("steady_per_s"),
            "sustained_window": "first to last output row (the tutorial materializes at the end)",
            "captions_per_s_whole_run": round(r["rows"] / (t1 - t0), 1), "wall_s": round(t1 - t0, 1),
            "gpu_util_pct": s.gpu_mean(1, g0, g1), "cpu_cores_busy": Sampler.mean(s.cpu, g0, g1)}


def header(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    versions = {}
    for m in ("vllm", "ray", "deltalake", "transformers"):
        try:
            versions[m] = __import__(m).__version__
        except ImportError:
            versions[m] = None
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpus_on_host": torch.cuda.device_count(), "host_cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "versions": versions,
        "model": args.model, "dummy_weights": args.dummy_weights, "output_tokens": TOKENS,
        "images": "web-photo-like JPEGs, long side 300-1000 px, every one rendered on its own "
                  "(no shared pixels); enrich prepares them to 225x225",
        "runs": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    inp = sub.add_parser("inputs")
    inp.add_argument("--n", type=int, default=40000)
    inp.add_argument("--bare-n", type=int, default=10000)
    run = sub.add_parser("run")
    run.add_argument("--model", required=True)
    run.add_argument("--dummy-weights", action="store_true")
    run.add_argument("--n", type=int, default=40000)
    run.add_argument("--bare-n", type=int, default=10000)
    run.add_argument("--bench-n", type=int, default=0,
                     help="requests of the vllm-bench runs (default --bare-n): vLLM's image "
                          "benchmark ran 68/s on an H100, so 10,000 requests took 300 s")
    run.add_argument("--tutorial-n", type=int, default=2000)
    run.add_argument("--shards-n", type=int, default=0,
                     help="read the first --n rows of an input set of this many (default --n), "
                          "so runs of different lengths share one set")
    run.add_argument("--runs", default="vllm-bench,bare:1,enrich:1:3")
    run.add_argument("--accelerator-type", default="H200")
    run.add_argument("--profile", action="store_true")
    run.add_argument("--lease", default="",
                     help="which lease these runs share (kind, date, time): runs are compared "
                          "only within one lease")
    run.add_argument("--out", required=True)
    mg = sub.add_parser("merge")
    mg.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.cmd == "inputs":
        shards, prepared = make_inputs(args.n, args.bare_n)
        print(f"inputs: {shards} ({args.n} rows), {prepared} ({args.bare_n} prepared)")
        return
    if args.cmd == "merge":
        docs = [json.loads(Path(f).read_text()) for f in args.files]
        merged = {**docs[0], "runs": [r for doc in docs for r in doc["runs"]]}
        print(json.dumps(merged, indent=2))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    shards, prepared = make_inputs(max(args.n, args.shards_n), args.bare_n)
    results = header(args)
    out = Path(args.out)
    specs = args.runs.split(",")
    for spec in specs:  # a typo ends the command before any run, not after an hour of them
        variant(spec)
    for spec in specs:
        t = time.time()
        base, extra, env_added, flags = variant(spec)
        parts = base.split(":")
        try:
            if parts[0] in ("vllm-bench", "vllm-bench-chat"):
                r = run_vllm_bench(args.model, args.bench_n or args.bare_n, WORK, chat=parts[0] == "vllm-bench-chat",
                                   extra=extra)
            elif parts[0] in ("bare", "split"):
                r = run_bare(int(parts[1]), args.model, args.dummy_weights, prepared, WORK,
                             args.accelerator_type, extra, split=parts[0] == "split")
            elif parts[0] == "enrich":
                r = run_enrich(int(parts[1]), int(parts[2]), args.model, args.dummy_weights, shards,
                               args.n, WORK, args.accelerator_type, args.profile, extra, env_added,
                               int(parts[3]) if len(parts) > 3 else None, flags)
            elif parts[0] == "tutorial":
                r = run_tutorial(args.model, args.dummy_weights, shards, args.tutorial_n, WORK,
                                 args.accelerator_type)
            else:
                raise SystemExit(f"unknown run {spec}")
        except Exception as exc:  # noqa: BLE001 - one failed run is recorded, the others go on
            r = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
        r = {"run": spec, "lease": args.lease, **r, "run_s": round(time.time() - t, 1)}
        logs = r.pop("_replica_logs", None)
        if logs:  # beside the results: d.json's second run → d-2-replica.log
            out.with_name(f"{out.stem}-{len(results['runs']) + 1}-replica.log").write_text(logs)
        results["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "llm_kwargs"}), flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # after every run


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        wp = argparse.ArgumentParser()
        for a in ("--cfg", "--prepared", "--ready", "--go", "--result"):
            wp.add_argument(a)
        wp.add_argument("--part", type=int)
        wp.add_argument("--parts", type=int)
        wp.add_argument("--split", action="store_true")
        bare_worker(wp.parse_args(sys.argv[2:]))
    else:
        main()
