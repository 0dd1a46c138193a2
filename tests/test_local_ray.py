"""The local Ray that enrich starts: a client without its token is refused, and the token file
is readable by the user alone. (Ray 2.60 binds its servers to every interface, so the token is
what keeps other machines out: see enrich/pipeline.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import said

SCRIPT = r"""
import os, subprocess, sys
import ray
from enrich.config import RunConfig
from enrich.ray_setup import init_ray

init_ray(RunConfig(until=1, engine="dry-run", num_cpus=1))
addr = ray.get_runtime_context().gcs_address
outsider = {**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": sys.argv[1]}
p = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={addr!r}); print('CONNECTED')"],
                   env=outsider, capture_output=True, text=True, timeout=120)
print("OUTSIDER", p.returncode, "CONNECTED" in p.stdout, "token" in p.stderr.lower())
insider = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={addr!r}); print('CONNECTED')"],
                         capture_output=True, text=True, timeout=120)
print("INSIDER", insider.returncode, "CONNECTED" in insider.stdout)
print("MODE", oct(os.stat(os.path.expanduser("~/.ray/auth_token")).st_mode & 0o777))
ray.shutdown()
"""


def test_local_ray_refuses_clients_without_its_token(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(home)  # Ray keeps its token under ~/.ray: this test's, not the user's
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(other)], env=env, capture_output=True,
                          text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, said(proc.stderr)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["OUTSIDER"].split()[:2] == ["1", "False"], proc.stdout  # refused
    assert lines["INSIDER"] == "0 True", proc.stdout  # the same user, with the token, gets in
    assert lines["MODE"] == "0o600"
