"""Parquet and image-folder datasets laid out the way the hub's own tools write them (`datasets`
writes the parquet files; split names come from file and folder names), served by the loopback
hub with faults on, read as `--source ORG/NAME` with `--split`: the same rows as the same images
read locally; kill and rerun end equal to a clean run; another split is another stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enrich.source import iter_shard, list_shards
from tests.conftest import cli
from tests.fake_hub import serve
from tests.helpers import outcome, read_table, said
from tests.test_kill_resume import kill_after

FAULTS = [["info", 1, 500], ["tree", 1, 429], ["paths", 1, 502], ["file", 1, "reset"],
          ["file", 1, 503]]


@pytest.fixture(scope="module")
def repos(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tar shards' images (duplicates and corrupt ones included) as (1) a parquet dataset
    written by `datasets` — train in two files, test in one — and (2) an image folder with a
    metadata.jsonl, train and test folders; (3) the train parquet files alone, to read locally."""
    import datasets

    out = tmp_path_factory.mktemp("hub-formats")
    samples = [s for sh in list_shards(str(shards)) for s in iter_shard(sh)
               if s.error is None and s.image is not None]
    train, test = samples[:-12], samples[-12:]
    features = datasets.Features({"image": datasets.Image(), "key": datasets.Value("string")})
    pq_repo, local, img_repo = out / "pq", out / "pq-local", out / "img"
    halves = [("train-00000-of-00002", train[:40]), ("train-00001-of-00002", train[40:]),
              ("test-00000-of-00001", test)]
    for name, part in halves:
        ds = datasets.Dataset.from_dict(
            {"image": [{"bytes": s.image, "path": f"{s.key}.{s.image_ext}"} for s in part],
             "key": [s.key for s in part]}, features=features)
        (pq_repo / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(pq_repo / "data" / f"{name}.parquet"))
        if name.startswith("train"):
            local.mkdir(exist_ok=True)
            ds.to_parquet(str(local / f"{name}.parquet"))
    for split, part in (("train", train), ("test", test)):
        folder = img_repo / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w") as fh:
            for i, s in enumerate(part):
                name = f"{i:04d}-{s.key}.{s.image_ext}"
                (folder / name).write_bytes(s.image or b"")
                fh.write(json.dumps({"file_name": name, "text": f"caption {s.key}"}) + "\n")
    return {"parquet": pq_repo, "local": local, "images": img_repo, "train": len(train)}


def args(source: str, table: Path, until: int, ray_address: str, *extra: str) -> list[str]:
    return ["--until", str(until), "--source", source, "--table", str(table), "--engine",
            "dry-run", "--checkpoint-dir", str(table.parent / "ck"), "--quiet",
            "--ray-address", ray_address, *extra]


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing cached between tests


@pytest.mark.parametrize("kind", ["parquet", "images"])
def test_hub_dataset_with_faults_equals_local_kill_and_rerun(
        kind: str, repos: dict, tmp_path: Path, ray_address: str, hub_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    n = repos["train"]
    clean = tmp_path / "clean" / "t"
    res = cli(*args(str(repos["local"]), clean, n, ray_address))
    assert res.returncode == 0, said(res.stderr)
    want = outcome(str(clean))
    statuses = {v[0] for v in want.values()}
    assert {"captioned", "duplicate", "rejected"} <= statuses  # the data is not all clean
    with serve(repos[kind], "org/data") as (url, hub):
        monkeypatch.setenv("HF_ENDPOINT", url)
        hub.faults.rules = [list(r) for r in FAULTS]
        table = tmp_path / "hub" / "t"
        run = args("org/data", table, 50, ray_address, "--commit-every", "10",
                   "--dry-run-ms-per-image", "20")
        assert kill_after(run, table, commits=2, delay=0.0) == -9
        assert 0 < len(outcome(str(table))) < 50
        res = cli(*args("org/data", table, n, ray_address, "--commit-every", "10"))
        assert res.returncode == 0, said(res.stderr)
        assert {"info:500", "tree:429"} <= set(hub.faults.seen)
        assert not [u for u in hub.unknown if "/datasets/" in u]
        got = outcome(str(table))
        assert {i: v[:2] for i, v in got.items()} == {i: v[:2] for i, v in want.items()}
        shards = set(read_table(str(table)).column("source_shard").to_pylist())
        if kind == "images":  # one row per file, named by its path in the repo
            assert all(s.startswith("train/") for s in shards) and len(shards) == n
        else:
            assert shards == {"train-00000-of-00002.parquet", "train-00001-of-00002.parquet"}
        # the test split: another stream in the same table, numbered from 0
        res = cli(*args("org/data", table, 100, ray_address, "--split", "test"))
        assert res.returncode == 0, said(res.stderr)
        rows = read_table(str(table)).to_pylist()
        test_rows = [r for r in rows if r["source"] == "org/data?split=test"]
        assert sorted(r["source_index"] for r in test_rows) == list(range(12))
        assert len(rows) == n + 12
        res = cli(*args("org/data", tmp_path / "x" / "t", 5, ray_address, "--split", "nope"))
        assert res.returncode == 2, said(res.stderr)
        assert "no split 'nope'" in res.stderr and "train" in res.stderr and "test" in res.stderr
