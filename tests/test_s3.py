"""The table on S3: a real S3-compatible server (moto) on loopback, including kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3  # test requirements ([test] extra): a missing one is an error, never 7 quiet skips
import moto.server as moto_server
import pytest

from tests.conftest import _free_port, cli
from tests.helpers import said


def _wait_for_lease_to_expire(s3: Any, bucket: str, table: str) -> None:
    """Wait until the lease a dead run left beside ``table`` has expired by its own record (the
    holder's ``expires``, written at its last renewal), not for a guessed number of seconds."""
    from enrich.lease import LEASE_KEY, Holder

    key = f"{table}/{LEASE_KEY}"
    holder = Holder.from_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert holder.expires > time.time() - 120, holder  # a lease of the run just stopped
    time.sleep(max(0.0, holder.expires - time.time() + 0.5))


def _client(endpoint: str) -> Any:
    """A client of the loopback server, with the dummy credentials it takes."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test-key-id", aws_secret_access_key="test-secret")


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
        # no AWS_S3_ALLOW_UNSAFE_RENAME: delta-rs commits with conditional writes (If-None-Match),
        # which moto's server honours, so concurrent writers stay safe
    }
    _client(env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="captions-bucket")
    yield env
    server.stop()


def _s3_outcome(uri: str, env: dict[str, str]) -> dict:
    from deltalake import DeltaTable

    opts = {k: v for k, v in env.items() if k.startswith("AWS_")}
    rows = DeltaTable(uri, storage_options=opts).to_pyarrow_dataset().to_table().to_pylist()
    out = {}
    for r in rows:
        assert r["source_index"] not in out
        out[r["source_index"]] = (r["status"], r["image_hash"], r["caption"])
    return out


def test_s3_table_run_kill_resume(s3_env: dict[str, str], shards: Path, tmp_path: Path,
                                  ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    common = ["--source", str(shards), "--engine", "dry-run", "--ray-address", ray_address,
              "--checkpoint-dir", str(tmp_path / "ck"), "--quiet"]
    clean = subprocess.run([sys.executable, "-m", "enrich", "--until", "120", "--table",
                            "s3://captions-bucket/clean", *common],
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    args = ["--until", "120", "--table", "s3://captions-bucket/killed", "--commit-every", "10",
            "--dry-run-ms-per-image", "25", "--lock-ttl", "30", *common]
    s3 = _client(s3_env["AWS_ENDPOINT_URL"])

    def commits() -> int:
        listed = s3.list_objects_v2(Bucket="captions-bucket", Prefix="killed/_delta_log/")
        return sum(o["Key"].endswith(".json") for o in listed.get("Contents", []))

    proc = subprocess.Popen([sys.executable, "-m", "enrich", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while commits() < 3:  # the table's creation and two commits of rows
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no commit in 180 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -9
    partial = _s3_outcome("s3://captions-bucket/killed", s3_env)
    assert 0 < len(partial) < 120 and sorted(partial) == list(range(len(partial)))
    # The killed run's lease is still live: a rerun at once is refused, naming it...
    early = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                           text=True, timeout=120)
    assert early.returncode == 3 and "expires in" in early.stderr, early.stderr
    # ...and once its time to live (30 s) has passed without renewal, the rerun takes it over.
    _wait_for_lease_to_expire(s3, "captions-bucket", "killed")
    resumed = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    again = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                           text=True, timeout=300)
    assert "nothing to do" in again.stderr
    a = _s3_outcome("s3://captions-bucket/clean", s3_env)
    b = _s3_outcome("s3://captions-bucket/killed", s3_env)
    assert len(a) == 120 and a == b
    assert all(b[i] == a[i] for i in partial)  # what the killed run committed stands as it was
    compacted = subprocess.run([sys.executable, "-m", "enrich", "compact", "--table",
                                "s3://captions-bucket/killed"], capture_output=True, text=True, timeout=300)
    assert compacted.returncode == 0, compacted.stderr
    assert _s3_outcome("s3://captions-bucket/killed", s3_env) == a
    assert "test-secret" not in resumed.stderr + clean.stderr


def test_unsafe_rename_is_warned_about_once(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from enrich.settings import _warn_unsafe_rename, storage_options_from_env

    _warn_unsafe_rename.cache_clear()
    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    with caplog.at_level("WARNING", logger="enrich"):
        storage_options_from_env()
        storage_options_from_env()
    warned = [r for r in caplog.records if "AWS_S3_ALLOW_UNSAFE_RENAME" in r.getMessage()]
    assert len(warned) == 1 and "turns off" in warned[0].getMessage()
    monkeypatch.delenv("AWS_S3_ALLOW_UNSAFE_RENAME")
    _warn_unsafe_rename.cache_clear()
    caplog.clear()
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in storage_options_from_env()
    assert not caplog.records


# -- the run lease on an object store ------------------------------------------------------------
def _lease_env(monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]) -> None:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)


def test_a_live_lease_refuses_a_second_run_and_compact_before_ray(
        s3_env: dict[str, str], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        ray_address: str) -> None:
    from enrich.lease import ObjectStoreLease

    _lease_env(monkeypatch, s3_env)
    uri = "s3://captions-bucket/leased"
    first = cli("--until", "20", "--source", str(shards), "--engine", "dry-run", "--table", uri,
                "--checkpoint-dir", str(tmp_path / "ck"), "--ray-address", ray_address, "--quiet",
                timeout=300)
    assert first.returncode == 0, first.stderr
    with ObjectStoreLease(uri, run_id="the-first-run").hold():
        second = cli("--until", "40", "--source", str(shards), "--engine", "dry-run", "--table", uri,
                     "--checkpoint-dir", str(tmp_path / "ck"), "--ray-address", "127.0.0.1:1", timeout=120)
        compact = cli("compact", "--table", uri, timeout=120)
    for res in (second, compact):
        assert res.returncode == 3, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert "in use by another enrich process" in line and "run the-first-run" in line
        assert "expires in" in line and "pid" in line
    assert len(_s3_outcome(uri, s3_env)) == 20  # nothing written by the refused ones
    assert cli("compact", "--table", uri, timeout=120).returncode == 0  # released: free again


def test_an_expired_lease_is_taken_over_by_one_waiter_only(
        s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import obstore

    import enrich
    from enrich.lease import LEASE_KEY, Holder, ObjectStoreLease

    _lease_env(monkeypatch, s3_env)
    uri = "s3://captions-bucket/expired"
    dead = Holder("gone-host", 4242, "killed-run", time.time() - 300, time.time() - 5)
    obstore.put(ObjectStoreLease(uri).store, f"{LEASE_KEY}", dead.to_bytes())
    waiters = [ObjectStoreLease(uri, run_id=f"waiter-{i}") for i in range(2)]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def take(lease: ObjectStoreLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except enrich.RunLockedError as exc:
            outcomes.append(f"refused: {exc}")

    threads = [threading.Thread(target=take, args=(w,)) for w in waiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.split(":")[0] for o in outcomes) == ["refused", "won"], outcomes
    assert "run waiter-" in next(o for o in outcomes if o.startswith("refused"))
    winners = [w for w in waiters if w._etag]
    assert len(winners) == 1 and winners[0].renew()  # the winner's renewals go on


def test_a_run_that_lost_its_lease_commits_nothing_more(
        s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import obstore

    import enrich
    from enrich.lease import LEASE_KEY, Holder, ObjectStoreLease

    _lease_env(monkeypatch, s3_env)
    uri = "s3://captions-bucket/stalled"
    holder = ObjectStoreLease(uri, run_id="stalled-run")
    holder.acquire()
    holder.check()  # holds it: commits allowed
    # the holder stalled past its ttl and another run took the lease over
    etag = obstore.get(holder.store, LEASE_KEY).meta["e_tag"]
    newcomer = Holder("other-host", 1, "newcomer", time.time(), time.time() + 120)
    obstore.put(holder.store, LEASE_KEY, newcomer.to_bytes(), mode={"e_tag": etag})
    assert holder.renew() is False
    with pytest.raises(enrich.RunLockedError, match="taken over.*run newcomer"):
        holder.check()
    holder.release()  # not ours any more: left in place
    assert Holder.from_bytes(bytes(obstore.get(holder.store, LEASE_KEY).bytes())) == newcomer


def test_the_store_stopping_mid_run_is_one_line_and_the_rerun_is_exact(
        shards: Path, tmp_path: Path, ray_address: str) -> None:
    """The S3 server goes away mid-run: the run ends with exit 4 (its commits keep failing) in
    one error line, the rows committed before stay; the server comes back with its data, and
    once the dead run's lease has expired the rerun completes the table exactly."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}
    s3 = _client(env["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="outage-bucket")
    args = ["--until", "120", "--source", str(shards), "--table", "s3://outage-bucket/t",
            "--engine", "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet",
            "--commit-every", "10", "--dry-run-ms-per-image", "100", "--lock-ttl", "10",
            "--ray-address", ray_address]

    def commits() -> int:
        listed = s3.list_objects_v2(Bucket="outage-bucket", Prefix="t/_delta_log/")
        return sum(o["Key"].endswith(".json") for o in listed.get("Contents", []))

    proc = subprocess.Popen([sys.executable, "-m", "enrich", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + 180
    try:
        while commits() < 3:  # the table's creation and two commits of rows
            assert proc.poll() is None, f"the run ended first: {proc.stderr.read()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run made no commit in 180 s"
            time.sleep(0.05)
    finally:
        server.stop()
    code = proc.wait(timeout=300)
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert code == 4, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("enrich: error: ") and "Traceback" not in err, err[-3000:]
    # enrich's own lines: a warning per kind of failure (commit, lease renewal, lease release),
    # the error; each cut short. (delta-rs's Rust runtime may add a panic note of its own when
    # the process exits mid-request: not enrich's to word.)
    ours = [ln for ln in lines if ln.startswith("enrich: ")]
    assert len(ours) <= 4 and all(len(ln) < 600 for ln in ours), err

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()  # the same server process: its buckets are still there
    try:
        partial = _s3_outcome("s3://outage-bucket/t", env)
        assert 0 < len(partial) < 120 and sorted(partial) == list(range(len(partial)))
        # the dead run could not release its lease: it expires --lock-ttl after its last renewal
        _wait_for_lease_to_expire(s3, "outage-bucket", "t")
        res = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=300)
        assert res.returncode == 0, said(res.stderr)
        after = _s3_outcome("s3://outage-bucket/t", env)
    finally:
        server.stop()
    clean = cli("--until", "120", "--source", str(shards), "--table", str(tmp_path / "clean"),
                "--engine", "dry-run", "--checkpoint-dir", str(tmp_path / "ck2"), "--quiet",
                "--ray-address", ray_address)
    assert clean.returncode == 0, clean.stderr
    from tests.helpers import outcome

    assert {i: after[i] for i in partial} == partial
    assert {i: v[:2] for i, v in after.items()} == {i: v[:2] for i, v in outcome(str(tmp_path / "clean")).items()}


def test_s3_source_reads_the_same_rows_as_the_shards_on_disk(s3_env: dict[str, str], shards: Path,
                                                              tmp_path: Path, ray_address: str) -> None:
    """`--source s3://…` (fsspec's s3fs against the loopback server) ends in the very rows the
    same tar files give read from disk; an S3 source that stops answering is exit 5, one line."""
    from tests.helpers import outcome, read_table

    s3 = _client(s3_env["AWS_ENDPOINT_URL"])
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert len(names) == 4
    for name in names:
        s3.upload_file(str(shards / name), "captions-bucket", f"src/{name}")
    common = ["--until", "120", "--engine", "dry-run", "--quiet", "--ray-address", ray_address]
    disk = cli("--source", str(shards), "--table", str(tmp_path / "disk"),
               "--checkpoint-dir", str(tmp_path / "ck-disk"), *common)
    assert disk.returncode == 0, said(disk.stderr)
    res = cli("--source", "s3://captions-bucket/src", "--table", str(tmp_path / "s3"),
              "--checkpoint-dir", str(tmp_path / "ck-s3"), *common, env=s3_env)
    assert res.returncode == 0, said(res.stderr)
    from_disk, from_s3 = outcome(str(tmp_path / "disk")), outcome(str(tmp_path / "s3"))
    assert len(from_disk) == 120 and from_s3 == from_disk
    shard_names = set(read_table(str(tmp_path / "s3")).column("source_shard").to_pylist())
    assert shard_names == set(names)

    # the same source on a server that no longer answers: retried, then one line and exit 5
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    down = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    _client(down["AWS_ENDPOINT_URL"]).create_bucket(Bucket="gone-bucket")
    server.stop()
    res = cli("--source", "s3://gone-bucket/src", "--table", str(tmp_path / "down"),
              "--checkpoint-dir", str(tmp_path / "ck-down"), *common, env=down, timeout=600)
    assert res.returncode == 5, said(res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("enrich: error:") and "Traceback" not in res.stderr, said(res.stderr)
    assert not (tmp_path / "down").exists()
