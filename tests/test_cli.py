"""The CLI: bad invocations (exit 2, one line, nothing written), --plan, --help, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from enrich.cli import build_run_parser, main
from tests.conftest import cli


@pytest.mark.parametrize("args,fragment", [
    (["--until", "-5"], "must be >= 0"),
    (["--until", "lots"], "expected a whole number"),
    (["--until", "10", "--engine", "tpu"], "invalid choice"),
    (["--until", "10", "--image-size", "0"], "must be between 28 and 2048"),
    (["--until", "10", "--engine-kwargs", "[1]"], "JSON object"),
    (["--until", "10", "--concurrency", "x"], "expected a whole number"),
    ([], "--until is required"),
])
def test_bad_flags_exit_2_with_one_line(args: list[str], fragment: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        rc = main([*args, "--table", str(tmp_path / "t"), "--source", "sample"])
        raise SystemExit(rc)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "t").exists()


def test_bad_table_or_source_exit_2_and_write_nothing(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_deltalake(str(tmp_path / "other"), pa.table({"x": [1]}))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.csv").write_text("1\n")
    before = sorted(p.name for p in (tmp_path / "other" / "_delta_log").iterdir())
    cases = [
        ["--table", str(tmp_path / "other"), "--source", "sample"],
        ["--table", str(tmp_path / "plain"), "--source", "sample"],
        ["--table", str(tmp_path / "new"), "--source", str(tmp_path / "nowhere")],
    ]
    for args in cases:
        rc = main(["--until", "5", "--engine", "dry-run", "--checkpoint-dir",
                   str(tmp_path / "ck"), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("enrich: error:"), err
    assert sorted(p.name for p in (tmp_path / "other" / "_delta_log").iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["a.csv"]
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").glob("*.parquet"))


def test_every_option_has_help() -> None:
    parser = build_run_parser()
    for action in parser._actions:
        if action.option_strings:
            assert action.help, action.option_strings


def test_plan_prints_json_and_writes_nothing(tmp_path: Path) -> None:
    proc = cli("--until", "1000000", "--plan", "--engine", "dry-run", "--table",
               str(tmp_path / "t"), "--source", "sample", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["rows_done"] == 0 and plan["rows_to_do"] == 1000000
    assert plan["caption"]["model"] == "dry-run" and plan["engine"]["engine"] == "dry-run"
    assert plan["settings"]["table"]["from"] == "flag"
    assert not (tmp_path / "t").exists() and not (tmp_path / "checkpoints").exists()


def test_import_and_help_stay_light() -> None:
    code = ("import sys, enrich, enrich.cli, enrich.config, enrich.pipeline, enrich.engines;"
            "heavy = [m for m in ('vllm', 'torch', 'transformers', 'ray') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = ("import sys, runpy; sys.argv = ['enrich', '--help'];\n"
            "try:\n    runpy.run_module('enrich', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print([m for m in ('vllm', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--dry-run-ms-per-image" in out.stdout


def test_cli_run_then_rerun_says_nothing_to_do(tmp_path: Path, ray_address: str) -> None:
    args = ("--until", "40", "--source", "sample", "--engine", "dry-run", "--table",
            str(tmp_path / "t"), "--ray-address", ray_address)
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "completed: 40 rows" in first.stderr
    second = cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "nothing to do" in second.stderr
    journals = list((tmp_path / "checkpoints").rglob("runs/*.json"))
    assert len(journals) == 1
    journal = json.loads(journals[0].read_text())
    assert journal["outcome"] == "completed"
    # the time to the first row, split: Ray up, the first engine rows back (from row 0, in
    # source order), their commit
    m = journal["milestones"]
    assert m["first_rows_back"].startswith("0..")
    assert 0 < m["ray_started_s"] <= m["first_rows_back_s"] <= m["first_commit_s"] <= round(journal["seconds"], 1)
