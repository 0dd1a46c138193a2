"""The README's Python example runs as written (in a fresh process, in a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import said

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_python_example_runs(tmp_path: Path) -> None:
    section = README.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    # the example's run, on a Ray of 2 CPUs (this machine's size) and a sample built in tmp_path
    code = code.replace('engine="dry-run")', 'engine="dry-run", num_cpus=2)')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, said(proc.stderr)
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith("200 {") and "'captioned'" in first
    assert "'status': 'captioned'" in second
    assert (tmp_path / "captions" / "_delta_log").is_dir()
