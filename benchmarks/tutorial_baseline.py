"""The tutorial's pipeline ("Multimodal LLM batch inference with Ray Data LLM"), re-created on
Ray 2.60 with only the engine replaced by enrich's dry-run captioner (same cost per image).

    python benchmarks/tutorial_baseline.py SHARD_DIR N

Work-arounds, each minimal and only where the tutorial's code cannot run offline:
  * the dataset is the local tar shards through `datasets`' webdataset loader (streaming), not
    the hub id;
  * `ray.data.from_huggingface` first asks the hub for auto-converted parquet files, which fails
    offline, so we call what it calls next for a streaming dataset: read_datasource over
    HuggingFaceDatasource (one read task, as from_huggingface itself would use);
  * the vLLM processor is replaced by a map_batches over the dry-run captioner, fed the PIL
    image the tutorial puts in its messages.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from io import BytesIO

import numpy as np
import ray
from PIL import Image

from enrich.engines.dryrun import REPLICA_CPUS, caption_array

SIZE = 225


def is_valid_image(row: dict) -> bool:  # the tutorial's filter: a header-only check
    try:
        Image.open(BytesIO(row["jpg"]["bytes"]))
        return True
    except Exception:  # noqa: BLE001 - the tutorial's own catch-all, kept as written
        return False


def tutorial_messages(image_part: dict) -> list[dict]:
    """The tutorial's chat messages around one image content part."""
    return [
        {"role": "system", "content": "You are a helpful assistant that generates accurate "
         "and descriptive captions for images."},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe this image in detail. Focus on the main "
             "subjects, actions, and setting."},
            image_part,
        ]},
    ]


def preprocess(row: dict) -> dict:  # the tutorial's preprocess: PIL resize, PIL in the message
    image = Image.open(BytesIO(row["jpg"]["bytes"])).convert("RGB").resize((SIZE, SIZE))
    return {
        "messages": tutorial_messages({"type": "image", "image": image}),
        "sampling_params": {"temperature": 0.3, "max_tokens": 256},
    }


class DryRunStandIn:
    """Stands where the tutorial's vLLM processor stands: the same dry-run caption per image."""

    def __call__(self, batch: dict) -> dict:
        captions = []
        for messages in batch["messages"]:
            image = messages[1]["content"][1]["image"]
            # the same colour summary as the dry-run engine (which decodes its JPEG at 1/4 scale)
            captions.append(caption_array(np.asarray(image.convert("RGB"))[::4, ::4])[0])
        return {"generated_text": np.array(captions, dtype=object)}


def main(shard_dir: str, n: int) -> None:
    import datasets
    from ray.data._internal.datasource.huggingface_datasource import HuggingFaceDatasource

    ray.init(num_cpus=int(os.environ.get("BENCH_CPUS", "2")), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    t0 = time.monotonic()
    files = sorted(glob.glob(os.path.join(shard_dir, "*.tar")))
    hf_dataset = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                       streaming=True)
    hf_dataset = hf_dataset.select_columns(["jpg"])
    ds = ray.data.read_datasource(HuggingFaceDatasource(dataset=hf_dataset))
    ds = ds.limit(n)
    ds = ds.repartition(64)
    ds = ds.filter(is_valid_image)
    ds = ds.map(preprocess)
    ds = ds.map_batches(DryRunStandIn, batch_size=64, concurrency=1, num_cpus=REPLICA_CPUS)
    ds = ds.materialize()
    rows = ds.count()
    print(f"rows={rows} seconds={time.monotonic() - t0:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
