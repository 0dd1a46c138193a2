"""Fault drills and hostile inputs. Each drill injects a real fault, lets the run fail or
survive, reruns, and compares the table with an uninterrupted run's.

With ENRICH_DRILL_LOG set (benchmarks/reliability.py does), each drill appends its figures as a
JSON line there; RELIABILITY.md is made from them. The slowest drills are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enrich.config import RunConfig
from enrich.errors import CommitError
from enrich.pipeline import run
from enrich.progress import Reporter
from enrich.sample import DatasetSpec, make_webdataset
from tests import hostile
from tests.conftest import cli
from tests.helpers import error_text, said
from tests.test_kill_resume import commits_in, kill_after

ROOT = Path(__file__).resolve().parents[1]


def record(**figures: Any) -> None:
    path = os.environ.get("ENRICH_DRILL_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(figures, default=str) + "\n")


def table_rows(uri: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    return DeltaTable(uri).to_pyarrow_dataset().to_table().to_pylist()


def compare(clean_uri: str, uri: str) -> dict[str, int]:
    """Rows lost, duplicated and different between a faulted table and a clean one."""
    clean = {r["source_index"]: (r["status"], r["image_hash"], r["caption"])
             for r in table_rows(clean_uri)}
    rows = table_rows(uri)
    seen: dict[int, tuple] = {}
    duplicated = 0
    for r in rows:
        if r["source_index"] in seen:
            duplicated += 1
        seen[r["source_index"]] = (r["status"], r["image_hash"], r["caption"])
    lost = len(set(clean) - set(seen))
    differ = sum(1 for k in clean if k in seen and seen[k] != clean[k])
    return {"rows_expected": len(clean), "rows_lost": lost, "rows_duplicated": duplicated,
            "rows_different": differ}


def clean_run(shards: Path, table: Path, until: int, **kw: Any) -> str:
    run(RunConfig(until=until, source=str(shards), table=str(table), engine="dry-run",
                  checkpoint_dir=str(table) + "-ck", commit_every=1000, **kw),
        reporter=Reporter(total=until, quiet=True))
    return str(table)


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big")
    make_webdataset(out, DatasetSpec(shards=8, per_shard=50, seed=11, min_side=200, max_side=500))
    return out


# -- 1. driver killed --------------------------------------------------------------------------
KILL_POINTS_FAST = [(0, 1.0), (1, 0.05), (2, 0.0)]
KILL_POINTS_ALL = [(0, 0.3), (0, 1.5), (1, 0.0), (1, 0.1), (1, 0.3), (2, 0.0), (2, 0.05),
                   (3, 0.2), (2, 0.0), (1, 0.15), (2, 0.4), (1, 0.0)]


def _kill_drill(shards: Path, tmp: Path, ray_address: str, points: list[tuple[int, float]],
                until: int) -> dict[str, Any]:
    clean = clean_run(shards, tmp / "clean", until)
    table = tmp / "killed"
    args = ["--until", str(until), "--source", str(shards), "--table", str(table),
            "--engine", "dry-run", "--dry-run-ms-per-image", "20", "--commit-every", "10",
            "--checkpoint-dir", str(tmp / "ck"), "--ray-address", ray_address, "--quiet"]
    killed, phases = 0, []
    for commits, delay in points:
        before = commits_in(table)
        code = kill_after(args, table, commits, delay)
        after = commits_in(table)
        if code == -signal.SIGKILL:
            killed += 1
            phases.append("starting/reading" if after == before else
                          "right after a commit" if delay <= 0.05 else "engine working")
    final = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    return {"killed": killed, "phases": phases, **compare(clean, str(table))}


def test_driver_sigkilled_then_rerun(shards: Path, tmp_path: Path, ray_address: str) -> None:
    fig = _kill_drill(shards, tmp_path, ray_address, KILL_POINTS_FAST, 120)
    assert fig["killed"] >= 2
    assert fig["rows_lost"] == fig["rows_duplicated"] == fig["rows_different"] == 0, fig


@pytest.mark.slow
def test_driver_sigkilled_at_many_points(big_shards: Path, tmp_path: Path, ray_address: str) -> None:
    fig = _kill_drill(big_shards, tmp_path, ray_address, KILL_POINTS_ALL, 400)
    record(drill="driver SIGKILLed (12 points: starting, reading, engine working, committing)",
           injected=fig["killed"], survived=fig["rows_lost"] + fig["rows_duplicated"] == 0,
           **{k: v for k, v in fig.items() if k != "killed"})
    assert fig["killed"] >= 10
    assert fig["rows_lost"] == fig["rows_duplicated"] == fig["rows_different"] == 0, fig


# -- 2. engine replica dies --------------------------------------------------------------------
def test_engine_replica_dies_mid_batch(shards: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from enrich.engines import dryrun

    clean = clean_run(shards, tmp_path / "clean", 120)
    monkeypatch.setattr(dryrun, "DRILL", dryrun.Drill(crash_on="7,50,101"))
    res = run(RunConfig(until=120, source=str(shards), table=str(tmp_path / "t"), engine="dry-run",
                        checkpoint_dir=str(tmp_path / "ck"), commit_every=20, batch_size=16),
              reporter=Reporter(total=120, quiet=True))
    fig = compare(clean, str(tmp_path / "t"))
    crashes = len(list((tmp_path / "ck").rglob("crashed-*")))
    record(drill="engine replica os._exit mid-batch (Ray restarts it, batch retried)",
           injected=crashes, survived=res.outcome == "completed", engine_starts=res.engine_starts,
           **fig)
    assert res.outcome == "completed" and crashes == 3
    assert res.engine_starts == 1 + crashes  # each death restarted the replica once
    assert fig["rows_lost"] == fig["rows_duplicated"] == fig["rows_different"] == 0, fig


# -- 3. node lost ------------------------------------------------------------------------------
@pytest.mark.slow
def test_node_lost_mid_run(shards: Path, tmp_path: Path) -> None:
    """Runs tests/drills/node_loss.py in a fresh process: a two-node Ray cluster on this machine
    (ray.cluster_utils.Cluster), the worker node killed while the run uses it."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "drills" / "node_loss.py"),
                           str(shards), str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout[-3000:] + said(proc.stderr)
    # Ray prints the removed node's log to stdout after us: take our line
    fig = json.loads(next(line for line in reversed(proc.stdout.splitlines())
                          if line.startswith('{"injected"')))
    record(drill="worker node removed mid-run (2-node Ray cluster on one machine)", **fig)
    assert fig["injected"] == 1 and fig["rows_lost"] == fig["rows_duplicated"] == 0, fig


