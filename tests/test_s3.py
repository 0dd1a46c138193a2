"""The table on S3: a real S3-compatible server (moto) on loopback, including kill and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _free_port
from tests.test_kill_resume import kill_after

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
        # moto has no DynamoDB lock here; a single writer per table is what enrich enforces anyway
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="test-key-id",
                 aws_secret_access_key="test-secret").create_bucket(Bucket="captions-bucket")
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
            "--dry-run-ms-per-image", "25", *common]
    code = kill_after(args, Path("/nonexistent"), 0, 4.0)  # the log is remote: kill by time
    resumed = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    again = subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True,
                           text=True, timeout=300)
    assert "nothing to do" in again.stderr
    a = _s3_outcome("s3://captions-bucket/clean", s3_env)
    b = _s3_outcome("s3://captions-bucket/killed", s3_env)
    assert len(a) == 120 and a == b
    assert code in (-9, 0)
    assert "test-secret" not in resumed.stderr + clean.stderr
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "test-secret"
