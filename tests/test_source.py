from pathlib import Path

import pytest

from enrich.errors import SourceError
from enrich.source import iter_shard, list_shards
from tests.helpers import write_tar


def test_shards_in_name_order_with_gaps(tmp_path: Path) -> None:
    for n in (3, 0, 1):  # 00002 missing, like the real dataset's 00842
        write_tar(tmp_path / f"{n:05d}.tar", [("a.jpg", b"x")])
    assert [s.name for s in list_shards(str(tmp_path))] == ["00000.tar", "00001.tar", "00003.tar"]
    assert [s.name for s in list_shards(str(tmp_path / "0000[01].tar"))] == ["00000.tar", "00001.tar"]


def test_no_shards_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no .tar shards"):
        list_shards(str(tmp_path))


def test_samples_group_members_by_key_in_tar_order(tmp_path: Path) -> None:
    shard = list_shards(str(write_tar(tmp_path / "00000.tar", [
        ("k1.jpg", b"one"), ("k1.txt", b"cap"), ("k2.txt", b"only text"),
        ("k3.jpg", b"three"), ("k3.json", b"{}"), ("k3.jpg", b"again")])))[0]
    got = [(s.offset, s.key, s.image) for s in iter_shard(shard)]
    # k2 has no image (a row with image None); k3 appears twice: two samples, nothing overwritten
    assert got == [(0, "k1", b"one"), (1, "k2", None), (2, "k3", b"three"), (3, "k3", b"again")]


def test_resume_inside_a_shard_skips_exactly(tmp_path: Path) -> None:
    shard = list_shards(str(write_tar(tmp_path / "00000.tar",
                                 [(f"k{i}.jpg", bytes([i])) for i in range(10)])))[0]
    assert [s.key for s in iter_shard(shard, start=7)] == ["k7", "k8", "k9"]
    assert list(iter_shard(shard, start=10)) == []


def test_truncated_tar_ends_with_one_error_marker(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "00000.tar", [(f"k{i}.jpg", bytes(3000)) for i in range(5)])
    data = path.read_bytes()
    path.write_bytes(data[: 3584 + 512 + 700])  # cut inside the second member
    samples = list(iter_shard(list_shards(str(path))[0]))
    assert [s.key for s in samples[:-1]] == ["k0"]
    assert samples[-1].error and "truncated" in samples[-1].error and samples[-1].offset == 1
    # resuming after the marker does not report it again
    assert list(iter_shard(list_shards(str(path))[0], start=2)) == []


def test_not_a_tar_and_empty_shard(tmp_path: Path) -> None:
    (tmp_path / "00000.tar").write_bytes(b"<html>not a tar</html>" * 40)
    (tmp_path / "00001.tar").write_bytes(b"")
    write_tar(tmp_path / "00002.tar", [])
    bad, empty, no_members = list_shards(str(tmp_path))
    (marker,) = list(iter_shard(bad))
    assert marker.error and "not a tar file" in marker.error and marker.offset == 0
    assert list(iter_shard(empty)) == []
    assert list(iter_shard(no_members)) == []


def test_sample_source_is_deterministic(tmp_path: Path) -> None:
    a = list_shards("sample", sample_dir=str(tmp_path / "a"))
    b = list_shards("sample", sample_dir=str(tmp_path / "b"))
    assert [s.name for s in a] == ["00000.tar", "00001.tar", "00003.tar", "00004.tar"]
    for x, y in zip(a, b, strict=False):
        assert Path(x.url).read_bytes() == Path(y.url).read_bytes()
    hashes = [s.image_hash for shard in a for s in iter_shard(shard)]
    assert len(hashes) == 256
    assert len(set(hashes)) < len(hashes)  # it has duplicates
    assert None in hashes or any(h == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                                 for h in hashes)  # and a zero-byte member


