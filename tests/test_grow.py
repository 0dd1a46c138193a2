"""A source that grows between runs (issue 18): files added after the last one read are
captioned by the next run with the same --until; files that appear before it are named in a
warning and left alone (numbering them would renumber the table); a rerun with nothing new is
answered without starting Ray."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import enrich
from tests.conftest import cli
from tests.helpers import outcome, read_table, said


def _args(src: Path, table: Path, work: Path, ray_address: str) -> list[str]:
    return ["--until", "1000", "--source", str(src), "--table", str(table), "--engine", "dry-run",
            "--checkpoint-dir", str(work / "ck"), "--quiet", "--ray-address", ray_address]


def test_a_grown_source_is_continued_and_earlier_additions_are_named(
        shards: Path, tmp_path: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert len(names) == 4
    src = tmp_path / "src"
    src.mkdir()
    for name in names[:3]:
        shutil.copy(shards / name, src / name)
    table = tmp_path / "t"
    res = cli(*_args(src, table, tmp_path, ray_address))
    assert res.returncode == 0, said(res.stderr)
    first = outcome(str(table))
    assert [p["exhausted"] for p in enrich.status(str(table))["resume_positions"]] == [True]

    shutil.copy(shards / names[3], src / names[3])  # a fourth shard, after the last one read
    res = cli(*_args(src, table, tmp_path, ray_address))
    assert res.returncode == 0, said(res.stderr)
    grown = outcome(str(table))
    # the oracle: one run over all four shards from the start, into a fresh table
    clean = tmp_path / "clean"
    res = cli(*_args(shards, clean, tmp_path / "c", ray_address))
    assert res.returncode == 0, said(res.stderr)
    assert {i: v[:2] for i, v in grown.items()} == {i: v[:2] for i, v in outcome(str(clean)).items()}
    assert len(grown) > len(first) and all(grown[i] == first[i] for i in first)

    # a file that sorts before the last one read: named, not captioned, nothing renumbered
    early = names[0].replace(".tar", "a.tar")  # e.g. 00000a.tar, between 00000 and 00001
    shutil.copy(shards / names[3], src / early)
    before = read_table(str(table)).num_rows

    def no_ray(*_: object, **__: object) -> None:
        raise AssertionError("Ray was started for a source with nothing new")

    monkeypatch.setattr("enrich.pipeline.init_ray", no_ray)
    with caplog.at_level(logging.WARNING, logger="enrich.pipeline"):
        result = enrich.run(until=1000, source=str(src), table=str(table), engine="dry-run",
                            checkpoint_dir=str(tmp_path / "ck"))
    assert result.outcome == "nothing to do (source exhausted)" and result.committed_rows == 0
    assert read_table(str(table)).num_rows == before
    assert any(f"1 file(s) of the source sort before {names[3]!r}" in r.getMessage()
               and early in r.getMessage() for r in caplog.records), caplog.text
