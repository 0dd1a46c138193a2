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


def test_remote_shards_are_prefetched_in_order(tmp_path: Path) -> None:
    from enrich.source import Shard, prefetched

    for n in range(6):
        write_tar(tmp_path / f"{n:05d}.tar", [(f"s{n}k{i}.jpg", bytes([n, i])) for i in range(3)])
    local = list_shards(str(tmp_path))
    opened: list[str] = []

    def remote(shard):  # an fsspec-like URL, opened through the shard's own opener
        def _open():
            opened.append(shard.name)
            return shard.open()
        return Shard(shard.name, "memory://" + shard.url, _open, remote=True)

    shards = [remote(s) for s in local]
    got = [(s.shard, s.key) for shard in prefetched(shards, ahead=3) for s in iter_shard(shard)]
    assert got == [(s.shard, s.key) for shard in local for s in iter_shard(shard)]
    assert sorted(opened) == [s.name for s in local]
    # stopping early does not hang and does not read everything
    opened.clear()
    first = next(iter(prefetched(shards, ahead=2)))
    assert first.name == "00000.tar" and len(opened) <= 3


def test_listed_remote_shards_are_marked_and_prefetched_whatever_their_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec (and the hub's HfFileSystem) list paths without "://": the shards must still be
    downloaded ahead. Checked on fsspec's in-memory filesystem."""
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
    real = source._download

    def counting(shard: source.Shard) -> bytes:
        downloaded.append(shard.name)
        return real(shard)

    monkeypatch.setattr(source, "_download", counting)
    got = [s.key for shard in source.prefetched(shards, ahead=2) for s in iter_shard(shard)]
    assert got == [f"k{n}" for n in range(4)] and sorted(downloaded) == [s.name for s in shards]


def test_hub_spellings_name_one_dataset() -> None:
    from enrich.source import source_spellings

    assert source_spellings("org/name")[0] == "org/name"
    assert source_spellings("hf://datasets/org/name/")[0] == "org/name"
    assert "hf://datasets/org/name" in source_spellings("org/name")
    assert source_spellings("hf://datasets/org/name/sub/*.tar") == ["hf://datasets/org/name/sub/*.tar"]
    assert source_spellings("sample") == ["sample"]
