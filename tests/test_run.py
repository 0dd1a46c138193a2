"""End to end on real local Ray, real tar shards and real Delta tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from enrich.schemas import CAPTIONS

from enrich.config import RunConfig, run_identity
from enrich.errors import TableError
from enrich.pipeline import run
from enrich.positions import Progress
from enrich.progress import Reporter
from enrich.sink import CaptionsTable
from tests.helpers import outcome, read_table

pytestmark = pytest.mark.usefixtures("ray_address")


def _cfg(shards: Path, tmp_path: Path, until: int, **kw: object) -> RunConfig:
    base = dict(until=until, source=str(shards), table=str(tmp_path / "t"), engine="dry-run",
                checkpoint_dir=str(tmp_path / "ck"), commit_every=25)
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


def _run(cfg: RunConfig):
    return run(cfg, reporter=Reporter(total=cfg.until, quiet=True))


def test_run_rerun_and_extend_equal_one_clean_run(shards: Path, tmp_path: Path) -> None:
    first = _run(_cfg(shards, tmp_path, 50))
    assert first.outcome == "completed" and first.committed_rows == 50
    table = read_table(str(tmp_path / "t"))
    assert table.schema.names == CAPTIONS.names
    for got, want in zip(table.schema, CAPTIONS, strict=False):
        assert got.type == want.type, got.name
    assert sorted(table.column("source_index").to_pylist()) == list(range(50))
    version = DeltaTable(str(tmp_path / "t")).version()

    again = _run(_cfg(shards, tmp_path, 50))
    assert again.outcome == "nothing to do" and again.engine_starts == 0
    assert DeltaTable(str(tmp_path / "t")).version() == version

    more = _run(_cfg(shards, tmp_path, 1000))  # more than the source holds
    assert more.committed_rows == 70
    clean = _run(_cfg(shards, tmp_path / "clean", 1000, commit_every=1000))
    assert outcome(str(tmp_path / "t")) == outcome(str(tmp_path / "clean" / "t"))
    assert len(outcome(str(tmp_path / "t"))) == 120
    done = _run(_cfg(shards, tmp_path, 5000))
    assert done.outcome.startswith("nothing to do") and clean.engine_starts == 1


def test_statuses_duplicates_and_rejections(shards: Path, tmp_path: Path) -> None:
    _run(_cfg(shards, tmp_path, 120))
    rows = read_table(str(tmp_path / "t")).to_pylist()
    by_status: dict[str, list[dict]] = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
        assert (r["caption"] is not None) == (r["status"] == "captioned")
        assert r["model"] == "dry-run" and r["caption_config"].startswith("dry-run-")
    assert set(by_status) >= {"captioned", "duplicate", "rejected"}
    captioned_hashes = {r["image_hash"] for r in by_status["captioned"]}
    for r in by_status["duplicate"]:
        assert r["image_hash"] in captioned_hashes
        assert min(x["source_index"] for x in by_status["captioned"]
                   if x["image_hash"] == r["image_hash"]) < r["source_index"]
    # the error column holds the reason alone (GROUP BY error counts reasons), the particulars
    # (PIL's byte counts) are in error_detail
    reasons = {r["error"] for r in by_status["rejected"]}
    assert reasons <= {"zero-byte image", "corrupt image data", "not an image"}, reasons
    assert all(r["error_detail"] and "truncated" in r["error_detail"]
               for r in by_status["rejected"] if r["error"] == "corrupt image data")
    assert {r["error"] for r in by_status["duplicate"]} == {"duplicate image"}
    assert all(r["image_width"] is None for r in by_status["rejected"]
               if r["error"].startswith(("zero-byte", "not an image")))
    assert all(r["caption"].startswith("dry-run: mean RGB") for r in by_status["captioned"])
    assert len(captioned_hashes) == len(by_status["captioned"])  # no image captioned twice


def test_other_caption_config_captions_everything_again(shards: Path, tmp_path: Path) -> None:
    a = _run(_cfg(shards, tmp_path, 40))
    b = _run(_cfg(shards, tmp_path, 40, prompt="Say what is in the picture."))
    assert a.plan.caption_config != b.plan.caption_config
    assert b.committed_rows == 40 and b.counts.by_status["captioned"] == a.counts.by_status["captioned"]
    assert len(read_table(str(tmp_path / "t"))) == 80


def test_failed_rows_are_retried_and_replaced(shards: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from enrich.engines import dryrun

    with monkeypatch.context() as drill:
        drill.setattr(dryrun, "DRILL", dryrun.Drill(fail_on="3,5"))
        first = _run(_cfg(shards, tmp_path, 30))
    rows = {r["source_index"]: r for r in read_table(str(tmp_path / "t")).to_pylist()}
    failed = {i for i, r in rows.items() if r["status"] == "failed"}
    assert {3, 5} <= failed and first.counts.by_status["failed"] == len(failed)
    # a later copy of a failed image shares its outcome (and is retried with it)
    assert all(rows[i]["image_hash"] in {rows[3]["image_hash"], rows[5]["image_hash"]} for i in failed)
    assert rows[3]["status"] == "failed" and rows[3]["error"] == "engine error"
    assert "injected" in rows[3]["error_detail"]
    second = _run(_cfg(shards, tmp_path, 30))
    assert second.plan.failed_to_retry == len(failed)
    after = outcome(str(tmp_path / "t"))
    assert len(after) == 30 and after[3][0] == "captioned" and after[5][0] == "captioned"
    third = _run(_cfg(shards, tmp_path, 30))
    assert third.outcome == "nothing to do"


def test_engine_starts_once_per_replica_over_many_commits(shards: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from enrich.engines import dryrun

    monkeypatch.setattr(dryrun, "DRILL", dryrun.Drill(startup_s=0.5))
    res = _run(_cfg(shards, tmp_path, 120, commit_every=8, concurrency=2))
    assert res.commits >= 10
    assert res.engine_starts == 2


def test_table_with_another_schema_is_refused(tmp_path: Path) -> None:
    write_deltalake(str(tmp_path / "other"), pa.table({"x": [1]}))
    with pytest.raises(TableError, match="another schema"):
        CaptionsTable(str(tmp_path / "other"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(TableError, match="not a Delta table"):
        CaptionsTable(str(tmp_path / "plain"))


def test_the_schema_only_grows(tmp_path: Path) -> None:
    """A table may lack columns added since it was written (nullable, at the end: the next
    write adds them); a column removed, renamed or retyped is refused, named."""
    from enrich.schemas import CAPTIONS

    # the release's tables (before source_text and error_detail), and one before error_detail
    base = pa.schema([f for f in CAPTIONS if f.name not in ("source_text", "error_detail")])
    write_deltalake(str(tmp_path / "old"), base.empty_table())
    assert CaptionsTable(str(tmp_path / "old"))._grow == ["source_text", "error_detail"]
    write_deltalake(str(tmp_path / "older"), CAPTIONS.remove(CAPTIONS.get_field_index("error_detail"))
                    .empty_table())
    assert CaptionsTable(str(tmp_path / "older"))._grow == ["error_detail"]
    renamed = base.set(base.get_field_index("caption"), pa.field("text", pa.string()))
    write_deltalake(str(tmp_path / "renamed"), renamed.empty_table())
    with pytest.raises(TableError, match=r"columns enrich does not write \(removed or renamed\?\): text"):
        CaptionsTable(str(tmp_path / "renamed"))
    retyped = CAPTIONS.set(CAPTIONS.get_field_index("source_offset"), pa.field("source_offset", pa.string()))
    write_deltalake(str(tmp_path / "retyped"), retyped.empty_table())
    with pytest.raises(TableError, match="columns of another type: source_offset"):
        CaptionsTable(str(tmp_path / "retyped"))


def test_a_retried_commit_never_lands_twice(tmp_path: Path) -> None:
    table = CaptionsTable(str(tmp_path / "t"))
    cfg = RunConfig(until=2, engine="dry-run")
    app = run_identity("src", cfg.caption)
    rows = [{"source_index": i, "source": "src", "source_shard": "00000.tar", "source_key": f"k{i}",
             "source_offset": i, "image_hash": None, "status": "rejected", "caption": None,
             "error": "zero-byte image", "model": "dry-run", "caption_config": cfg.caption.id,
             "image_width": None, "image_height": None, "num_generated_tokens": None,
             "caption_truncated": None, "run_id": "r", "enricher_version": "0",
             "created_at": __import__("datetime").datetime.now(__import__("datetime").timezone.utc)}
            for i in range(2)]
    data = pa.Table.from_pylist(rows, schema=CAPTIONS)
    progress = Progress(next_index=2, next_shard="00000.tar", next_offset=2)
    assert table.append(data, app_id=app, expect_from=0, progress=progress, metadata={})
    assert not table.append(data, app_id=app, expect_from=0, progress=progress, metadata={})
    assert len(read_table(str(tmp_path / "t"))) == 2
    assert table.progress(app) == dataclasses.replace(progress)


def test_until_far_beyond_the_source_covers_it_and_records_the_end(shards: Path, tmp_path: Path) -> None:
    res = _run(_cfg(shards, tmp_path, 10**9))
    assert res.committed_rows == 120 and res.outcome == "completed"
    progress = CaptionsTable(str(tmp_path / "t")).progress(res.plan.app_id)
    assert progress.next_index == 120 and progress.exhausted
    assert _run(_cfg(shards, tmp_path, 10**9)).outcome == "nothing to do (source exhausted)"


@pytest.mark.parametrize("first,second,legacy,kept", [
    # tables written before spellings were unified keep the spelling they started with
    ("hf://datasets/org/name", "org/name", True, "hf://datasets/org/name"),
    ("org/name", "hf://datasets/org/name/", True, "org/name"),
    # a new table takes the canonical spelling whichever one is typed
    ("hf://datasets/org/name", "org/name", False, "org/name"),
])
def test_hub_id_spellings_are_one_stream(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         first: str, second: str, legacy: bool, kept: str) -> None:
    """`ORG/NAME` and `hf://datasets/ORG/NAME` name one dataset: the second spelling continues
    the first's stream (same source string, same app id), nothing twice. The hub is stood in
    for by local shards (listing only; everything after it is the real path)."""
    import enrich.pipeline
    import enrich.source

    local = enrich.source.list_shards(str(shards))
    monkeypatch.setattr(enrich.pipeline, "list_shards", lambda source, **kw: local)
    with monkeypatch.context() as old_release:
        if legacy:  # the previous release keyed the stream by the source exactly as typed
            old_release.setattr(enrich.source, "source_spellings", lambda source: [source])
        _run(_cfg(shards, tmp_path, 40, source=first))
    result = _run(_cfg(shards, tmp_path, 90, source=second))
    assert result.committed_rows == 50
    rows = read_table(str(tmp_path / "t")).to_pylist()
    assert sorted(r["source_index"] for r in rows) == list(range(90))
    assert {r["source"] for r in rows} == {kept}
    clean = _run(_cfg(shards, tmp_path / "clean", 90))
    assert clean.committed_rows == 90
    by_index = {r["source_index"]: (r["status"], r["image_hash"]) for r in rows}
    assert by_index == {r["source_index"]: (r["status"], r["image_hash"])
                        for r in read_table(str(tmp_path / "clean" / "t")).to_pylist()}


def test_short_runs_take_smaller_chunks_so_commits_flow() -> None:
    """A run's rows go to the engine and the table chunk by chunk: a short run is cut into
    several chunks (at least 8 where a chunk keeps 64+ rows), a long one into CHUNK_ROWS."""
    from enrich.reader import CHUNK_ROWS, chunk_rows_for

    assert chunk_rows_for(1000) == 64 and 1000 / chunk_rows_for(1000) >= 8
    assert chunk_rows_for(3000) == 256  # two chunks: one 512-row engine batch
    assert chunk_rows_for(256) == 64 and chunk_rows_for(10) == 64
    assert chunk_rows_for(10**6) == CHUNK_ROWS == 512
    # whole chunks make whole engine batches (512 rows on a GPU, 64 elsewhere)
    assert all(512 % chunk_rows_for(n) == 0 for n in range(0, 10_000, 37))
    assert all(chunk_rows_for(n, 64) % 64 == 0 for n in range(0, 10_000, 37))
    # any --batch-size: a multiple of it, or a divisor from 64 up where it has one
    assert chunk_rows_for(3000, 100) == 300 and chunk_rows_for(1000, 200) == 100
    assert chunk_rows_for(1000, 509) == 125  # a prime: no divisor fits, the chunk as it comes


def test_source_text_is_each_samples_txt(shards: Path, tmp_path: Path) -> None:
    """The oracle is the tar files themselves, read here with tarfile: each row's source_text is
    its sample's .txt member (decoded as UTF-8, undecodable bytes replaced), null without one."""
    import tarfile

    res = _run(_cfg(shards, tmp_path, 120))
    assert res.committed_rows == 120
    want: dict[tuple[str, str], str] = {}
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.rpartition(".")
                f = tar.extractfile(m)
                if ext == "txt" and f is not None:
                    want.setdefault((path.name, key), f.read().decode("utf-8", errors="replace"))
    rows = read_table(str(tmp_path / "t")).to_pylist()
    assert len(rows) == 120
    got = {(r["source_shard"], r["source_key"]): r["source_text"] for r in rows if r["source_key"]}
    assert got == {k: want.get(k) for k in got}
    assert sum(v is not None for v in got.values()) > 60


