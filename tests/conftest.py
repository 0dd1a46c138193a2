"""Shared fixtures: one real local Ray cluster for the session, small real webdatasets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrich.sample import DatasetSpec, make_webdataset

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# The test cluster listens on loopback only; Ray 2.60's token auth would make every client
# (this process and each CLI subprocess) find the token first. Off for this private cluster.
os.environ["RAY_AUTH_MODE"] = "disabled"


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

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             _node_ip_address="127.0.0.1",
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


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
