"""The driver's own CPU per row, and end-to-end rows/s as the cluster gets more cores.

    python benchmarks/driver.py [--n 6000] [--base 1000] [--cpus 2] [--cpus 4 ...] [--out F]

For each ``--cpus C`` it starts a local Ray cluster of C CPUs *in this process*, then runs
``python -m enrich --ray-address ...`` (dry-run engine at 0 ms, web-size photos in tar shards,
nothing skipped) twice on fresh tables: to ``--base`` rows and to ``--n`` rows. The driver is
then a process of its own (Ray's GCS, raylet and workers belong to this process), and
``os.wait4`` gives exactly its CPU seconds. Its start-up (imports, connecting, listing) is the
same in both runs, so

    driver CPU per row = (cpu(n) - cpu(base)) / (n - base)
    steady rows/s      = (n - base) / (wall(n) - wall(base))

A third run, ``--base`` rows with the engine sleeping SLOW_MS per image, gives what the driver
spends per second of merely waiting (Ray Data's loops poll every 10 ms): on a slow pipeline that
is part of the per-row figure, so the net per-row cost is reported beside it.

Ratios only within one invocation (same machine, same data, same session).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_photo_set

ROOT = Path(__file__).resolve().parents[1]
SLOW_MS = 10.0  # the "slow" run: the dry-run engine spends this long per image


def run_driver(cmd: list[str], cwd: str) -> tuple[float, float, int, str]:
    """(CPU seconds of the driver process alone, wall seconds, exit code, stderr tail)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode, tail


def measure_cpus(cpus: int, data: Path, n: int, base: int, work: Path,
                 extra: list[str]) -> dict[str, float]:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, _temp_dir=str(work / f"ray-{cpus}"))
    try:
        address = ray.get_runtime_context().gcs_address
        out: dict[str, float] = {"cpus": cpus}
        for name, rows, slow in (("base", base, []), ("n", n, []),
                                 ("slow", base, ["--dry-run-ms-per-image", str(SLOW_MS)])):
            table = work / f"t-{cpus}-{name}"
            shutil.rmtree(table, ignore_errors=True)
            cmd = [sys.executable, "-m", "enrich", "--until", str(rows), "--source", str(data),
                   "--engine", "dry-run", "--table", str(table), "--checkpoint-dir",
                   str(work / "ck"), "--quiet", "--ray-address", address, *extra, *slow]
            cpu, wall, rc, tail = run_driver(cmd, cwd=str(work))
            if rc != 0:
                raise SystemExit(f"enrich exited {rc} at {rows} rows:\n{tail}")
            out[f"driver_cpu_s_{name}"] = cpu
            out[f"wall_s_{name}"] = wall
        d_cpu = out["driver_cpu_s_n"] - out["driver_cpu_s_base"]
        d_wall = out["wall_s_n"] - out["wall_s_base"]
        out["driver_cpu_ms_per_row"] = 1000 * d_cpu / (n - base)
        # The same rows, only slower: what the driver burns per second of waiting (Ray Data's
        # consumer and scheduler loops poll every 10 ms), apart from what it does per row.
        waiting = (out["driver_cpu_s_slow"] - out["driver_cpu_s_base"]) / max(
            1e-9, out["wall_s_slow"] - out["wall_s_base"])
        out["driver_cpu_per_wall_s_waiting"] = waiting
        out["driver_cpu_ms_per_row_net"] = 1000 * (d_cpu - waiting * d_wall) / (n - base)
        out["rows_per_s_steady"] = (n - base) / d_wall
        out["rows_per_s_whole_run"] = n / out["wall_s_n"]
        return out
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--base", type=int, default=1000)
    ap.add_argument("--cpus", type=int, action="append", help="cluster CPUs (repeatable; default 2)")
    ap.add_argument("--per-shard", type=int, default=500, help="photos per tar shard")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "enrich-driver-bench"))
    ap.add_argument("--label", default="", help="what is measured (e.g. the commit)")
    ap.add_argument("--thumbnails", action="store_true",
                    help="32-64 px images instead of web photos: decoding and resizing become "
                         "cheap, so the run is bound by the driver and its per-row cost shows "
                         "apart from the time it spends waiting on a slow pipeline")
    ap.add_argument("--extra", default="", help="more enrich flags, e.g. '--batch-size 256'")
    ap.add_argument("--out", help="append the result as one JSON line to this file")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sides = (32, 64) if args.thumbnails else (300, 2000)
    data = make_photo_set(work / f"photos-{args.n}-{args.per_shard}-{sides[1]}", args.n,
                          per_shard=args.per_shard, sides=sides)
    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"],
                            capture_output=True, text=True).stdout.strip()
    result = {"label": args.label, "commit": commit, "machine": f"{platform.node()} "
              f"({os.cpu_count()} cores)", "n": args.n, "base": args.base,
              "images": "thumbnails 32-64 px" if args.thumbnails else "web photos 300-2000 px",
              "extra": args.extra, "runs": []}
    for cpus in args.cpus or [2]:
        r = measure_cpus(cpus, data, args.n, args.base, work, args.extra.split())
        print(f"cpus={cpus}: driver {r['driver_cpu_ms_per_row']:.3f} ms CPU/row "
              f"({r['driver_cpu_ms_per_row_net']:.3f} net of {r['driver_cpu_per_wall_s_waiting']:.3f} "
              "CPU-s per second spent waiting), "
              f"{r['rows_per_s_steady']:.0f} rows/s steady, {r['rows_per_s_whole_run']:.0f} rows/s "
              f"whole run ({args.n} rows)", flush=True)
        result["runs"].append(r)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
