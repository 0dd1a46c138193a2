"""SIGKILL the CLI at several points of a run, rerun, and compare with an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from enrich.config import RunConfig
from enrich.pipeline import run
from enrich.progress import Reporter
from tests.helpers import outcome


def commits_in(table: Path) -> int:
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


def stop_after(args: list[str], table: Path, commits: int, delay: float,
               sig: int = signal.SIGKILL) -> tuple[int, str]:
    """Start ``python -m enrich ARGS``; once the table has ``commits`` more commits, wait
    ``delay`` seconds and send it ``sig``. Returns its exit code and its stderr (a file, not a
    pipe: a chatty run never blocks on it)."""
    import tempfile

    start = commits_in(table)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "enrich", *args],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and commits_in(table) < start + commits:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("run made no progress in 120 s")
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=120)
        err.seek(0)
        return proc.returncode, err.read()


def kill_after(args: list[str], table: Path, commits: int, delay: float) -> int:
    """:func:`stop_after` with SIGKILL; the exit code (-9 when killed)."""
    return stop_after(args, table, commits, delay)[0]


def run_killed_sequence(shards: Path, workdir: Path, ray_address: str,
                        kill_points: list[tuple[int, float]]) -> tuple[dict, dict, list[int]]:
    """Kill a run at each point in turn (each rerun resumes the table), then finish it.
    Returns (clean outcome, resumed outcome, exit codes of the killed runs)."""
    until = 120
    reference = workdir / "clean"
    run(RunConfig(until=until, source=str(shards), table=str(reference), engine="dry-run",
                  checkpoint_dir=str(workdir / "ck-clean"), commit_every=1000),
        reporter=Reporter(total=until, quiet=True))
    table = workdir / "killed"
    args = ["--until", str(until), "--source", str(shards), "--table", str(table),
            "--engine", "dry-run", "--dry-run-ms-per-image", "25", "--commit-every", "10",
            "--checkpoint-dir", str(workdir / "ck"), "--ray-address", ray_address, "--quiet"]
    codes, partial = [], []
    for commits, delay in kill_points:
        codes.append(kill_after(args, table, commits, delay))
        partial.append(len(outcome(str(table))) if (table / "_delta_log").exists() else 0)
    print("rows committed after each kill:", partial, "exit codes:", codes)
    final = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    return outcome(str(reference)), outcome(str(table)), partial


def test_sigkill_at_several_points_loses_and_duplicates_nothing(
        shards: Path, tmp_path: Path, ray_address: str) -> None:
    clean, resumed, partial = run_killed_sequence(shards, tmp_path, ray_address, [
        (0, 1.0),  # while starting / reading, before any commit
        (1, 0.05),  # just after a commit, the engine busy
        (2, 0.0),  # right at a commit
    ])
    assert any(0 < n < 120 for n in partial), partial  # runs really died mid-way
    assert partial == sorted(partial)  # each rerun kept what the last one committed
    assert resumed == clean  # same indices; per row the same status, hash and caption
    assert sorted(resumed) == list(range(120))
