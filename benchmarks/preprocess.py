"""Preprocessing micro-benchmark: hash + validate + decode + resize per core, on a web-photo
size mix (long side 300-2000 px), enrich's prepare against the tutorial's, and the quality of
DCT-scaled (draft) decoding against a full decode (PSNR).

    python benchmarks/preprocess.py [--images 300]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import web_photos  # noqa: E402

from enrich import prepare  # noqa: E402
from enrich.prepare import prepare_image  # noqa: E402

SIZE = 225


def tutorial(data: bytes) -> bytes:
    Image.open(io.BytesIO(data))  # is_valid_image: header only
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE))
    return img.tobytes()


def ours(data: bytes, draft: bool) -> bytes | None:
    hashlib.sha256(data).hexdigest()
    return prepare_image(data, size=SIZE, draft=draft).pixels


def rate(fn, images: list[bytes], repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for d in images:
            fn(d)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def psnr(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, np.uint8).astype(np.float64)
    y = np.frombuffer(b, np.uint8).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()
    images = web_photos(args.images, seed=3)
    results = {"images": len(images), "mean_kb": sum(map(len, images)) / len(images) / 1024}
    results["tutorial_per_core"] = rate(tutorial, images)
    results["full_decode_per_core"] = rate(lambda d: ours(d, False), images)
    for factor in (1, 1.5, 2):
        prepare.DRAFT_FACTOR = factor
        results[f"draft{factor}x_per_core"] = rate(lambda d: ours(d, True), images)
        scores = [psnr(ours(d, True) or b"", ours(d, False) or b"") for d in images]
        finite = [s for s in scores if s != float("inf")]
        results[f"draft{factor}x_psnr_mean"] = float(np.mean(finite)) if finite else float("inf")
        results[f"draft{factor}x_psnr_min"] = float(np.min(finite)) if finite else float("inf")
    prepare.DRAFT_FACTOR = 2
    print(f"{len(images)} photos, mean {results['mean_kb']:.0f} KB, long side 300-2000 px; one core")
    print(f"{'pipeline':<34}{'images/s':>10}{'vs tutorial':>13}{'PSNR mean/min dB':>20}")
    print(f"{'tutorial (header check + full decode)':<34}{results['tutorial_per_core']:>10.1f}{1.0:>12.2f}x")
    print(f"{'enrich, full decode':<34}{results['full_decode_per_core']:>10.1f}"
          f"{results['full_decode_per_core'] / results['tutorial_per_core']:>12.2f}x{'(reference)':>20}")
    for factor in (1, 1.5, 2):
        r = results[f"draft{factor}x_per_core"]
        print(f"{f'enrich, draft >= {factor}x target':<34}{r:>10.1f}"
              f"{r / results['tutorial_per_core']:>12.2f}x"
              f"{results[f'draft{factor}x_psnr_mean']:>11.1f} / {results[f'draft{factor}x_psnr_min']:.1f}")
    return results


if __name__ == "__main__":
    main()
