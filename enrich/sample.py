"""The offline ``sample`` source: a small webdataset in the real dataset's layout, built
deterministically from a seed, with varied real-looking images, duplicates and corrupt members.

Tests and benchmarks use :func:`make_webdataset` to build larger sets of the same kind.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SAMPLE_VERSION = 2
_WORDS = ("a red kite over a beach", "two cups on a wooden table", "a city street at dusk",
          "a dog running on grass", "mountains under a cloudy sky", "a bowl of fruit",
          "a bicycle leaning on a wall", "a sailboat on calm water")


@dataclass(frozen=True)
class DatasetSpec:
    shards: int = 4
    per_shard: int = 64
    seed: int = 0
    duplicate_every: int = 9  # every Nth sample repeats an earlier image byte for byte
    corrupt_every: int = 13  # every Nth sample is broken (truncated, zero-byte, garbage)
    min_side: int = 300
    max_side: int = 1200
    skip_shard_numbers: tuple[int, ...] = (2,)  # the real dataset misses some numbers too


def render_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like picture: sky/ground gradient, a few shapes, grain and a soft blur."""
    top = rng.integers(40, 220, 3).astype(np.float32)
    bottom = rng.integers(20, 200, 3).astype(np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    base = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3))
    # Grain drawn at 1/4 scale and enlarged: looks like texture, costs 1/16 of full-size noise.
    grain = rng.normal(128, 10, (max(1, height // 4), max(1, width // 4), 3)).astype(np.uint8)
    grain_img = Image.fromarray(grain, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    img = base + (np.asarray(grain_img, dtype=np.float32) - 128.0)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 10, width // 2))
        y1 = y0 + int(rng.integers(height // 10, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=color)
    return pil.filter(ImageFilter.SMOOTH)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _corrupt(rng: np.random.Generator, good: bytes, kind: int) -> bytes:
    if kind == 0:
        return good[: max(200, len(good) // 3)]  # truncated: the header parses, decoding fails
    if kind == 1:
        return b""  # zero-byte member
    return bytes(rng.integers(0, 256, 2048, dtype=np.uint8))  # garbage


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000  # fixed: the tar bytes are reproducible
    tar.addfile(info, io.BytesIO(data))


def make_webdataset(out_dir: str | Path, spec: DatasetSpec = DatasetSpec()) -> list[Path]:
    """Write ``spec.shards`` tar shards into ``out_dir``; the same spec gives the same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    earlier: list[bytes] = []
    paths: list[Path] = []
    number = 0
    counter = 0
    for _ in range(spec.shards):
        while number in spec.skip_shard_numbers:
            number += 1
        path = out / f"{number:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(spec.per_shard):
                counter += 1
                key = f"{number:05d}{i:04d}"
                long_side = int(rng.integers(spec.min_side, spec.max_side + 1))
                aspect = float(rng.uniform(0.6, 1.6))
                w, h = (long_side, max(32, int(long_side / aspect))) if aspect >= 1 else (
                    max(32, int(long_side * aspect)), long_side)
                if spec.duplicate_every and counter % spec.duplicate_every == 0 and earlier:
                    data = earlier[int(rng.integers(0, len(earlier)))]
                else:
                    data = _jpeg(render_image(rng, w, h), int(rng.integers(80, 95)))
                    earlier.append(data)
                if spec.corrupt_every and counter % spec.corrupt_every == 0:
                    data = _corrupt(rng, data, counter // spec.corrupt_every % 3)
                _add(tar, f"{key}.jpg", data)
                _add(tar, f"{key}.txt", _WORDS[int(rng.integers(0, len(_WORDS)))].encode())
        paths.append(path)
        number += 1
    return paths


def default_sample_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "enrich" / f"sample-v{SAMPLE_VERSION}"


def ensure_sample(directory: str | Path | None = None) -> Path:
    """Build the sample dataset once (atomically: a crash leaves no half-built set)."""
    target = Path(directory) if directory else default_sample_dir()
    if (target / "COMPLETE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=target.parent))
    try:
        make_webdataset(tmp, DatasetSpec())
        (tmp / "COMPLETE").write_text(f"enrich sample v{SAMPLE_VERSION}\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first
            if not (target / "COMPLETE").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
