"""One command, one run, same data, same machine: the tutorial's pipeline against enrich.

    python benchmarks/run.py [--n 10000] [--small 2000] [--large 20000]

Prints (and writes to benchmarks/results.json) rows/s, CPU-seconds per image and peak memory
(PSS summed over the driver and every Ray process) for:
  (a) the tutorial's pipeline re-created on Ray 2.60 (benchmarks/tutorial_baseline.py),
  (b) enrich end to end into a Delta table,
  (c) bare preprocessing (read + sha256 + validate + decode + resize) on all cores, no Ray,
plus enrich at --small and --large rows (memory flat?), the rerun of a completed --until,
the skip index's bytes per image and lookups/s, and engine starts over a many-commit run.
Same images (a web-photo size mix), same resize, same dry-run engine at 0 ms for all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_photo_set, measure

from enrich.prepare import prepare_image
from enrich.skip import SkipIndex
from enrich.source import iter_shard, list_shards

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


def _bare_worker(path: str) -> int:
    n = 0
    for shard in list_shards(path):
        for s in iter_shard(shard):
            hashlib.sha256(s.image or b"").hexdigest()
            prepare_image(s.image, size=225)
            n += 1
    return n


def bare_rate(shard_dir: Path, cpus: int) -> tuple[float, float]:
    files = sorted(str(p) for p in shard_dir.glob("*.tar"))
    t0 = time.monotonic()
    with mp.get_context("fork").Pool(cpus) as pool:
        n = sum(pool.map(_bare_worker, files, chunksize=1))
    wall = time.monotonic() - t0
    return n / wall, wall


def enrich_cmd(shards: Path, table: Path, n: int, extra: list[str] = ()) -> list[str]:
    return [PY, "-m", "enrich", "--until", str(n), "--source", str(shards), "--engine", "dry-run",
            "--table", str(table), "--checkpoint-dir", str(table) + "-ck", "--quiet",
            "--num-cpus", "2", *extra]


def skip_index_figures(n: int = 1_000_000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    raw = rng.bytes(32 * n)
    hexes = [raw[i * 32:(i + 1) * 32].hex() for i in range(n)]
    import pyarrow as pa

    t0 = time.perf_counter()
    index = SkipIndex.from_arrow(pa.chunked_array([pa.array(hexes)]))
    build = time.perf_counter() - t0
    # what read tasks send: the hashes' first 16 bytes, half of them known
    probe = SkipIndex.keys_from_arrow(pa.array(
        [raw[i * 32:i * 32 + 16] for i in range(n // 2)] + [rng.bytes(16) for _ in range(n // 2)],
        pa.binary(16)))
    t0 = time.perf_counter()
    found = index.contains_keys(probe)
    look = time.perf_counter() - t0
    assert int(found.sum()) == n // 2
    return {"bytes_per_image": index.nbytes / n, "lookups_per_s": len(probe) / look,
            "build_s": build}


def side_by_side(data: Path, tables: Path, n: int) -> dict[str, dict]:
    """(a) the tutorial's pipeline and (b) enrich on the same photos, one after the other."""
    res: dict[str, dict] = {}
    for name, cmd in (("tutorial", [PY, str(ROOT / "benchmarks" / "tutorial_baseline.py"), str(data), str(n)]),
                      ("enrich", enrich_cmd(data, tables / "main", n))):
        print(f"({name[0]}) {name} ...", flush=True)
        m = measure(cmd)
        assert m.returncode == 0, m.stderr[-3000:]
        res[name] = {"rows_per_s": round(n / m.wall_s, 1), "cpu_s_per_image": round(m.cpu_s / n, 4),
                     "peak_mem_mb": round(m.peak_mem_mb), "wall_s": round(m.wall_s, 1),
                     "mb_by_process_at_peak": m.at_peak}
    return res


