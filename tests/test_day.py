"""A person's day (issue 28): what a user reaches answers in one line, leaves nothing behind, and
says what is going on (a run that died, a run not yet committed, where a bad value came from)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import enrich
from enrich.cli import main
from enrich.config import RunConfig
from enrich.errors import UsageError
from enrich.journal import Journal, Outcome, process_token, read_journals, shown_outcome
from enrich.pipeline import run
from enrich.plan import make_plan
from enrich.progress import Counts, Reporter
from enrich.settings import resolve
from enrich.sink import CaptionsTable
from tests.conftest import cli
from tests.helpers import read_table
from tests.test_kill_resume import stop_after


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_journal_whose_process_is_gone_shows_as_died() -> None:
    alive = {"outcome": "running", **process_token()}
    assert shown_outcome(alive) == "running"
    dead = {**alive, "pid": _dead_pid(), "process_start": None}
    assert shown_outcome(dead) == "died"
    # the same pid, but another process (started at another time): not the run either
    assert shown_outcome({**alive, "process_start": "1"}) == "died"
    assert shown_outcome({**alive, "host": "elsewhere"}) == "running"  # cannot be known there
    assert shown_outcome({**dead, "outcome": "completed"}) == "completed"


def test_status_during_a_first_run_names_the_run(tmp_path: Path, capsys) -> None:
    cfg = RunConfig(until=10, source="sample", table=str(tmp_path / "t"), engine="dry-run",
                    checkpoint_dir=str(tmp_path / "ck"))
    plan = make_plan(cfg, CaptionsTable(cfg.table))
    Journal(cfg, "20261206T000000Z-abcdef", plan).write(Outcome.RUNNING, Counts())
    code = main(["status", "--table", cfg.table, "--checkpoint-dir", cfg.checkpoint_dir])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err]
    assert "run 20261206T000000Z-abcdef" in err and "has not committed its first rows" in err
    # the same journal left by a process that is gone: no run is on its way
    path = next((tmp_path / "ck").rglob("runs/*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "pid": _dead_pid(),
                                "process_start": None}))
    assert main(["status", "--table", cfg.table, "--checkpoint-dir", cfg.checkpoint_dir]) == 2
    assert "(run enrich first)" in capsys.readouterr().err


def test_a_failure_after_the_journal_is_written_is_journaled(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's first write and its last are in one try: a run that fails while Ray starts
    is journaled "failed", with its error apart, never left "running"."""
    import enrich.pipeline

    def no_ray(cfg: RunConfig) -> None:
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(enrich.pipeline, "init_ray", no_ray)
    cfg = RunConfig(until=10, source="sample", table=str(tmp_path / "t"), engine="dry-run",
                    checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(RuntimeError, match="the cluster went away"):
        run(cfg, reporter=Reporter(total=10, quiet=True))
    journals = read_journals(cfg.checkpoint_dir, cfg.table)
    assert [j["outcome"] for j in journals] == ["failed"]
    assert journals[0]["error"] == "RuntimeError: the cluster went away"


def test_gallery_out_a_folder_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pages"
    folder.mkdir()
    res = cli("gallery", "--table", str(tmp_path / "t"), "--out", str(folder))
    assert res.returncode == 2 and res.stderr.strip() == (
        f"enrich: error: --out '{folder}' is a folder; name the page's file, e.g. "
        f"'{folder / 'gallery.html'}'")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["pages"]


def test_gallery_says_why_rows_have_no_thumbnail(shards: Path, tmp_path: Path,
                                                 ray_address: str) -> None:
    moved = tmp_path / "shards"
    shutil.copytree(shards, moved)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    run(RunConfig(until=20, source=str(moved), table=table, engine="dry-run", checkpoint_dir=ck,
                  ray_address=ray_address), reporter=Reporter(total=20, quiet=True))
    shutil.rmtree(moved)
    res = cli("gallery", "--table", table, "--checkpoint-dir", ck, "--out",
              str(tmp_path / "g.html"))
    assert res.returncode == 0, res.stderr
    assert "(0 thumbnails; no thumbnails from " in res.stdout
    assert "no such file or folder" in res.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_source_that_ends_at_until_is_known_exhausted(shards: Path, tmp_path: Path,
                                                        ray_address: str) -> None:
    """The shards hold 120 rows: a run to exactly 120 records the end, so a larger --until is
    answered from the Delta log, without Ray or an engine."""
    cfg = RunConfig(until=120, source=str(shards), table=str(tmp_path / "t"), engine="dry-run",
                    checkpoint_dir=str(tmp_path / "ck"), ray_address=ray_address)
    assert run(cfg, reporter=Reporter(total=120, quiet=True)).committed_rows == 120
    plan = make_plan(RunConfig(**{**cfg.public_dict(), "until": 500}), CaptionsTable(cfg.table))
    assert plan.progress.exhausted and plan.nothing_to_do
    again = run(RunConfig(**{**cfg.public_dict(), "until": 500}),
                reporter=Reporter(total=500, quiet=True))
    assert again.outcome == Outcome.EXHAUSTED and again.engine_starts == 0
    # one row short of the end: not exhausted (the row past --until was seen)
    short = RunConfig(**{**cfg.public_dict(), "until": 119, "table": str(tmp_path / "t2")})
    run(short, reporter=Reporter(total=119, quiet=True))
    assert not make_plan(short, CaptionsTable(short.table)).progress.exhausted


def test_the_api_takes_the_flags_names_and_says_what_is_wrong(tmp_path: Path) -> None:
    cfg = resolve({"until": 5, "gpu_wait": 0, "table": str(tmp_path / "t")})
    assert cfg.gpu_wait_s == 0
    with pytest.raises(UsageError, match=r"^until='10': expected a whole number, got str$"):
        enrich.run(until="10", source="sample", engine="dry-run")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="temperature=True: expected a number"):
        resolve({"until": 5, "temperature": True})


