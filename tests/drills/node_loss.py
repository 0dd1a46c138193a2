"""Node-loss drill: a two-node Ray cluster on this machine, the worker node removed mid-run.

    python tests/drills/node_loss.py SHARD_DIR WORKDIR

Prints one JSON line of figures. The head node (where the driver and the feeder live) has 2
CPUs, the worker node 2 more; Ray Data spreads prepare tasks and actors over both, so work in
flight is lost with the worker. The run either finishes on the head alone or fails; if it
failed it is rerun to completion; the table is compared with a clean run's.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from enrich.config import RunConfig
from enrich.journal import Outcome
from enrich.pipeline import run
from enrich.progress import Reporter


def commits(table: Path) -> int:
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


def main(shards: str, work: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.test_reliability import compare

    workdir = Path(work)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)

    clean = workdir / "clean"
    run(RunConfig(until=120, source=shards, table=str(clean), engine="dry-run",
                  checkpoint_dir=str(workdir / "ck0"), commit_every=1000),
        reporter=Reporter(total=120, quiet=True))

    table = workdir / "t"
    cfg = RunConfig(until=120, source=shards, table=str(table), engine="dry-run",
                    checkpoint_dir=str(workdir / "ck"), commit_every=10, dry_run_ms_per_image=40)
    removed = {"at_commit": None}

    def kill_worker() -> None:
        deadline = time.monotonic() + 120
        while commits(table) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        removed["at_commit"] = commits(table)
        cluster.remove_node(worker, allow_graceful=False)

    killer = threading.Thread(target=kill_worker)
    killer.start()
    outcome = "completed despite the lost node"
    first = None
    try:
        first = run(cfg, reporter=Reporter(total=120, quiet=True))
    except Exception as exc:  # noqa: BLE001 - the run may fail when the node goes: then it must resume
        outcome = f"failed ({type(exc).__name__}), then resumed"
    # a run that returned (rather than raised) has completed: no other outcome comes back
    assert first is None or first.outcome == Outcome.COMPLETED, first
    killer.join()
    if outcome != "completed despite the lost node" or commits(table) == 0:
        run(cfg, reporter=Reporter(total=120, quiet=True))
    fig = compare(str(clean), str(table))
    print(json.dumps({"injected": 1 if removed["at_commit"] is not None else 0,
                      "removed_after_commits": removed["at_commit"], "outcome": outcome,
                      "survived": fig["rows_lost"] == 0 and fig["rows_duplicated"] == 0, **fig}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
