"""`--source ORG/NAME` against a loopback server speaking the hub's API (tests/fake_hub.py),
reached by the real `huggingface_hub` client through HF_ENDPOINT, with faults: 429 with
Retry-After, 5xx on every kind of request, connections reset mid-file, slow answers, an outage,
a dataset that does not exist. Nothing lost or duplicated; every failure one line and a
documented exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli
from tests.fake_hub import serve
from tests.helpers import outcome, said


def hub_env(url: str) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}


def run_args(tmp_path: Path, source: str, until: int, ray_address: str) -> list[str]:
    return ["--until", str(until), "--source", source, "--table", str(tmp_path / "t"),
            "--engine", "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet",
            "--commit-every", "10", "--ray-address", ray_address]


@pytest.fixture(scope="module")
def clean(shards: Path, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same shards read from disk: what every hub run must end equal to."""
    work = tmp_path_factory.mktemp("hub-clean")
    res = cli(*run_args(work, str(shards), 90, ray_address))
    assert res.returncode == 0, res.stderr
    return outcome(str(work / "t"))


def test_faults_on_every_kind_of_request_lose_nothing(shards: Path, tmp_path: Path, ray_address: str,
                                                      clean: dict) -> None:
    with serve(shards, "org/name") as (url, hub):
        hub.faults.rules = [["info", 1, 500], ["tree", 1, 429], ["tree", 1, 502], ["file", 2, "reset"],
                            ["file", 1, 503], ["file", 1, "slow"], ["paths", 1, 500]]
        res = cli(*run_args(tmp_path, "org/name", 90, ray_address), env=hub_env(url))
        assert res.returncode == 0, said(res.stderr)
        assert {"info:500", "tree:429", "tree:502", "file:reset", "file:503"} <= set(hub.faults.seen)
        assert not [u for u in hub.unknown if "/datasets/" in u]
    got = outcome(str(tmp_path / "t"))
    assert {i: v[:2] for i, v in got.items()} == {i: v[:2] for i, v in clean.items()}


def test_outage_mid_run_ends_in_one_line_then_resumes(shards: Path, tmp_path: Path, ray_address: str,
                                                      clean: dict) -> None:
    with serve(shards, "org/name") as (url, hub):
        res = cli(*run_args(tmp_path, "org/name", 30, ray_address), env=hub_env(url))
        assert res.returncode == 0, said(res.stderr)
        hub.faults.rules = [["file", 10_000, "reset"]]  # every read of a shard breaks mid-file
        res = cli(*run_args(tmp_path, "org/name", 90, ray_address), env=hub_env(url), timeout=600)
        assert res.returncode == 5, said(res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("enrich: error:") and "still failing after" in last, last
        assert "Traceback" not in res.stderr
        assert 30 <= len(outcome(str(tmp_path / "t"))) < 90  # what was committed stays
        hub.faults.rules = []
        res = cli(*run_args(tmp_path, "hf://datasets/org/name", 90, ray_address), env=hub_env(url))
        assert res.returncode == 0, said(res.stderr)
    got = outcome(str(tmp_path / "t"))
    assert {i: v[:2] for i, v in got.items()} == {i: v[:2] for i, v in clean.items()}


def test_a_shard_gone_after_the_listing_ends_the_run_in_one_line(shards: Path, tmp_path: Path,
                                                                 ray_address: str, clean: dict) -> None:
    """The last shard answers 404 (deleted after the listing) while the first chunk, read from
    the others, is already in Ray: the run ends with the reader's own error (exit 2, naming the
    shard), not with Ray's traceback of the stage that waited for it; the rerun is exact."""
    with serve(shards, "org/name") as (url, hub):
        hub.faults.gone = {"00004.tar"}
        res = cli(*run_args(tmp_path, "org/name", 120, ray_address), env=hub_env(url))
        assert res.returncode == 2, said(res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("enrich: error: cannot read shard 00004.tar"), last
        assert "Traceback" not in res.stderr and "RayTaskError" not in res.stderr, said(res.stderr)
        if (tmp_path / "t" / "_delta_log").exists():  # what was committed stays
            assert len(outcome(str(tmp_path / "t"))) < 120
        hub.faults.gone = set()
        res = cli(*run_args(tmp_path, "org/name", 120, ray_address), env=hub_env(url))
        assert res.returncode == 0, said(res.stderr)
    got = outcome(str(tmp_path / "t"))
    assert sorted(got) == list(range(120))
    assert {i: got[i][:2] for i in clean} == {i: v[:2] for i, v in clean.items()}


def test_hub_down_is_exit_5_and_missing_dataset_exit_2(shards: Path, tmp_path: Path,
                                                       ray_address: str) -> None:
    with serve(shards, "org/name") as (url, hub):
        hub.faults.down = True
        res = cli(*run_args(tmp_path, "org/name", 10, ray_address), env=hub_env(url))
        assert res.returncode == 5, said(res.stderr)
        line = res.stderr.strip().splitlines()[-1]
        assert "--source 'org/name'" in line and "still failing" in line and "Traceback" not in res.stderr
        # one warning when the retries begin (not one per retry, not the hub client's own), the error
        assert len(res.stderr.strip().splitlines()) <= 4, res.stderr
        assert not (tmp_path / "t").exists()
        hub.faults.down = False
        res = cli(*run_args(tmp_path, "org/nothing-here", 10, ray_address), env=hub_env(url))
        assert res.returncode == 2, said(res.stderr)
        line = res.stderr.strip().splitlines()[-1]
        assert "--source 'org/nothing-here': not found" in line and "Traceback" not in res.stderr
        assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("endpoint,why", [("http://127.0.0.1:9", "Connection refused"),
                                          ("https://enrich-no-such-host.invalid", "gaierror")])
def test_unreachable_hub_is_one_line_at_once(tmp_path: Path, endpoint: str, why: str) -> None:
    """A source that is neither a local path nor reachable on the hub: one line naming both, exit
    5, before any retry (the hub client alone would retry for minutes) and before Ray starts."""
    res = cli(*run_args(tmp_path, "data/imgs", 10, "")[:-2], env=hub_env(endpoint), timeout=60)
    assert res.returncode == 5, said(res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("enrich: error: --source 'data/imgs': no local folder 'data/imgs'; "
                               "the hub (") and "could not be reached" in lines[0] and why in lines[0]
    assert not (tmp_path / "t").exists()
