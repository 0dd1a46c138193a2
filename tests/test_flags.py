"""Flags and settings sources end to end (issue 20): a config file given or found, `[tool.enrich]`,
`ENRICH_*` and `$RAY_ADDRESS`, prompts and revisions in the caption config, `--commit-seconds`.
Each through the CLI in a fresh process, asserting what the run or its plan did with it."""

from __future__ import annotations

import json
from pathlib import Path

from deltalake import DeltaTable

from tests.conftest import _free_port, cli
from tests.helpers import read_table


def plan(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    res = cli("--until", "8", "--plan", *args, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_settings_come_from_flag_env_file_and_pyproject_in_that_order(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.enrich]\ncommit_every = 5\nprompt = "from pyproject"\n')
    found = plan(cwd=tmp_path)["settings"]
    assert found["commit_every"] == {"value": 5, "from": f"file {tmp_path / 'pyproject.toml'}"}
    assert found["prompt"]["value"] == "from pyproject"
    other = tmp_path / "other.toml"
    other.write_text('commit_every = 7\nsystem_prompt = "from --config"\ntable = "elsewhere"\n')
    given = plan("--config", str(other), cwd=tmp_path)["settings"]  # replaces the one found
    assert given["commit_every"]["value"] == 7 and given["table"]["value"] == "elsewhere"
    assert given["system_prompt"] == {"value": "from --config", "from": f"file {other}"}
    assert given["prompt"]["from"] == "default"
    env = plan("--config", str(other), cwd=tmp_path, env={"ENRICH_COMMIT_EVERY": "9"})["settings"]
    assert env["commit_every"] == {"value": 9, "from": "env ENRICH_COMMIT_EVERY"}
    flag = plan("--config", str(other), "--commit-every", "11", cwd=tmp_path,
                env={"ENRICH_COMMIT_EVERY": "9"})["settings"]
    assert flag["commit_every"] == {"value": 11, "from": "flag"}


def test_prompts_and_revision_are_part_of_the_caption_config(tmp_path: Path) -> None:
    base = ["--engine", "vllm", "--model", "org/model"]
    ids = {plan(*base, *extra, cwd=tmp_path)["caption_config"]
           for extra in ([], ["--system-prompt", "Be brief."], ["--prompt", "What is it?"],
                         ["--model-revision", "abc123"])}
    assert len(ids) == 4  # each one changes what a caption is: a new caption config
    revised = plan(*base, "--model-revision", "abc123", cwd=tmp_path)
    assert revised["caption"]["model_revision"] == "abc123"
    assert revised["engine"]["llm_kwargs"]["revision"] == "abc123"


def test_a_system_prompt_change_captions_again(tmp_path: Path, ray_address: str) -> None:
    common = ["--until", "16", "--source", "sample", "--table", str(tmp_path / "t"), "--engine",
              "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet", "--ray-address",
              ray_address]
    assert cli(*common).returncode == 0
    res = cli(*common, "--system-prompt", "Caption tersely.")
    assert res.returncode == 0, res.stderr
    rows = read_table(str(tmp_path / "t")).to_pylist()
    configs = {r["caption_config"] for r in rows}
    assert len(configs) == 2 and len(rows) == 32
    for config in configs:  # each config numbers the same 16 rows, captioned afresh
        mine = [r for r in rows if r["caption_config"] == config]
        assert sorted(r["source_index"] for r in mine) == list(range(16))
        assert sum(r["status"] == "captioned" for r in mine) >= 10


def test_ray_address_from_the_environment_is_used(tmp_path: Path) -> None:
    """$RAY_ADDRESS names a cluster where nothing listens: the run says so at once (Ray itself
    would wait for minutes) instead of starting a local Ray of its own."""
    dead = f"127.0.0.1:{_free_port()}"
    res = cli("--until", "8", "--source", "sample", "--table", str(tmp_path / "t"), "--engine",
              "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), env={"RAY_ADDRESS": dead},
              timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"enrich: error: --ray-address '{dead}' (or $RAY_ADDRESS): no Ray cluster answers there "
        "(ConnectionRefusedError: Connection refused); fix the address, or leave it out to start "
        "a local Ray"]
    assert not (tmp_path / "t" / "_delta_log").exists()


def test_first_rows_are_committed_at_once_then_every_commit_seconds(tmp_path: Path,
                                                                    ray_address: str) -> None:
    """The first engine batch is committed as soon as it is in (the time to the first row is
    what a person watching waits on); after it, rows wait for --commit-every or --commit-seconds.
    The dry-run engine spends 10 ms per image, so its four 64-row batches arrive >= 0.5 s apart
    even two at a time."""
    def commits(table: Path, *extra: str) -> int:
        res = cli("--until", "240", "--source", "sample", "--table", str(table), "--engine",
                  "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet",
                  "--dry-run-ms-per-image", "10", "--commit-every", "1000",
                  "--ray-address", ray_address, *extra)
        assert res.returncode == 0, res.stderr
        assert read_table(str(table)).num_rows == 240
        return sum(1 for h in DeltaTable(str(table)).history() if h.get("operation") == "WRITE")

    # default 60 s: the first batch at once, everything else at the end
    assert commits(tmp_path / "once") == 2
    # 0.5 s: every later batch arrival finds the interval passed, so at least one more commit
    assert commits(tmp_path / "often", "--commit-seconds", "0.5") >= 3


def test_unwritable_checkpoint_dir_and_gallery_out_are_one_line(tmp_path: Path) -> None:
    """Answered before Ray starts or the table is read: a folder that is a file cannot be written
    (as root, permissions would not stop a test; a file in the way does)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    res = cli("--until", "8", "--source", "sample", "--table", str(tmp_path / "t"), "--engine",
              "dry-run", "--checkpoint-dir", str(blocker / "ck"), "--ray-address", "127.0.0.1:1")
    assert res.returncode == 2, res.stderr  # not the dead --ray-address: the folder is checked first
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith(f"enrich: error: --checkpoint-dir '{blocker / 'ck'}': cannot write")
    assert not (tmp_path / "t").exists()
    res = cli("gallery", "--table", str(tmp_path / "t"), "--out", str(blocker / "g.html"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"enrich: error: --out '{blocker / 'g.html'}': cannot write in "
                                  f"{blocker} (NotADirectoryError: Not a directory)")
