"""Real Qwen2.5-VL-3B on vLLM. Run on a GPU machine with `pip install -e '.[gpu,test]'` and
`ENRICH_GPU_TESTS=1 python -m pytest -m gpu tests/gpu -s`. Skipped everywhere else."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("ENRICH_GPU_TESTS") != "1",
                       reason="set ENRICH_GPU_TESTS=1 on a machine with a GPU, vllm and the model"),
]

ENGLISH = re.compile(r"\b(the|a|an|of|with|and|in|on|is)\b", re.IGNORECASE)
COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple", "grey", "gray",
           "brown", "pink")


def test_real_model_captions_a_few_hundred_images(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from enrich.config import RunConfig
    from enrich.pipeline import run
    from enrich.progress import Reporter

    cfg = RunConfig(until=256, source="sample", engine="vllm", table=str(tmp_path / "t"),
                    accelerator_type=os.environ.get("ENRICH_GPU_TYPE", "L4"),
                    checkpoint_dir=str(tmp_path / "ck"))
    t0 = time.monotonic()
    result = run(cfg, reporter=Reporter(total=cfg.until))
    seconds = time.monotonic() - t0
    rows = DeltaTable(cfg.table).to_pyarrow_dataset().to_table().to_pylist()
    captioned = [r for r in rows if r["status"] == "captioned"]
    tokens = sum(r["num_generated_tokens"] or 0 for r in captioned)
    print(f"\n{len(captioned)} captions in {seconds:.1f}s: {len(captioned) / seconds:.2f} images/s, "
          f"{tokens / seconds:.0f} generated tokens/s, engine starts {result.engine_starts}")
    assert len(captioned) > 200 and result.counts.by_status["failed"] == 0
    for r in captioned:
        assert r["caption"].strip() and r["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
        assert ENGLISH.search(r["caption"]), r["caption"]
    # The sample images are coloured shapes over gradients: most captions should say so.
    about = [r for r in captioned if any(c in r["caption"].lower() for c in COLOURS + ("shape",
             "circle", "rectangle", "oval", "gradient", "abstract"))]
    assert len(about) >= 0.8 * len(captioned)