def test_read_blocks_give_the_written_rows_hashed_in_blocks(tmp_path: Path) -> None:
    """A read task's output: the rows the test wrote into the shards (known here, not read back
    through another path of the same code), in blocks, metadata apart from bytes."""
    import hashlib

    from enrich.feeder import CHUNK_SCHEMA, assemble
    from enrich.source import read_blocks

    for n in range(3):
        write_tar(tmp_path / f"{n:05d}.tar", [(f"s{n}k{i}.jpg", bytes([n, i])) for i in range(5)])
    shards = list_shards(str(tmp_path))
    blocks = list(read_blocks(shards, start=2, block_rows=4))
    metas = [m for m, _ in blocks]
    assert [m.num_rows for m in metas] == [4, 4, 4, 1]  # 3 + 5 + 5 rows, from offset 2 of the first
    rows = [r for m in metas for r in m.to_pylist()]
    want = [(f"{n:05d}.tar", i, f"s{n}k{i}", bytes([n, i])) for n in range(3)
            for i in range(2 if n == 0 else 0, 5)]
    assert [(r["source_shard"], r["source_offset"], r["source_key"]) for r in rows] == [w[:3] for w in want]
    images = [img for _, t in blocks for img in t.column("image").to_pylist()]
    assert images == [w[3] for w in want]
    assert [r["image_hash"] for r in rows] == [hashlib.sha256(w[3]).hexdigest() for w in want]
    assert all(r["hash16"] == bytes.fromhex(r["image_hash"])[:16] for r in rows)
    # limit, and retried offsets of one shard
    assert sum(m.num_rows for m, _ in read_blocks(shards, limit=6, block_rows=4)) == 6
    only = list(read_blocks(shards[1:2], only=frozenset({4, 1})))
    assert [r["source_offset"] for r in only[0][0].to_pylist()] == [1, 4]
    # the fetch stage's join: rows 1 and 3 of block 0, row 0 of block 1, with their prepared
    # images (these bytes are no pictures: each is rejected with its own reason)
    import pyarrow as pa

    from enrich.prepare import prepare_images
    parts = [prepare_images(blocks[k][1], size=32) for k in (0, 1)]
    reasons = [r for part in parts for r in part.column("reject").to_pylist()]
    chunk = pa.table({"part": pa.array([0, 0, 1], pa.int32()), "position": pa.array([1, 3, 0], pa.int32()),
                      "source_index": pa.array([7, 8, 9], pa.int64()),
                      "status": ["pending"] * 3, "error": pa.array([None] * 3, pa.string())},
                     schema=CHUNK_SCHEMA)
    got = assemble(parts, chunk)
    assert got.column("status").to_pylist() == ["rejected"] * 3
    assert got.column("error").to_pylist() == [reasons[1], reasons[3], reasons[4]]
    assert all(reasons)
    assert got.column("source_index").to_pylist() == [7, 8, 9]


def test_listed_remote_shards_are_marked_and_downloaded_whole_whatever_their_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec (and the hub's HfFileSystem) list paths without "://": the shards must still be
    known as remote, so a read task downloads each whole (with retries) instead of reading it in
    range requests. Checked on fsspec's in-memory filesystem."""
    import io
    import tarfile

    import fsspec

    from enrich import source

    fs = fsspec.filesystem("memory")
    for n in range(4):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(f"k{n}.jpg")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        fs.pipe(f"/prefetch-test/{n:05d}.tar", buf.getvalue())
    shards = list_shards("memory://prefetch-test")
    assert [s.name for s in shards] == [f"{n:05d}.tar" for n in range(4)]
    assert all(s.remote and "://" not in s.url for s in shards)
    downloaded: list[str] = []
    real = source.read.download

    def counting(shard: source.Shard) -> bytes:
        downloaded.append(shard.name)
        return real(shard)

    monkeypatch.setattr(source.read, "download", counting)
    got = [r["source_key"] for meta, _ in source.read_blocks(shards) for r in meta.to_pylist()]
    assert got == [f"k{n}" for n in range(4)] and downloaded == [s.name for s in shards]


def test_hub_spellings_name_one_dataset() -> None:
    from enrich.source import source_spellings

    assert source_spellings("org/name")[0] == "org/name"
    assert source_spellings("hf://datasets/org/name/")[0] == "org/name"
    assert "hf://datasets/org/name" in source_spellings("org/name")
    assert source_spellings("hf://datasets/org/name/sub/*.tar") == ["hf://datasets/org/name/sub/*.tar"]
    assert source_spellings("sample") == ["sample"]


def test_parquet_image_cells_holding_paths_are_read_from_disk(tmp_path: Path) -> None:
    """What `datasets` writes for an Image column made from file paths: {bytes: None, path}. A
    local parquet's paths are read (relative ones from the parquet's folder); a path that cannot
    be read, or a row with neither bytes nor path, is a row error worded for parquet."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"relative bytes")
    (tmp_path / "b.jpg").write_bytes(b"absolute bytes")
    cells = [{"bytes": b"inline", "path": "x.jpg"}, {"bytes": None, "path": "imgs/a.jpg"},
             {"bytes": None, "path": str(tmp_path / "b.jpg")}, {"bytes": None, "path": "imgs/gone.jpg"},
             {"bytes": None, "path": None}]
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(cells, kind)}), tmp_path / "data.parquet")
    shard = list_shards(str(tmp_path / "data.parquet"))[0]
    got = list(iter_shard(shard))
    assert [(s.offset, s.image) for s in got[:3]] == [(0, b"inline"), (1, b"relative bytes"),
                                                      (2, b"absolute bytes")]
    assert all(s.error is None for s in got[:3])
    assert got[3].image is None and got[3].error.startswith(
        "image not in the parquet file and its path could not be read: parquet column 'image' holds "
        "only 'imgs/gone.jpg' (FileNotFoundError")
    assert got[4].image is None and got[4].error == "no image: parquet column 'image' is empty in this row"
    # a parquet read from a remote store: its paths name files on the machine that wrote it
    remote = list(iter_shard(dataclasses.replace(shard, remote=True)))
    assert remote[1].image is None and "holds only the path 'imgs/a.jpg' (no bytes)" in remote[1].error


def test_source_text_from_txt_json_and_a_parquet_text_column(tmp_path: Path) -> None:
    """source_text: a webdataset sample's .txt (else its .json caption), a parquet text column
    found from the schema or named by --text-column."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = list_shards(str(write_tar(tmp_path / "00000.tar", [
        ("a.jpg", b"1"), ("a.txt", "ünïcode text".encode()), ("a.json", b'{"caption": "no"}'),
        ("b.jpg", b"2"), ("b.json", json.dumps({"caption": "from json"}).encode()),
        ("c.jpg", b"3"), ("c.json", b"not json")])))[0]
    assert [s.text for s in iter_shard(shard)] == ["ünïcode text", "from json", None]

    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": b"x", "path": None}] * 2, kind),
                             "id": ["1", "2"], "caption": ["first", None]}), tmp_path / "d.parquet")
    shard = list_shards(str(tmp_path / "d.parquet"))[0]
    assert shard.text_column == "caption" and [s.text for s in iter_shard(shard)] == ["first", None]
    chosen = list_shards(str(tmp_path / "d.parquet"), text_column="id")[0]
    assert [s.text for s in iter_shard(chosen)] == ["1", "2"]
    with pytest.raises(SourceError, match="no column 'nope'.*--text-column"):
        list_shards(str(tmp_path / "d.parquet"), text_column="nope")


