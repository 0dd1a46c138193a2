"""Builds the tables in tests/legacy/<release>/ with an *earlier release* of enrich, so the tests
can prove that today's code resumes them exactly (same numbering, no row twice).

    git worktree add /tmp/rel a01d7b2      # the release before issue 11 (sources and scale)
    python tests/legacy/make_tables.py /tmp/rel tests/legacy/a01d7b2

Three tables, each stopped mid-shard at --until 45 with the dry-run engine:
  sample/      --source sample                  (local webdataset tar shards)
  hub-id/      --source org/name                (the hub, read from tests/fake_hub.py)
  hub-url/     --source hf://datasets/org/name  (the same dataset, the other spelling; that release
                                                 keyed it as a different stream)
The hub serves the shards of tests/conftest.py's ``shards`` fixture (same DatasetSpec).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from enrich.sample import DatasetSpec, make_webdataset  # noqa: E402
from tests.fake_hub import serve  # noqa: E402

UNTIL = 45
HUB_SPEC = DatasetSpec(shards=4, per_shard=30, seed=7, min_side=200, max_side=700)


def run_release(release: Path, source: str, table: Path, env: dict[str, str]) -> None:
    full = {**os.environ, "PYTHONPATH": str(release), **env}
    with tempfile.TemporaryDirectory() as ck:
        cmd = [sys.executable, "-m", "enrich", "--until", str(UNTIL), "--source", source,
               "--table", str(table), "--engine", "dry-run", "--checkpoint-dir", ck,
               "--commit-every", "10", "--quiet"]
        res = subprocess.run(cmd, env=full, capture_output=True, text=True, cwd=ck)
        if res.returncode != 0:
            raise SystemExit(f"{source}: exit {res.returncode}\n{res.stderr[-3000:]}")


def main() -> None:
    release, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_release(release, "sample", out / "sample", {})
    with tempfile.TemporaryDirectory() as shards:
        make_webdataset(shards, HUB_SPEC)
        with serve(Path(shards), "org/name") as (url, _hub):
            env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
            run_release(release, "org/name", out / "hub-id", env)
            run_release(release, "hf://datasets/org/name", out / "hub-url", env)
    commit = subprocess.run(["git", "-C", str(release), "log", "-1", "--format=%H %cI"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (out / "RELEASE").write_text(f"written by enrich at {commit}; --until {UNTIL}, dry-run, "
                                 "--commit-every 10\n")


if __name__ == "__main__":
    main()
