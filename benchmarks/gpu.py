"""Captions per GPU-second on one CUDA host: bare vLLM (the limit), the tutorial's pipeline and
enrich end to end, measured on the same GPU in one go. Writes one results file.

    python benchmarks/gpu.py --model DIR --dummy-weights [--n 3000] [--runs bare,bare2,enrich2,...]

Needs vllm and ray on the host (no network: `../shared/gpu/` builds an offline runtime; a model
folder of the real architecture is used with vLLM's `load_format="dummy"`, random weights,
whose captions run to --max-tokens). Every run uses the same prompts as enrich sends: 225² JPEG
data URLs made by enrich's own prepare step from web-size photos, enrich's system prompt and
prompt, enrich's engine settings, fixed-length outputs (bare: ignore_eos).

Runs (each in fresh processes, one after the other, all on GPU 0):
  bareK    K vLLM engines (LLM.chat) sharing the GPU, each with 1/K of its memory and 1/K of the
           prompts; K=1 is the default. `bare1x` = K=1 with larger batches (max_num_seqs 512,
           max_num_batched_tokens 16384).
  enrichK  python -m enrich --engine vllm on webdataset shards of the same photos,
           --replicas-per-gpu K; steady state from the table's commit history.
  tutorial the tutorial's pipeline re-created on Ray 2.60 (tutorial_gpu.py), fewer rows.
Per run: captions/s, output tokens/s, GPU utilisation (nvidia-smi, mean while generating), CPU
cores busy (/proc/stat), engine start, and for enrich the time to the first committed row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENS = 100


# ------------------------------------------------------------------------------------------
# Sampling the machine while a run works.
# ------------------------------------------------------------------------------------------
class Sampler:
    """GPU utilisation (nvidia-smi, every 0.5 s) and busy CPU cores (/proc/stat), with times,
    so a run can average over exactly its generating window."""

    def __init__(self) -> None:
        self.gpu: list[tuple[float, float]] = []
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
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "500", "-i", "0"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if self._stop.is_set():
                break
            try:
                self.gpu.append((time.time(), float(line.strip())))
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


# ------------------------------------------------------------------------------------------
# Inputs: the same photos as shards (for enrich) and as prepared prompts (for bare vLLM).
# ------------------------------------------------------------------------------------------
def _prompt_line(data: bytes) -> str:
    from enrich.config import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT
    from enrich.engines.vllm import build_messages
    from enrich.prepare import prepare_image

    p = prepare_image(data, size=225, jpeg=True)
    assert p.ok and p.jpeg
    return json.dumps(build_messages(p.jpeg, system_prompt=DEFAULT_SYSTEM_PROMPT, prompt=DEFAULT_PROMPT))


def make_inputs(work: Path, n: int) -> tuple[Path, Path]:
    import tarfile
    from multiprocessing import Pool

    from benchmarks._common import make_photo_set

    shards = make_photo_set(work / "shards", n, per_shard=500, distinct=100)
    prompts = work / f"prompts-{n}.jsonl"
    if not prompts.exists():
        members = []
        for tar_path in sorted(shards.glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                for m in tar:
                    f = tar.extractfile(m)
                    assert f is not None
                    members.append(f.read())
        with Pool(os.cpu_count()) as pool:
            lines = pool.map(_prompt_line, members, chunksize=16)
        prompts.write_text("\n".join(lines) + "\n")
    return shards, prompts


def engine_kwargs(model: str, dummy: bool, share: int, extra: dict[str, Any],
                  accelerator: str = "H100") -> dict[str, Any]:
    """enrich's engine settings for this model, as its processor would pass them."""
    from enrich.config import RunConfig
    from enrich.engines.vllm import processor_config_kwargs

    cfg = RunConfig(until=1, engine="vllm", model=model, max_tokens=TOKENS, replicas_per_gpu=share,
                    accelerator_type=accelerator,
                    engine_kwargs={**({"load_format": "dummy"} if dummy else {}), **extra})
    kw = dict(processor_config_kwargs(cfg)["engine_kwargs"])
    kw.pop("revision", None)
    return kw