def test_source_text_of_an_image_folder_from_its_metadata_jsonl(tmp_path: Path) -> None:
    """The hub's image-folder convention: metadata.jsonl lines with file_name and a text field."""
    import json

    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.jpg", "sub/c.png"):
        (tmp_path / name).write_bytes(b"img")
    (tmp_path / "metadata.jsonl").write_text("\n".join([
        json.dumps({"file_name": "a.jpg", "text": "an apple"}),
        "not json", json.dumps({"file_name": "b.jpg", "score": 3})]) + "\n")
    (tmp_path / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "c.png", "caption": "a cat"}))
    shards = list_shards(str(tmp_path))
    assert [s.name for s in shards] == ["a.jpg", "b.jpg", "sub/c.png"]  # metadata files are no rows
    assert [next(iter_shard(s)).text for s in shards] == ["an apple", None, "a cat"]


def test_an_image_folder_over_fsspec_reads_as_the_same_folder_on_disk(tmp_path: Path) -> None:
    """An image folder on an object store (fsspec's in-memory filesystem here): the same names,
    order, bytes and metadata.jsonl texts as the same files read from disk, marked remote."""
    import json

    import fsspec

    files = {"a.jpg": b"img-a", "b.png": b"img-b", "sub/c.webp": b"img-c",
             "metadata.jsonl": (json.dumps({"file_name": "a.jpg", "text": "an apple"}) + "\n").encode(),
             "sub/metadata.jsonl": json.dumps({"file_name": "c.webp", "caption": "a cat"}).encode()}
    fs = fsspec.filesystem("memory")
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
        fs.pipe(f"/folder-test/{name}", data)
    local = list_shards(str(tmp_path))
    remote = list_shards("memory://folder-test")
    assert all(s.remote and s.kind == "image" for s in remote)

    def rows(shards: list) -> list:
        return [(s.name, x.key, x.image, x.image_ext, x.text) for s in shards for x in iter_shard(s)]

    assert rows(remote) == rows(local) == [
        ("a.jpg", "a", b"img-a", "jpg", "an apple"), ("b.png", "b", b"img-b", "png", None),
        ("sub/c.webp", "sub/c", b"img-c", "webp", "a cat")]


def test_a_remote_shard_that_cannot_be_read_for_good_is_one_line_naming_it() -> None:
    """A read that no retry can fix (the node has no credentials for the store, access denied)
    fails at once as a SourceError (exit 2) that names the shard and says where credentials
    must be, instead of a traceback from the read task."""
    from enrich.source.naming import Shard
    from enrich.source.read import download

    class NoCredentialsError(Exception):  # what botocore raises, by name
        pass

    calls = []

    def refuse() -> object:
        calls.append(1)
        raise NoCredentialsError("Unable to locate credentials")

    shard = Shard("00007.tar", "s3://bucket/00007.tar", refuse, remote=True)  # type: ignore[arg-type]
    with pytest.raises(SourceError) as err:
        download(shard)
    text = str(err.value)
    assert len(calls) == 1  # not retried
    assert "00007.tar" in text and "NoCredentialsError" in text and "every node" in text
    assert "\n" not in text and err.value.exit_code == 2
