"""Shared fixtures: one real local Ray cluster for the session, small real webdatasets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrich.sample import DatasetSpec, make_webdataset

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# The test cluster runs without Ray's token auth, so that every client (this process and each
# CLI subprocess) connects without a token. (Ray 2.60 binds its servers to every interface
# whatever the node address: enrich's own local Ray keeps token auth on, tests/test_local_ray.py.)
os.environ["RAY_AUTH_MODE"] = "disabled"
# Caches the code writes by default under the user's home (the `sample` dataset, the hub and
# `datasets` caches, vLLM's compile cache) go to one temporary folder for the whole session.
_CACHE = tempfile.mkdtemp(prefix="enrich-tests-cache-")
for _name, _sub in (("XDG_CACHE_HOME", "xdg"), ("HF_HOME", "hf"), ("VLLM_CACHE_ROOT", "vllm")):
    os.environ[_name] = os.path.join(_CACHE, _sub)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """CI installs vLLM's CPU build and sets ENRICH_REQUIRE_VLLM=1: there the real-engine tests
    must run, so a missing vllm is an error rather than a quiet skip."""
    if os.environ.get("ENRICH_REQUIRE_VLLM") == "1":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise pytest.UsageError("ENRICH_REQUIRE_VLLM=1 but vllm is not importable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real local Ray cluster started by this test process and shared with the CLI
    subprocesses it runs (connecting costs ~1 s instead of ~5 s for each one's own ray.init).
    Started in-process rather than with `ray start`, so tearing it down cannot touch another
    Ray on the machine (`ray stop` would stop them all)."""
    import ray

    # The cluster's nodes hold the object store's credentials (the S3 server of tests/test_s3.py
    # takes any): enrich sends read tasks the driver's non-secret settings only (the endpoint),
    # never keys, so a real cluster's nodes must have their own. Ray's processes inherit them.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 _node_ip_address="127.0.0.1",
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _one_test_cluster(ray_address: str) -> str:
    """Every test runs with the session's Ray cluster up, whatever ran before it: an in-process
    run() joins it (enrich starts its own Ray only where none is initialised), so no test's
    outcome depends on the order, and no test starts a cluster of its own by accident."""
    return ray_address


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 shards x 30 samples (shard number 00002 missing), with duplicates and corrupt members."""
    out = tmp_path_factory.mktemp("shards")
    make_webdataset(out, DatasetSpec(shards=4, per_shard=30, seed=7, min_side=200, max_side=700))
    return out


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m enrich`` in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "enrich", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
