"""The tutorial's pipeline ("Multimodal LLM batch inference with Ray Data LLM") re-created on
Ray 2.60 with its real vLLM processor, for benchmarks/gpu.py.

    python benchmarks/tutorial_gpu.py SHARD_DIR N MODEL ACCELERATOR dummy|auto RESULT_JSON

As the tutorial: batch 16, max_model_len 8192, no image-size bound given to vLLM, PIL images in
the messages (resized to 225x225 in a Ray map), repartition, the header-only validity filter,
materialize at the end. Two changes, both forced: `has_image=True` and `build_llm_processor`
no longer exist in Ray 2.60 (`prepare_multimodal_stage` and `build_processor` replace them),
and the image part is vLLM's `image_pil`; the shards are read with
`ray.data.read_webdataset` (the GPU host has no `datasets`; the tutorial streams the hub
through `datasets` into one read task, which can only be slower).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from io import BytesIO

import ray
from PIL import Image
from tutorial_baseline import tutorial_messages  # this folder is on sys.path when run as a script

SIZE = 225


def is_valid_image(row: dict) -> bool:  # the tutorial's filter: a header-only check
    try:
        Image.open(BytesIO(row["jpg"]))
        return True
    except Exception:  # noqa: BLE001 - the tutorial's own catch-all, kept as written
        return False


def preprocess(row: dict) -> dict:
    image = Image.open(BytesIO(row["jpg"])).convert("RGB").resize((SIZE, SIZE))
    return {
        "messages": tutorial_messages({"type": "image_pil", "image_pil": image}),
        "sampling_params": {"temperature": 0.3, "max_tokens": 100, "ignore_eos": True},
    }


def postprocess(row: dict) -> dict:
    return {"generated_text": row["generated_text"], "t": time.time()}


def main(shard_dir: str, n: int, model: str, accelerator: str, weights: str, out: str) -> None:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    engine_kwargs: dict = {"max_model_len": 8192}
    if weights == "dummy":
        engine_kwargs["load_format"] = "dummy"
    cpu = accelerator.lower() == "cpu"
    if cpu:
        engine_kwargs["kv_cache_memory_bytes"] = 512 * 2**20
    config = vLLMEngineProcessorConfig(
        model_source=model, engine_kwargs=engine_kwargs, batch_size=16, concurrency=1,
        accelerator_type=None if cpu else accelerator, prepare_multimodal_stage={"enabled": True},
        **({"placement_group_config": {"bundles": [{"CPU": 1}]}} if cpu else {}))
    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
    t0 = time.time()
    files = sorted(glob.glob(os.path.join(shard_dir, "*.tar")))
    ds = ray.data.read_webdataset(files, decoder=None).select_columns(["jpg"])
    ds = ds.limit(n).repartition(64).filter(is_valid_image)
    ds = processor(ds).materialize()
    times = sorted(r["t"] for r in ds.iter_rows())
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    with open(out, "w") as f:
        json.dump({"rows": len(times), "wall_s": time.time() - t0, "first_row_t": times[0],
                   "last_row_t": times[-1], "steady_per_s": round(steady, 1) if steady else None}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6])