def test_run_result_repr_is_one_short_line(tmp_path: Path, ray_address: str) -> None:
    res = enrich.run(until=8, source="sample", table=str(tmp_path / "t"), engine="dry-run",
                     checkpoint_dir=str(tmp_path / "ck"), ray_address=ray_address)
    text = repr(res)
    assert text.startswith(f"RunResult(run_id={res.run_id!r}, outcome='completed', "
                           "committed_rows=8, counts={")
    assert "\n" not in text and len(text) < 300


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--image-size", "0"], {}, "--image-size must be between 28 and 2048, got 0"),
    (["--image-size", "-3"], {}, "--image-size must be between 28 and 2048, got -3"),
    ([], {"ENRICH_IMAGE_SIZE": "5"},
     "--image-size must be between 28 and 2048, got 5 (set by env ENRICH_IMAGE_SIZE)"),
    ([], {"ENRICH_IMAGE_SIZE": "big"}, "ENRICH_IMAGE_SIZE: image_size = 'big' is not a whole number"),
    (["--source", "shardz"], {},
     "--source 'shardz': no such file or folder (and not a hub dataset id: ORG/NAME)"),
    (["--source", "./shardz"], {}, "--source './shardz': no such file or folder"),
])
def test_messages_say_the_real_rule_and_where_a_value_came_from(
        args: list[str], env: dict[str, str], message: str, tmp_path: Path) -> None:
    res = cli("--until", "5", "--engine", "dry-run", "--source", "sample", "--table",
              str(tmp_path / "t"), *args, env=env, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == f"enrich: error: {message}"
    assert sorted(os.listdir(tmp_path)) == []


def test_a_bad_value_in_the_settings_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "enrich.toml").write_text("commit_every = 0\n")
    res = cli("--until", "5", "--engine", "dry-run", "--source", "sample", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == ("enrich: error: --commit-every must be >= 1, got 0 (set by "
                                  f"file {tmp_path / 'enrich.toml'})")


def test_until_0_and_version(tmp_path: Path) -> None:
    res = cli("--until", "0", "--engine", "dry-run", "--source", "sample", "--table",
              str(tmp_path / "t"), cwd=tmp_path)
    assert res.returncode == 0 and "covers no rows of" in res.stderr and "0..-1" not in res.stderr
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"enrich {enrich.__version__}"


@pytest.mark.parametrize("args,env,message", [
    (["--lock-ttl", "0"], {}, "--lock-ttl must be >= 10 (seconds), got 0"),
    ([], {"ENRICH_LOCK_TTL": "3"}, "--lock-ttl must be >= 10 (seconds), got 3 (set by env ENRICH_LOCK_TTL)"),
])
def test_ops_settings_are_validated_as_a_runs(args: list[str], env: dict[str, str], message: str,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``compact --lock-ttl 0`` was accepted, and its lease renewer then spun on wait(0): the
    operations commands take their settings through the run's own validation."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert main(["compact", "--table", str(tmp_path / "t"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"enrich: error: {message}"


RAY_LINE = ("[2026-12-07 01:01:38,864 E 15748 15748] core_worker.cc:2465: Actor with class name: "
            "'MapWorker(MapBatches(FetchChunks))' and ID: '7cc33ee6016032b2d29875d101000000' has "
            "constructor arguments in the object store and max_restarts > 0. If the arguments in the "
            "object store go out of scope or are lost, the actor restart will fail. See "
            "https://github.com/ray-project/ray/issues/53727 for more details.\n")


def test_rays_known_line_is_kept_off_stderr_and_nothing_else() -> None:
    """The line Ray's C++ core worker writes to fd 2 when Ray Data starts its actors is dropped;
    everything else written to fd 2 (by C++ or Python, a live line's \\r included) comes through,
    in order, and stderr is the terminal's again afterwards."""
    code = (
        "import os, sys\n"
        "from enrich.stderr_filter import without_known_ray_lines\n"
        "with without_known_ray_lines():\n"
        "    sys.stderr.write('\\rprogress 1'); sys.stderr.flush()\n"
        f"    os.write(2, {RAY_LINE.encode()!r})\n"
        "    os.write(2, b'\\rprogress 2\\n')\n"
        "print('after', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == b"\rprogress 1\rprogress 2\nafter\n"


def test_a_run_prints_no_ray_line(tmp_path: Path, ray_address: str) -> None:
    res = cli("--until", "64", "--source", "sample", "--engine", "dry-run", "--table",
              str(tmp_path / "t"), "--ray-address", ray_address, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "core_worker.cc" not in res.stderr and "enrich: completed: 64 rows" in res.stderr


def test_sigterm_to_a_run_is_one_line_and_journaled_interrupted(tmp_path: Path,
                                                                ray_address: str) -> None:
    """`kill PID` (or `timeout`, a service manager) during a run: exit 143 and one line, not
    Ray's C++ stack dump ("*** SIGTERM received ...", its core worker's handler) with exit 15;
    the journal says interrupted and the rerun resumes exactly."""
    import signal

    table, ck = tmp_path / "t", tmp_path / "ck"
    args = ["--until", "256", "--source", "sample", "--table", str(table), "--checkpoint-dir",
            str(ck), "--engine", "dry-run", "--dry-run-ms-per-image", "200", "--commit-every", "16",
            "--quiet", "--ray-address", ray_address]
    # stopped once the table is created and has one commit of rows
    code, err = stop_after(args, table, commits=2, delay=0.0, sig=signal.SIGTERM)
    assert code != 0, "the run ended before it could be stopped"
    assert code == 143, err
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "enrich: terminated (SIGTERM); committed rows are safe, run the same command to resume"]
    assert [j["outcome"] for j in read_journals(str(ck), str(table))] == ["interrupted"]
    res = cli(*args, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = read_table(str(table)).column("source_index").to_pylist()
    assert sorted(rows) == list(range(256))