def test_feeder_calls_ride_out_a_moment_of_actor_unavailability(ray_address: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray says an actor is "temporarily unavailable" (seen once on a loaded machine, right after
    the feeder started): the driver's calls to the feeder are repeated, and a repeated put of a
    chunk the fetch stage already took changes nothing (it would hold a slot of the bounded
    feeder for ever)."""
    import ray

    from enrich.feeder import RELEASED, call_feeder, make_feeder_class
    from enrich.retry import Policy

    monkeypatch.setattr("enrich.retry.ACTOR", Policy(retries=4, base_s=0.01))

    class Flaky:
        def __init__(self, fails: int) -> None:
            self.fails, self.calls = fails, 0

        def remote(self, *args: object) -> object:
            self.calls += 1
            if self.calls <= self.fails:
                raise ray.exceptions.ActorUnavailableError("connection refused", None)
            return ray.put(args)

    method = Flaky(2)
    assert call_feeder(method, 1, 2) == (1, 2) and method.calls == 3
    with pytest.raises(ray.exceptions.ActorUnavailableError):
        call_feeder(Flaky(99), 1)

    feeder = make_feeder_class().remote(1)  # room for one chunk
    try:
        ray.get(feeder.put.remote(0, ["parts", "rows"]))
        assert ray.get(feeder.take.remote(0)) == [["parts", "rows"]]
        ray.get(feeder.put.remote(0, ["parts", "rows"]), timeout=10)  # repeated after the take
        ray.get(feeder.release.remote(0))
        ray.get(feeder.put.remote(0, ["parts", "rows"]), timeout=10)  # repeated after the release
        ray.get(feeder.put.remote(1, ["parts", "rows"]), timeout=10)  # the slot is free
        assert ray.get(feeder.take.remote(0)) == RELEASED
        assert ray.get(feeder.take.remote(1)) == [["parts", "rows"]]
    finally:
        ray.kill(feeder)
