"""Parquet files and image folders as sources: the same images as the webdataset shards, in the
same canonical order, give the same rows (statuses, hashes) exactly once; kill and rerun,
and a larger --until, work unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import cli
from tests.helpers import error_text, outcome, read_table, said
from tests.test_kill_resume import kill_after


def _tar_images(path: Path) -> list[tuple[str, str, bytes]]:
    """(key, extension, bytes) of every image member of a tar shard, in tar order, read with
    Python's tarfile (not enrich's reader): the oracle the other formats are built from. Each
    image member is one sample (webdataset: a second image under one key starts a new one)."""
    import tarfile

    out = []
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                stem, _, ext = m.name.rpartition("/")[2].partition(".")
                f = tar.extractfile(m) if m.isfile() else None
                if f is not None and ext.lower() in ("jpg", "jpeg", "png", "webp"):
                    key = f"{m.name.rpartition('/')[0]}/{stem}" if "/" in m.name else stem
                    out.append((key, ext.lower(), f.read()))
    except (tarfile.ReadError, EOFError):
        pass  # a truncated shard: what was read before the break
    return out


@pytest.fixture(scope="module")
def converted(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """The tar shards' images as parquet files ({bytes, path} structs, one file per shard,
    plus a broken file at the end) and as an image folder. Returns (parquet dir, folder, rows)."""
    out = tmp_path_factory.mktemp("formats")
    pq_dir, folder = out / "parquet", out / "images"
    pq_dir.mkdir()
    rows = 0
    for tar in sorted(shards.glob("*.tar")):
        samples = _tar_images(tar)
        stem = tar.name.removesuffix(".tar")
        images = [{"bytes": data, "path": f"{key}.{ext}"} for key, ext, data in samples]
        pq.write_table(pa.table({"id": [key for key, _, _ in samples], "image": images}),
                       pq_dir / f"{stem}.parquet", row_group_size=7)
        for key, ext, data in samples:
            target = folder / stem / f"{key}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
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


def test_parquet_and_image_folder_give_the_same_rows(converted: tuple[Path, Path, int], shards: Path,
                                                     tmp_path: Path, ray_address: str) -> None:
    pq_dir, folder, n = converted
    for res in (cli(*args(pq_dir, tmp_path / "pq" / "t", n, ray_address)),
                cli(*args(folder, tmp_path / "img" / "t", n, ray_address))):
        assert res.returncode == 0, said(res.stderr)
    pq_rows, img_rows = statuses(tmp_path / "pq" / "t"), statuses(tmp_path / "img" / "t")
    assert len(pq_rows) == len(img_rows) == n
    assert pq_rows == img_rows  # same images, same canonical order, same decisions
    # ...and the same as the tar shards they came from: the tar run's rows that have an image
    # (the conversion keeps only those), each hash that of the bytes tarfile read
    tar = cli(*args(shards, tmp_path / "tar" / "t", 10_000, ray_address))
    assert tar.returncode == 0, said(tar.stderr)
    tar_rows = [r for r in statuses(tmp_path / "tar" / "t") if r[1] is not None]
    assert pq_rows == tar_rows
    oracle = [hashlib.sha256(data).hexdigest()
              for t in sorted(shards.glob("*.tar")) for _, _, data in _tar_images(t)]
    assert [h for _, h in pq_rows] == oracle
    counts = {s: sum(1 for st, _ in pq_rows if st == s) for s in ("captioned", "duplicate", "rejected")}
    assert all(counts.values()), counts  # the data has duplicates and corrupt images
    # past the last good file: the broken parquet file is one row saying why
    res = cli(*args(pq_dir, tmp_path / "pq" / "t", n + 5, ray_address))
    assert res.returncode == 0, said(res.stderr)
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


def test_a_column_of_image_paths_is_read_by_path(tmp_path: Path, ray_address: str) -> None:
    """``--image-column`` on path strings (what the no-image-column message suggests): each file
    is read from beside the parquet file; a missing one is a rejected row that names it. Before,
    the strings reached the hash as images: a Ray traceback, exit 1."""
    import io

    from PIL import Image

    d = tmp_path / "p"
    (d / "img").mkdir(parents=True)
    jpegs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (40 + i, 30), (10 * i, 80, 200)).save(buf, format="JPEG")
        (d / "img" / f"{i}.jpg").write_bytes(buf.getvalue())
        jpegs.append(buf.getvalue())
    paths = ["img/0.jpg", "img/1.jpg", "img/gone.jpg", "img/2.jpg"]
    pq.write_table(pa.table({"image_path": paths, "n": [1, 2, 3, 4]}), d / "00000.parquet")
    table = tmp_path / "t"
    res = cli(*args(d, table, 4, ray_address, "--image-column", "image_path"))
    assert res.returncode == 0, said(res.stderr)
    got = read_table(str(table)).sort_by("source_index").to_pylist()
    assert [r["status"] for r in got] == ["captioned", "captioned", "rejected", "captioned"]
    assert [r["image_hash"] for r in got if r["status"] == "captioned"] == [
        hashlib.sha256(b).hexdigest() for b in jpegs]
    assert "img/gone.jpg" in error_text(got[2]) and "FileNotFoundError" in error_text(got[2])
    # a column that holds neither bytes nor paths: one line, exit 2, nothing written
    res = cli(*args(d, tmp_path / "t2", 4, ray_address, "--image-column", "n"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"enrich: error: --source '{d}': column 'n' of 00000.parquet holds int64, not images "
        "(a {bytes, path} struct, binary bytes or file paths as strings)"]
    assert not (tmp_path / "t2").exists()
