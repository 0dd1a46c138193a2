"""Parquet files and image folders as sources: the same images as the webdataset shards, in the
same canonical order, give the same rows (statuses, hashes) exactly once; kill and rerun,
and a larger --until, work unchanged."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrich.source import iter_shard, list_shards
from tests.conftest import cli
from tests.helpers import outcome
from tests.test_kill_resume import kill_after


@pytest.fixture(scope="module")
def converted(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """The tar shards' samples as parquet files ({bytes, path} structs, one file per shard,
    plus a broken file at the end) and as an image folder. Returns (parquet dir, folder, rows)."""
    out = tmp_path_factory.mktemp("formats")
    pq_dir, folder = out / "parquet", out / "images"
    pq_dir.mkdir()
    rows = 0
    for shard in list_shards(str(shards)):
        samples = [s for s in iter_shard(shard) if s.error is None and s.image is not None]
        stem = shard.name.removesuffix(".tar")
        images = [{"bytes": s.image, "path": f"{s.key}.{s.image_ext}"} for s in samples]
        pq.write_table(pa.table({"id": [s.key for s in samples], "image": images}),
                       pq_dir / f"{stem}.parquet", row_group_size=7)
        for s in samples:
            target = folder / stem / f"{s.key}.{s.image_ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s.image or b"")
        rows += len(samples)
    (pq_dir / "99999.parquet").write_bytes(b"PAR1 this is not parquet")
    return pq_dir, folder, rows


def args(source: Path, table: Path, until: int, ray_address: str, *extra: str) -> list[str]:
    return ["--until", str(until), "--source", str(source), "--table", str(table), "--engine",
            "dry-run", "--checkpoint-dir", str(table.parent / "ck"), "--quiet",
            "--ray-address", ray_address, *extra]


def statuses(table: Path) -> list[tuple[str, str | None]]:
    got = outcome(str(table))
    assert sorted(got) == list(range(len(got)))
    return [got[i][:2] for i in sorted(got)]


def test_parquet_and_image_folder_give_the_same_rows(converted: tuple[Path, Path, int],
                                                     tmp_path: Path, ray_address: str) -> None:
    pq_dir, folder, n = converted
    for res in (cli(*args(pq_dir, tmp_path / "pq" / "t", n, ray_address)),
                cli(*args(folder, tmp_path / "img" / "t", n, ray_address))):
        assert res.returncode == 0, res.stderr[-2000:]
    pq_rows, img_rows = statuses(tmp_path / "pq" / "t"), statuses(tmp_path / "img" / "t")
    assert len(pq_rows) == len(img_rows) == n
    assert pq_rows == img_rows  # same images, same canonical order, same decisions
    counts = {s: sum(1 for st, _ in pq_rows if st == s) for s in ("captioned", "duplicate", "rejected")}
    assert all(counts.values()), counts  # the data has duplicates and corrupt images
    # past the last good file: the broken parquet file is one row saying why
    res = cli(*args(pq_dir, tmp_path / "pq" / "t", n + 5, ray_address))
    assert res.returncode == 0, res.stderr[-2000:]
    last = outcome(str(tmp_path / "pq" / "t"))
    assert len(last) == n + 1 and last[n][0] == "rejected"


@pytest.mark.parametrize("kind", ["parquet", "images"])
def test_kill_rerun_and_extend(converted: tuple[Path, Path, int], tmp_path: Path, ray_address: str,
                               kind: str) -> None:
    source = converted[0] if kind == "parquet" else converted[1]
    clean = tmp_path / "clean" / "t"
    assert cli(*args(source, clean, 100, ray_address)).returncode == 0
    table = tmp_path / "killed" / "t"
    run = args(source, table, 60, ray_address, "--commit-every", "10", "--dry-run-ms-per-image", "20")
    code = kill_after(run, table, commits=2, delay=0.0)
    assert code == -9 and 0 < len(outcome(str(table))) < 60
    assert cli(*run).returncode == 0
    assert cli(*args(source, table, 100, ray_address, "--commit-every", "10")).returncode == 0
    assert outcome(str(table)) == outcome(str(clean))


def test_image_column_flag_and_a_parquet_without_images(tmp_path: Path, ray_address: str) -> None:
    d = tmp_path / "p"
    d.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"]}), d / "00000.parquet")
    res = cli(*args(d, tmp_path / "t", 2, ray_address))
    assert res.returncode == 2 and "no image column" in res.stderr.strip().splitlines()[-1]
    res = cli(*args(d, tmp_path / "t", 2, ray_address, "--image-column", "picture"))
    assert res.returncode == 2 and "no column 'picture'" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "t").exists()