def pair(work: Path, n: int, out: Path) -> None:
    """Only the tutorial and enrich, side by side: rows/s and peak memory, and their ratios."""
    data = make_photo_set(work / f"photos-{n}", n)
    tables = work / "pair-tables"
    shutil.rmtree(tables, ignore_errors=True)
    tables.mkdir(parents=True)
    res = side_by_side(data, tables, n)
    t, e = res["tutorial"], res["enrich"]
    res["ratios"] = {"rows_per_s_enrich_over_tutorial": round(e["rows_per_s"] / t["rows_per_s"], 2),
                     "peak_mem_enrich_over_tutorial": round(e["peak_mem_mb"] / t["peak_mem_mb"], 2)}
    out.write_text(json.dumps({"n": n, **res}, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--large", type=int, default=20_000)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "enrich-bench"))
    ap.add_argument("--pair", metavar="OUT.json",
                    help="only (a) the tutorial and (b) enrich at --n rows, side by side; their "
                         "figures and ratios to OUT.json (~4 min; results.json is left alone)")
    args = ap.parse_args()
    if args.pair:
        pair(Path(args.work), args.n, Path(args.pair))
        return
    work = Path(args.work)
    cpus = 2
    res: dict[str, dict] = {}
    print(f"building data in {work} ...", flush=True)
    data_n = make_photo_set(work / f"photos-{args.n}", args.n)
    data_small = make_photo_set(work / f"photos-{args.small}", args.small)
    data_large = make_photo_set(work / f"photos-{args.large}", args.large)
    tables = work / "tables"
    shutil.rmtree(tables, ignore_errors=True)
    tables.mkdir()

    print("(c) bare preprocessing ...", flush=True)
    rate, wall = bare_rate(data_n, cpus)
    res["bare"] = {"rows_per_s": rate, "wall_s": wall}

    res.update(side_by_side(data_n, tables, args.n))

    print("rerun of the completed --until ...", flush=True)
    m = measure(enrich_cmd(data_n, tables / "main", args.n))
    res["rerun"] = {"wall_s": m.wall_s, "says": m.stderr.strip().splitlines()[-1],
                    "started_ray": "ray" in m.stderr.lower() and "nothing to do" not in m.stderr}

    for label, data, n in (("small", data_small, args.small), ("large", data_large, args.large)):
        print(f"enrich at {n} rows ...", flush=True)
        m = measure(enrich_cmd(data, tables / label, n))
        assert m.returncode == 0, m.stderr[-3000:]
        res[label] = {"n": n, "rows_per_s": n / m.wall_s, "peak_mem_mb": m.peak_mem_mb}

    print("engine starts over a many-commit run ...", flush=True)
    m = measure(enrich_cmd(data_small, tables / "commits", args.small,
                           ["--commit-every", "50", "--concurrency", "2"]))
    journal = next((tables / "commits-ck").rglob("runs/*.json"))
    j = json.loads(journal.read_text())
    res["engine_starts"] = {"replicas": 2, "starts": j["engine_starts"], "commits": j["commits"]}

    print("skip index ...", flush=True)
    res["skip_index"] = skip_index_figures()

    t, e, b = res["tutorial"], res["enrich"], res["bare"]
    res["ratios"] = {
        "rows_per_s_enrich_over_tutorial": e["rows_per_s"] / t["rows_per_s"],
        "peak_mem_enrich_over_tutorial": e["peak_mem_mb"] / t["peak_mem_mb"],
        "cpu_per_image_enrich_over_tutorial": e["cpu_s_per_image"] / t["cpu_s_per_image"],
        "enrich_over_bare_preprocessing": e["rows_per_s"] / b["rows_per_s"],
        "peak_mem_large_over_small": res["large"]["peak_mem_mb"] / res["small"]["peak_mem_mb"],
    }
    out = ROOT / "benchmarks" / "results.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print()
    print(f"{'':<28}{'rows/s':>10}{'CPU-s/image':>13}{'peak mem MB':>13}")
    for k in ("tutorial", "enrich"):
        r = res[k]
        print(f"{k + f' ({args.n} rows)':<28}{r['rows_per_s']:>10.1f}{r['cpu_s_per_image']:>13.4f}"
              f"{r['peak_mem_mb']:>13.0f}")
    print(f"{'bare preprocessing':<28}{b['rows_per_s']:>10.1f}")
    for k in ("small", "large"):
        print(f"{'enrich (' + str(res[k]['n']) + ' rows)':<28}{res[k]['rows_per_s']:>10.1f}"
              f"{'':>13}{res[k]['peak_mem_mb']:>13.0f}")
    r = res["ratios"]
    print()
    print(f"enrich / tutorial rows/s           {r['rows_per_s_enrich_over_tutorial']:.2f}x  (target >= 3)")
    print(f"enrich / tutorial peak memory      {r['peak_mem_enrich_over_tutorial']:.2f}x  (target <= 0.5)")
    print(f"enrich / tutorial CPU-s per image  {r['cpu_per_image_enrich_over_tutorial']:.2f}x")
    print(f"enrich / bare preprocessing        {r['enrich_over_bare_preprocessing']:.2f}   (target >= 0.70)")
    print(f"peak memory {args.large} / {args.small} rows  {r['peak_mem_large_over_small']:.2f}x  (target <= 1.25)")
    print(f"rerun of completed --until         {res['rerun']['wall_s']:.2f} s  (target < 3 s): "
          f"{res['rerun']['says']}")
    s = res["skip_index"]
    print(f"skip index                         {s['bytes_per_image']:.1f} bytes/image (<= 40), "
          f"{s['lookups_per_s'] / 1e6:.2f}M lookups/s (>= 1M)")
    es = res["engine_starts"]
    print(f"engine starts                      {es['starts']} for {es['replicas']} replicas over "
          f"{es['commits']} commits")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
