"""How late an engine batch reaches the driver: Ray Data's `iter_batches` with and without its
local prefetch, in one process, on the dataset shape enrich runs (an actor pool of 2 "replicas"
that take SECONDS per batch, order preserved, blocks consumed whole).

    python benchmarks/output_lag.py [--seconds 2] [--batches 8]

For each setting it prints, per batch, when the replica returned it and when the driver's loop
got it, and the mean lag. With Ray Data 2.60's prefetching (`prefetch_batches` >= 1 and
`batch_size=None`) the iterator takes the *next* block before it yields one, so a batch waits
for the one after it: about one engine batch of lag (PERFORMANCE.md). enrich iterates with
`prefetch_batches=0` (pipeline.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time


def lags(prefetch: int, seconds: float, batches: int) -> list[tuple[int, float, float]]:
    import pyarrow as pa
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # after ray.data's own logging set-up

    class Replica:
        def __call__(self, b: pa.Table) -> pa.Table:
            time.sleep(seconds)  # the engine's work on one batch
            return pa.table({"i": b.column("id"), "done": [time.time()] * b.num_rows})

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.range(batches * 64, override_num_blocks=batches).map_batches(
        Replica, batch_size=64, batch_format="pyarrow", num_cpus=0,
        compute=ray.data.ActorPoolStrategy(size=2, max_tasks_in_flight_per_actor=2))
    t0 = time.time()
    out = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=prefetch):
        done = b.column("done")[0].as_py()
        out.append((b.column("i")[0].as_py(), done - t0, time.time() - done))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    for prefetch in (2, 0):
        rows = lags(prefetch, args.seconds, args.batches)
        print(f"prefetch_batches={prefetch}: mean lag {statistics.mean(r[2] for r in rows):.2f} s, "
              f"first batch {rows[0][2]:.2f} s (engine batches of {args.seconds:.1f} s)")
        for first, done, lag in rows:
            print(f"  rows {first:>4}..: returned {done:5.1f} s, lag {lag:.2f} s")


if __name__ == "__main__":
    main()
