"""Tables written by an earlier release resume exactly under today's code: same numbering, no row
twice, the stream keyed by the spelling the table started with. The tables in
tests/legacy/a01d7b2/ were written by the release before issue 11 (tests/legacy/make_tables.py
says how); that release keyed `org/name` and `hf://datasets/org/name` as two streams."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.fake_hub import serve
from tests.helpers import outcome, read_table, said

LEGACY = Path(__file__).parent / "legacy" / "a01d7b2"
HUB_ENV = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}


def args(table: Path, ck: Path, source: str, until: int, ray_address: str) -> list[str]:
    return ["--until", str(until), "--source", source, "--table", str(table), "--engine",
            "dry-run", "--checkpoint-dir", str(ck), "--quiet", "--commit-every", "10",
            "--ray-address", ray_address]


@pytest.fixture(scope="module")
def clean(shards: Path, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Today's code from scratch to 90 rows: the local sample, and the hub's shards read from disk."""
    work = tmp_path_factory.mktemp("legacy-clean")
    out = {}
    for name, source in (("sample", "sample"), ("hub", str(shards))):
        res = cli(*args(work / name, work / "ck", source, 90, ray_address))
        assert res.returncode == 0, said(res.stderr)
        out[name] = outcome(str(work / name))
        clean_tables[name] = work / name
    return out


clean_tables: dict[str, Path] = {}  # the clean fixture's tables, by name


def pq_columns(table: Path) -> list[str]:
    """The columns of a table as its files hold them (not as today's code would read them)."""
    import pyarrow.parquet as pq

    return pq.read_schema(next(table.glob("*.parquet"))).names


@pytest.mark.parametrize(("table", "typed", "kept"), [
    ("sample", "sample", "sample"),
    ("hub-id", "org/name", "org/name"),
    ("hub-id", "hf://datasets/org/name", "org/name"),
    ("hub-url", "hf://datasets/org/name", "hf://datasets/org/name"),
    ("hub-url", "org/name", "hf://datasets/org/name"),
])
def test_release_table_resumes_exactly(table: str, typed: str, kept: str, shards: Path,
                                       ray_address: str, clean: dict, tmp_path: Path) -> None:
    t = tmp_path / "t"
    shutil.copytree(LEGACY / table, t)
    before = outcome(str(t))
    assert sorted(before) == list(range(45))
    hub = serve(shards, "org/name") if table != "sample" else nullcontext(("", None))
    with hub as (url, _):
        env = {"HF_ENDPOINT": url, **HUB_ENV} if url else None
        res = cli(*args(t, tmp_path / "ck", typed, 90, ray_address), env=env)
    assert res.returncode == 0, said(res.stderr)
    after = outcome(str(t))  # asserts no source_index twice
    assert sorted(after) == list(range(90))
    assert {i: after[i] for i in before} == before  # the release's rows untouched
    want = clean["sample" if table == "sample" else "hub"]
    assert {i: v[:2] for i, v in after.items()} == {i: v[:2] for i, v in want.items()}
    rows = read_table(str(t))
    assert set(rows.column("source").to_pylist()) == {kept}
    # the schema grew: the release's rows read source_text as null, today's carry the source's
    # text (the sample's and these shards' .txt members), as a fresh table's do
    assert "source_text" not in pq_columns(LEGACY / table) and "source_text" in rows.column_names
    text = dict(zip(rows.column("source_index").to_pylist(), rows.column("source_text").to_pylist(),
                    strict=True))
    assert all(text[i] is None for i in before)
    fresh = read_table(str(clean_tables["sample" if table == "sample" else "hub"]))
    want_text = dict(zip(fresh.column("source_index").to_pylist(),
                         fresh.column("source_text").to_pylist(), strict=True))
    assert {i: text[i] for i in range(45, 90)} == {i: want_text[i] for i in range(45, 90)}
    assert any(want_text[i] for i in range(45, 90))
