"""The Python API (`enrich.run`, `enrich.status`) and the answers a person gets at once: a
source typed as a path that does not exist, and a pipe closed by its reader."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import enrich
from tests.conftest import cli
from tests.helpers import read_table, said


def test_run_from_python_writes_an_exact_table_quietly(ray_address: str, shards: Path, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    import ray

    table = str(tmp_path / "t")
    result = enrich.run(until=60, source=str(shards), table=table, engine="dry-run",
                        checkpoint_dir=str(tmp_path / "ck"), ray_address=ray_address)
    rows = read_table(table).to_pylist()
    assert sorted(r["source_index"] for r in rows) == list(range(60))
    assert result.committed_rows == 60 and result.commits >= 1 and result.outcome == "completed"
    assert dict(Counter(r["status"] for r in rows)) == {k: v for k, v in result.counts.by_status.items() if v}
    out, err = capfd.readouterr()
    assert out == "" and "enrich:" not in err  # nothing printed unless progress=True
    assert ray.is_initialized()  # a Ray it did not start is left running
    info = enrich.status(table, checkpoint_dir=str(tmp_path / "ck"))
    assert sum(r["rows"] for r in info["rows"]) == 60
    assert [r["run_id"] for r in info["recent_runs"]] == [result.run_id]
    assert info["resume_positions"][0]["next_index"] == 60
    again = enrich.run(until=60, source=str(shards), table=table, engine="dry-run",
                       checkpoint_dir=str(tmp_path / "ck"), ray_address=ray_address)
    assert again.committed_rows == 0 and again.outcome.startswith("nothing to do")
    assert read_table(table).num_rows == 60


def test_errors_are_enrichs_exception_classes(tmp_path: Path) -> None:
    with pytest.raises(enrich.SourceError, match="no such file or folder") as exc:
        enrich.run(until=5, source=str(tmp_path / "no-such-folder") + "/", table=str(tmp_path / "t"),
                   engine="dry-run")
    assert exc.value.exit_code == 2
    with pytest.raises(enrich.UsageError, match="unknown setting"):
        enrich.run(until=5, source="sample", engine="dry-run", max_tokenz=3)
    with pytest.raises(enrich.UsageError, match="--until must be >= 0"):
        enrich.run(until=-1, source="sample", engine="dry-run")
    assert not (tmp_path / "t").exists()


def test_run_from_python_shuts_down_the_ray_it_started(shards: Path, tmp_path: Path) -> None:
    code = (
        "import enrich, ray\n"
        f"r = enrich.run(until=20, source={str(shards)!r}, table={str(tmp_path / 't')!r}, "
        f"engine='dry-run', checkpoint_dir={str(tmp_path / 'ck')!r}, num_cpus=2)\n"
        "print(r.committed_rows, ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, said(proc.stderr)
    assert proc.stdout.split() == ["20", "False"]


@pytest.mark.parametrize("source", ["./imgs_typo", "data/imgs.tar", "~/no-such-enrich-folder",
                                    "imgs_typo/"])
def test_a_missing_path_is_exit_2_at_once_naming_it(source: str, tmp_path: Path) -> None:
    res = cli("--until", "5", "--source", source, "--engine", "dry-run", "--table", str(tmp_path / "t"),
              "--checkpoint-dir", str(tmp_path / "ck"), cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such file or folder" in lines[0]
    assert source.lstrip("~").rstrip("/") in lines[0]
    assert "ray" not in res.stderr.lower() and not (tmp_path / "t").exists()


def test_a_pipe_closed_by_its_reader_ends_quietly(ray_address: str, shards: Path, tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    enrich.run(until=5, source=str(shards), table=table, engine="dry-run",
               checkpoint_dir=str(tmp_path / "ck"), ray_address=ray_address)
    # ~4 MB of output: more than a pipe holds, so the writer meets the closed pipe
    query = "SELECT repeat('x', 100000) AS big FROM range(40)"
    proc = subprocess.run(f"{sys.executable} -m enrich sql \"{query}\" --table {table} | head -c 10",
                          shell=True, capture_output=True, text=True, timeout=120,
                          executable="/bin/bash")
    assert proc.stdout == "big\n------"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# A Ray address where nothing listens: a run that tried to reach Ray would fail on it (or wait),
# so these answers prove they come before Ray is started or joined.
NO_RAY = "127.0.0.1:1"


def test_a_table_in_use_is_refused_before_ray(shards: Path, tmp_path: Path) -> None:
    from enrich.sink import CaptionsTable

    table = tmp_path / "t"
    with CaptionsTable(str(table)).lock():  # another enrich process holds the table
        res = cli("--until", "5", "--source", str(shards), "--engine", "dry-run", "--table", str(table),
                  "--checkpoint-dir", str(tmp_path / "ck"), "--ray-address", NO_RAY, timeout=120)
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another enrich process" in lines[0] and "pid" in lines[0]
    assert not table.exists()  # the folder made only for the lock is gone again


def test_an_unwritable_table_folder_is_one_line_before_ray(shards: Path, tmp_path: Path) -> None:
    parent = tmp_path / "frozen"
    parent.mkdir()
    # chattr +i: not even root may create entries in it (CI runs as root)
    frozen = subprocess.run(["chattr", "+i", str(parent)], capture_output=True, text=True)
    assert frozen.returncode == 0, frozen.stderr
    try:
        res = cli("--until", "5", "--source", str(shards), "--engine", "dry-run",
                  "--table", str(parent / "t"), "--checkpoint-dir", str(tmp_path / "ck"),
                  "--ray-address", NO_RAY, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and str(parent / "t") in lines[0]
