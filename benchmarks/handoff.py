"""What one row costs the replica's own process (its one GIL) between the render processes and
the engine: a processed request's bytes unpickled (``ProcessRenderer.load``), then handed to the
engine (``LLMEngine.add_request``), timed per row in the replica's thread as the engine loop does
it. On a GPU, with the engine core in the same process, this is work the stepping thread waits
for; at R rows/s it takes R x (cost) of that one core.

    python benchmarks/handoff.py --rows 200

Runs on vLLM's CPU build with the tiny random-weight Qwen2.5-VL the tests build
(tests/tiny_qwen.py): the input processing is the real model's (web-photo-like JPEGs prepared
to 225x225 as enrich's read tasks do, the HF image processor, the chat template); only the
engine's model is small. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    args = ap.parse_args()

    from benchmarks._common import web_photos
    from enrich.config import RunConfig
    from enrich.engines.vllm import ReplicaSpec, VLLMCaptioner, engine_kwargs, sampling_params
    from enrich.prepare import prepare_image
    from tests.tiny_qwen import build

    model = build(Path(tempfile.mkdtemp(prefix="handoff-model-")))
    cfg = RunConfig(until=1, engine="vllm", accelerator_type="cpu", model=str(model),
                    model_revision=None, engine_kwargs={"enforce_eager": True}, max_tokens=8)
    replica = VLLMCaptioner(ReplicaSpec(llm_kwargs=engine_kwargs(cfg), system_prompt=cfg.system_prompt,
                                        prompt=cfg.prompt, params=sampling_params(cfg),
                                        render_threads=1, render_processes=2, lookahead=8))
    renderer, engine, params = replica.renderer, replica.loop.engine, replica.loop.params
    # what a replica is handed: web-photo-like JPEGs as enrich's read tasks prepare them
    jpegs = [prepare_image(b, size=cfg.image_size, jpeg=True).jpeg for b in web_photos(args.rows, seed=1)]
    results = [f.result() for f in [renderer.submit(j) for j in jpegs]]  # rendered beforehand
    load_ms, add_ms, row_ms = [], [], []
    for i, raw in enumerate(results):
        t0 = time.perf_counter()
        request = renderer.load(raw)
        t1 = time.perf_counter()
        engine.add_request(f"h{i}", request, params)
        t2 = time.perf_counter()
        load_ms.append((t1 - t0) * 1e3)
        add_ms.append((t2 - t1) * 1e3)
        row_ms.append((t2 - t0) * 1e3)
    engine.abort_request([f"h{i}" for i in range(len(results))])
    renderer.close()
    sizes = [len(r) for r in results]
    per_row = statistics.median(row_ms)
    print(json.dumps({
        "rows": len(results), "pickled_kb_median": round(statistics.median(sizes) / 1024, 1),
        "load_ms_median": round(statistics.median(load_ms), 3),
        "add_request_ms_median": round(statistics.median(add_ms), 3),
        "replica_ms_per_row": round(per_row, 3),
        "one_core_rows_per_s": round(1e3 / per_row),
    }))


if __name__ == "__main__":
    main()
