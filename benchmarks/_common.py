"""Shared by the benchmarks: realistic data, and measuring a command's whole process tree."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enrich.sample import render_image


def _with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG with a COM segment after SOI: identical pixels, different bytes (hash)."""
    seg = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + seg + jpeg[2:]


def web_photos(n: int, seed: int, sides: tuple[int, int] = (300, 2000)) -> list[bytes]:
    """``n`` photo-like JPEGs of web sizes: long side 300-2000 px (or ``sides``), quality 75-92."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        long_side = int(rng.integers(sides[0], sides[1] + 1))
        aspect = float(rng.uniform(0.6, 1.6))
        w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
        buf = io.BytesIO()
        render_image(rng, w, h).save(buf, "JPEG", quality=int(rng.integers(75, 93)))
        out.append(buf.getvalue())
    return out


def make_photo_set(out: Path, n: int, *, per_shard: int = 1000, distinct: int = 400,
                   seed: int = 1, sides: tuple[int, int] = (300, 2000)) -> Path:
    """``n`` web-photo-like JPEGs (long side 300-2000 px, quality 75-92) in tar shards.

    ``distinct`` images are rendered and reused with a unique JPEG comment each, so every member
    has its own sha256 (nothing is skipped) while the set builds in seconds, not minutes."""
    marker = out / f"COMPLETE-{n}-{distinct}-{seed}"
    if marker.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    pool = web_photos(distinct, seed, sides)
    for shard in range((n + per_shard - 1) // per_shard):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                data = _with_comment(pool[i % distinct], f"bench-{i}".encode())
                info = tarfile.TarInfo(f"{i:08d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    marker.touch()
    return out


def _unique_shard(args: tuple[Path, int, int, int, int, tuple[int, int]]) -> None:
    out, shard, start, stop, seed, sides = args
    photos = web_photos(stop - start, seed * 100_003 + shard, sides)
    tmp = out / f".{shard:05d}.tar"
    with tarfile.open(tmp, "w") as tar:
        for i, data in zip(range(start, stop), photos, strict=True):
            info = tarfile.TarInfo(f"{i:08d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out / f"{shard:05d}.tar")


def make_unique_photo_set(out: Path, n: int, *, per_shard: int = 500, seed: int = 1,
                          sides: tuple[int, int] = (300, 1000), workers: int | None = None) -> Path:
    """``n`` web-photo-like JPEGs in tar shards, every one rendered on its own: no two share
    pixels. For the GPU benchmarks: vLLM caches processed images and prefixes by their pixels,
    so reused pictures (as in :func:`make_photo_set`) would skip the vision work a real dataset
    needs. Rendered in parallel, one process per shard."""
    from multiprocessing import Pool

    marker = out / f"COMPLETE-unique-{n}-{seed}-{sides[0]}-{sides[1]}"
    if marker.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, k, k * per_shard, min(n, (k + 1) * per_shard), seed, sides)
            for k in range((n + per_shard - 1) // per_shard)]
    with Pool(workers or os.cpu_count()) as pool:
        pool.map(_unique_shard, jobs, chunksize=1)
    marker.touch()
    return out


def _tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    while frontier:
        nxt = []
        for p in frontier:
            nxt.extend(children.get(p, []))
        pids.extend(nxt)
        frontier = nxt
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_mem_mb: float
    returncode: int
    stdout: str
    stderr: str
    at_peak: dict[str, float] = field(default_factory=dict)  # 'name xN processes' -> MB, at the peak


def _name(pid: int) -> str:
    """A process's name as Ray shows it (``ray::FetchActor``, ``raylet``), else its command."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        head = argv[0].decode(errors="replace")
        if head.startswith("ray::"):
            return head.split()[0]
        return " ".join(os.path.basename(a.decode(errors="replace")) for a in argv[:3] if a)[:60]
    except OSError:
        return "?"


def measure(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
            interval: float = 0.5) -> Measured:
    """Run ``cmd``; sample its whole process tree (driver, Ray's GCS/raylet and workers). Memory
    is PSS summed over the tree (shared pages counted once, unlike RSS); CPU is user+system
    seconds, the last reading of each process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    peak = 0
    cpu: dict[int, float] = {}
    out: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        out[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(k, s)) for k, s in
               (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    at_peak: dict[str, float] = {}
    while proc.poll() is None:
        pids = _tree(proc.pid)
        pss = {p: _pss_kb(p) for p in pids}
        if sum(pss.values()) > peak:
            peak = sum(pss.values())
            by_name: dict[str, list[float]] = {}
            for p, kb in pss.items():
                mb_n = by_name.setdefault(_name(p), [0.0, 0])
                mb_n[0] += kb / 1024
                mb_n[1] += 1
            at_peak = {(f"{k} x{n}" if n > 1 else k): mb for k, (mb, n) in by_name.items()}
        for p in pids:
            cpu[p] = max(cpu.get(p, 0.0), _cpu_s(p))
        time.sleep(interval)
    wall = time.monotonic() - t0
    for t in threads:
        t.join()
    return Measured(wall, sum(cpu.values()), peak / 1024, proc.returncode, out.get("out", ""),
                    out.get("err", ""), {k: round(v) for k, v in sorted(at_peak.items(),
                                                                      key=lambda kv: -kv[1])})