# -- 4. storage faults -------------------------------------------------------------------------
def test_commit_that_lands_but_reports_failure_is_not_duplicated(
        shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nastiest storage fault: the commit lands, then the call raises (a timeout on the
    response). The retry must see the landed commit and not write the rows again."""
    import deltalake

    clean = clean_run(shards, tmp_path / "clean", 120)
    real = deltalake.write_deltalake
    calls = {"n": 0, "injected": 0}

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real(*args, **kwargs)
        if calls["n"] in (2, 4):
            calls["injected"] += 1
            raise OSError("connection reset after the commit was written (injected)")

    monkeypatch.setattr(deltalake, "write_deltalake", flaky)
    res = run(RunConfig(until=120, source=str(shards), table=str(tmp_path / "t"), engine="dry-run",
                        checkpoint_dir=str(tmp_path / "ck"), commit_every=20),
              reporter=Reporter(total=120, quiet=True))
    fig = compare(clean, str(tmp_path / "t"))
    record(drill="commit lands, then the call raises (retried commit must not land twice)",
           injected=calls["injected"], survived=res.outcome == "completed", **fig)
    assert calls["injected"] == 2 and res.outcome == "completed"
    assert fig["rows_lost"] == fig["rows_duplicated"] == 0, fig


def test_storage_fails_mid_run_then_recovers(shards: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import deltalake

    clean = clean_run(shards, tmp_path / "clean", 120)
    real = deltalake.write_deltalake
    state = {"n": 0}

    def full_disk(*args: Any, **kwargs: Any) -> None:
        state["n"] += 1
        if state["n"] > 2:
            raise OSError(28, "No space left on device (injected)")
        real(*args, **kwargs)

    cfg = RunConfig(until=120, source=str(shards), table=str(tmp_path / "t"), engine="dry-run",
                    checkpoint_dir=str(tmp_path / "ck"), commit_every=20)
    monkeypatch.setattr(deltalake, "write_deltalake", full_disk)
    with pytest.raises(CommitError, match="No space left on device"):
        run(cfg, reporter=Reporter(total=120, quiet=True))
    partial = len(table_rows(str(tmp_path / "t")))
    monkeypatch.setattr(deltalake, "write_deltalake", real)
    res = run(cfg, reporter=Reporter(total=120, quiet=True))
    fig = compare(clean, str(tmp_path / "t"))
    record(drill="storage full mid-run: commits raise ENOSPC until it is fixed",
           injected=1, survived=res.outcome == "completed", rows_before_fault=partial, **fig)
    assert partial == 40 and res.committed_rows == 80
    assert fig["rows_lost"] == fig["rows_duplicated"] == 0, fig


def test_table_made_read_only_mid_run(shards: Path, tmp_path: Path, ray_address: str) -> None:
    """A real fault: the Delta log directory becomes immutable (chattr +i stops even root)."""
    table = tmp_path / "t"
    args = ["--until", "120", "--source", str(shards), "--table", str(table), "--engine", "dry-run",
            "--dry-run-ms-per-image", "20", "--commit-every", "10", "--checkpoint-dir",
            str(tmp_path / "ck"), "--ray-address", ray_address, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "enrich", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while commits_in(table) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    # Preconditions, asserted: a run that died or stalled is a failure here, never a skip.
    assert proc.poll() is None, f"the run ended before the fault: {proc.communicate()[1][-2000:]}"
    assert commits_in(table) >= 2, "the run made no two commits in 120 s"
    locked = subprocess.run(["chattr", "+i", str(table / "_delta_log")], capture_output=True)
    if locked.returncode != 0:
        proc.kill()
    assert locked.returncode == 0, f"chattr +i failed (CI runs as root on ext4): {locked.stderr.decode()}"
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        subprocess.run(["chattr", "-i", str(table / "_delta_log")], capture_output=True)
    assert proc.returncode == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("enrich: error: commit of rows") and "not permitted" in last, err
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    clean = clean_run(shards, tmp_path / "clean", 120)
    fig = compare(clean, str(table))
    record(drill="table's _delta_log made immutable mid-run (chattr +i), then writable again",
           injected=1, survived=True, exit_code_during_fault=proc.returncode, **fig)
    assert fig["rows_lost"] == fig["rows_duplicated"] == 0, fig


# -- 5. two runs at once -----------------------------------------------------------------------
def test_two_runs_at_once_never_duplicate(shards: Path, tmp_path: Path, ray_address: str) -> None:
    table = tmp_path / "t"
    args = ["--until", "120", "--source", str(shards), "--table", str(table), "--engine", "dry-run",
            "--dry-run-ms-per-image", "10", "--checkpoint-dir", str(tmp_path / "ck"),
            "--ray-address", ray_address, "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "enrich", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 3], results
    refused = next(err for c, err in results if c == 3)
    assert "in use by another enrich process" in refused
    clean = clean_run(shards, tmp_path / "clean", 120)
    fig = compare(clean, str(table))
    record(drill="two runs at once on one table and caption config (the second is refused)",
           injected=1, survived=True, **fig)
    assert fig["rows_lost"] == fig["rows_duplicated"] == 0, fig


# -- 6. hostile inputs -------------------------------------------------------------------------
def test_hostile_inputs(tmp_path: Path) -> None:
    member_cases, shard_cases = hostile.build(tmp_path / "shards")
    t0 = time.monotonic()
    res = run(RunConfig(until=10_000, source=str(tmp_path / "shards"), table=str(tmp_path / "t"),
                        engine="dry-run", checkpoint_dir=str(tmp_path / "ck")),
              reporter=Reporter(total=10_000, quiet=True))
    seconds = time.monotonic() - t0
    assert res.outcome == "completed"
    rows = table_rows(str(tmp_path / "t"))
    by_key = {(r["source_shard"], r["source_key"]): r for r in rows if r["source_key"] != "dupkey"}
    outcomes = []
    for case in member_cases:
        row = by_key[("00000.tar", case.key)]
        ok = row["status"] == case.status and case.reason in error_text(row)
        outcomes.append({"input": case.kind, "status": row["status"],
                         "reason": error_text(row), "as_expected": ok})
        assert ok, (case.kind, row["status"], error_text(row))
    dups = [r for r in rows if r["source_key"] == "dupkey"]
    ok = ([r["status"] for r in dups] == ["captioned", "captioned"]
          and dups[0]["image_hash"] != dups[1]["image_hash"])
    outcomes.append({"input": "duplicate keys in a shard",
                     "status": " + ".join(r["status"] for r in dups),
                     "reason": "two rows, nothing overwritten", "as_expected": ok})
    assert ok, dups
    for sc in shard_cases:
        srows = [r for r in rows if r["source_shard"] == sc.shard]
        errors = [r for r in srows if r["source_key"] == ""]
        good = [r for r in srows if r["source_key"] != ""]
        ok = len(good) == sc.good_rows and (
            (not sc.error and not errors) or (len(errors) == 1 and sc.error in error_text(errors[0])
                                              and errors[0]["error"] == "shard error"))
        outcomes.append({"input": sc.kind, "status": f"{len(good)} rows" + (
            " + shard error row" if errors else ""), "reason": error_text(errors[0]) if errors else "",
            "as_expected": ok})
        assert ok, (sc, srows)
    assert all(r["status"] == "captioned" for r in rows if r["source_shard"] == "00004.tar")
    assert sorted(r["source_index"] for r in rows) == list(range(len(rows)))
    record(drill="hostile inputs", kinds=len(outcomes), seconds=round(seconds, 1),
           outcomes=outcomes)
    assert len(outcomes) >= 25


# -- 7. bad invocations ------------------------------------------------------------------------
OFFLINE = {"HF_HUB_OFFLINE": "1"}
# a hub that does not answer (nothing listens on port 9): the hub's own case, exit 5, not 2
DEAD_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": "1"}


@pytest.mark.parametrize("args,env,code,why", [
    (["--until", "-1"], OFFLINE, 2, "negative --until"),
    (["--until", "ten"], OFFLINE, 2, "non-numeric --until"),
    (["--until", "5", "--engine", "gpt"], OFFLINE, 2, "unknown engine"),
    (["--until", "5", "--table", "{plain}"], OFFLINE, 2, "--table that is a non-Delta directory"),
    (["--until", "5", "--table", "{other}"], OFFLINE, 2, "--table with another schema"),
    (["--until", "5", "--source", "{nowhere}"], OFFLINE, 2, "unreadable source"),
    (["--until", "5", "--source", "hf://datasets/no/such-dataset"], OFFLINE, 2,
     "hub source with HF_HUB_OFFLINE=1"),
    (["--until", "5", "--source", "hf://datasets/no/such-dataset"], DEAD_HUB, 5,
     "unreachable hub source"),
])
def test_bad_invocations(args: list[str], env: dict[str, str], code: int, why: str,
                         tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.csv").write_text("x\n1\n")
    write_deltalake(str(tmp_path / "other"), pa.table({"x": [1]}))
    subs = {"{plain}": str(tmp_path / "plain"), "{other}": str(tmp_path / "other"),
            "{nowhere}": str(tmp_path / "nowhere")}
    args = [subs.get(a, a) for a in args]
    base = ["--engine", "dry-run", "--source", "sample", "--table", str(tmp_path / "new")]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    proc = cli(*base, *args, cwd=tmp_path, timeout=120, env={**env, "HF_HUB_ETAG_TIMEOUT": "2"})
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    lines = proc.stderr.strip().splitlines()
    record(drill="bad invocation", input=why, exit_code=proc.returncode,
           message=lines[-1] if lines else "", wrote_nothing=before == after)
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("enrich: error:"), \
        proc.stderr
    assert before == after


# -- 8. secrets --------------------------------------------------------------------------------
def test_secrets_are_written_nowhere(shards: Path, tmp_path: Path, ray_address: str) -> None:
    canaries = {"HF_TOKEN": "hf_CANARYx7Q2token", "AWS_ACCESS_KEY_ID": "AKIACANARY7Q2KEYID",
                "AWS_SECRET_ACCESS_KEY": "canarySecretKey7Q2/zzzz", "AWS_SESSION_TOKEN": "canarySess7Q2"}
    env = dict(canaries)
    args = ["--source", str(shards), "--table", str(tmp_path / "t"), "--engine", "dry-run",
            "--checkpoint-dir", str(tmp_path / "ck"), "--ray-address", ray_address]
    outputs = [cli("--until", "60", *args, env=env, cwd=tmp_path),
               cli("--until", "60", "--plan", *args, env=env, cwd=tmp_path),
               cli("status", "--table", str(tmp_path / "t"), "--checkpoint-dir", str(tmp_path / "ck"),
                   env=env, cwd=tmp_path)]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    text = "".join(o.stdout + o.stderr for o in outputs)
    leaks = [name for name, value in canaries.items() if value in text]
    files = [p for p in (tmp_path / "t").rglob("*") if p.is_file()] + \
            [p for p in (tmp_path / "ck").rglob("*") if p.is_file()]
    for p in files:
        data = p.read_bytes()
        leaks += [f"{name} in {p.name}" for name, value in canaries.items() if value.encode() in data]
    record(drill="secrets (HF_TOKEN, AWS keys set to canaries)", files_checked=len(files),
           outputs_checked=len(outputs), leaks=leaks)
    assert files and leaks == []