# ------------------------------------------------------------------------------------------
# bare vLLM: K worker processes, started together, generating together.
# ------------------------------------------------------------------------------------------
def bare_worker(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams

    kw = json.loads(args.kwargs)
    lines = Path(args.prompts).read_text().splitlines()
    mine = [json.loads(x) for i, x in enumerate(lines) if i % args.parts == args.part]
    t0 = time.time()
    llm = LLM(model=args.model, **kw)
    t_loaded = time.time()
    Path(args.ready).write_text(str(t_loaded - t0))
    while not Path(args.go).exists():
        time.sleep(0.05)
    params = SamplingParams(temperature=0.3, max_tokens=TOKENS, ignore_eos=True)
    g0 = time.time()
    outs = llm.chat(mine, params, use_tqdm=False)
    g1 = time.time()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    Path(args.result).write_text(json.dumps({"start_s": t_loaded - t0, "t0": g0, "t1": g1,
                                             "captions": len(outs), "tokens": tokens}))


def run_bare(name: str, k: int, model: str, dummy: bool, prompts: Path, work: Path,
             extra: dict[str, Any], accelerator: str) -> dict[str, Any]:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    kw = engine_kwargs(model, dummy, k, extra, accelerator)
    procs = []
    for i in range(k):
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "_bare", "--model", model, "--prompts", str(prompts),
             "--part", str(i), "--parts", str(k), "--kwargs", json.dumps(kw),
             "--ready", str(d / f"ready{i}"), "--go", str(d / "go"), "--result", str(d / f"result{i}")],
            stdout=open(d / f"log{i}", "w"), stderr=subprocess.STDOUT))
    with Sampler() as s:
        while not all((d / f"ready{i}").exists() for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"{name}: a worker died: {(d / 'log0').read_text()[-2000:]}")
            time.sleep(0.2)
        (d / "go").touch()
        for p in procs:
            p.wait()
    res = [json.loads((d / f"result{i}").read_text()) for i in range(k)]
    t0, t1 = min(r["t0"] for r in res), max(r["t1"] for r in res)
    caps, toks = sum(r["captions"] for r in res), sum(r["tokens"] for r in res)
    return {"run": name, "engines": k, "engine_kwargs": kw, "captions": caps,
            "captions_per_s": round(caps / (t1 - t0), 1), "output_tokens_per_s": round(toks / (t1 - t0)),
            "gpu_util_pct": Sampler.mean(s.gpu, t0, t1), "cpu_cores_busy": Sampler.mean(s.cpu, t0, t1),
            "engine_start_s": round(max(r["start_s"] for r in res), 1),
            "generate_s": round(t1 - t0, 1)}


# ------------------------------------------------------------------------------------------
# enrich end to end.
# ------------------------------------------------------------------------------------------
def run_enrich(name: str, k: int, model: str, dummy: bool, shards: Path, n: int, work: Path,
               extra: dict[str, Any], accelerator: str) -> dict[str, Any]:
    from deltalake import DeltaTable

    d = work / name
    table = d / "table"
    subprocess.run(["rm", "-rf", str(d)], check=True)
    d.mkdir(parents=True)
    kwargs = {**({"load_format": "dummy"} if dummy else {}), **extra}
    cmd = [sys.executable, "-m", "enrich", "--until", str(n), "--source", str(shards),
           "--table", str(table), "--checkpoint-dir", str(d / "ck"), "--engine", "vllm",
           "--accelerator-type", accelerator, "--model", model, "--max-tokens", str(TOKENS),
           "--engine-kwargs", json.dumps(kwargs), "--replicas-per-gpu", str(k),
           "--commit-every", "250", "--quiet"]
    with Sampler() as s:
        t0 = time.time()
        # cwd: not the repo root, where `enrich` would be imported from the source folder
        # rather than the install (which maps enrich.schemas)
        proc = subprocess.run(cmd, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT, cwd=d)
        t_end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}: {(d / 'log').read_text()[-3000:]}")
    hist = sorted((h for h in DeltaTable(str(table)).history() if h.get("operation") == "WRITE"),
                  key=lambda h: h["timestamp"])
    commits = [(h["timestamp"] / 1000, int(h.get("operationMetrics", {}).get("num_added_rows", 0)))
               for h in hist]
    commits = [c for c in commits if c[1] > 0]
    rows = sum(c[1] for c in commits)
    first_t = commits[0][0]
    # steady state: from the first commit to the last, the rows committed after the first
    steady_rows = rows - commits[0][1]
    steady_s = commits[-1][0] - first_t
    return {"run": name, "replicas_per_gpu": k, "rows": rows,
            "captions_per_s_steady": round(steady_rows / steady_s, 1) if steady_s > 0 else None,
            "captions_per_s_whole_run": round(rows / (t_end - t0), 1),
            "output_tokens_per_s_steady": round(steady_rows * TOKENS / steady_s) if steady_s > 0 else None,
            "first_committed_row_s": round(first_t - t0, 1), "wall_s": round(t_end - t0, 1),
            "gpu_util_pct": Sampler.mean(s.gpu, first_t, commits[-1][0]),
            "cpu_cores_busy": Sampler.mean(s.cpu, first_t, commits[-1][0]),
            "commits": len(commits)}


def run_tutorial(model: str, dummy: bool, shards: Path, n: int, work: Path, accelerator: str) -> dict[str, Any]:
    d = work / "tutorial"
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tutorial_gpu.py"), str(shards), str(n), model,
           accelerator, "dummy" if dummy else "auto", str(d / "result.json")]
    with Sampler() as s:
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)
        t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"tutorial: exit {proc.returncode}: {(d / 'log').read_text()[-3000:]}")
    r = json.loads((d / "result.json").read_text())
    g0, g1 = r["first_row_t"], r["last_row_t"]
    return {"run": "tutorial", "rows": r["rows"], "captions_per_s_whole_run": round(r["rows"] / (t1 - t0), 1),
            "captions_per_s_steady": r.get("steady_per_s"), "wall_s": round(t1 - t0, 1),
            "gpu_util_pct": Sampler.mean(s.gpu, g0, g1), "cpu_cores_busy": Sampler.mean(s.cpu, g0, g1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--tutorial-n", type=int, default=1000)
    ap.add_argument("--runs", default="bare1,bare2,bare3,enrich2,enrich1,tutorial")
    ap.add_argument("--accelerator-type", default="H100")
    ap.add_argument("--work", default="/tmp/enrich-gpu-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-gpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shards, prompts = make_inputs(work, args.n)
    import torch

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "host_cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "versions": {m: __import__(m).__version__ for m in ("vllm", "ray", "deltalake")},
        "model": args.model, "dummy_weights": args.dummy_weights, "output_tokens": TOKENS,
        "images": f"{args.n} web-size photos (long side 300-2000 px), prepared to 225x225 JPEG",
        "command": " ".join(sys.argv), "runs": []}
    big = {"max_num_seqs": 512, "max_num_batched_tokens": 16384}
    for name in args.runs.split(","):
        t = time.time()
        try:
            if name == "bare1x":
                r = run_bare(name, 1, args.model, args.dummy_weights, prompts, work, big,
                             args.accelerator_type)
            elif name.startswith("bare"):
                r = run_bare(name, int(name[4:]), args.model, args.dummy_weights, prompts, work, {},
                             args.accelerator_type)
            elif name.startswith("enrich"):
                r = run_enrich(name, int(name[6:]), args.model, args.dummy_weights, shards, args.n,
                               work, {}, args.accelerator_type)
            elif name == "tutorial":
                r = run_tutorial(args.model, args.dummy_weights, shards, args.tutorial_n, work,
                                 args.accelerator_type)
            else:
                raise SystemExit(f"unknown run {name}")
        except Exception as exc:  # noqa: BLE001 - one failed run is recorded, the others go on
            r = {"run": name, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        r["run_s"] = round(time.time() - t, 1)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # after every run


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        wp = argparse.ArgumentParser()
        for a in ("--model", "--prompts", "--kwargs", "--ready", "--go", "--result"):
            wp.add_argument(a)
        wp.add_argument("--part", type=int)
        wp.add_argument("--parts", type=int)
        bare_worker(wp.parse_args(sys.argv[2:]))
    else:
        main()
