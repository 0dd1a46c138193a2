"""The run: source → skip → prepare → engine → sink, as one streaming Ray Data pipeline.

Who does what, and why:

* **Read tasks** (reader.py, source/read.py) read and hash the shards, as many at once as the cluster
  has CPUs; the **driver** takes only their small metadata tables, numbers the rows in canonical
  order and decides skips, because numbering and first-occurrence are sequential facts.
  Duplicates never leave the driver; image bytes never enter it. The rest goes out in chunks.
* A **feeder** actor (feeder.py) hands chunk ``j`` to whichever Ray task asks for it; the dataset is
  ``chunks → fetch → prepare → engine``, built once per run, so the engine's replicas
  (and the model) start once however many commits follow. ``preserve_order`` keeps rows in
  source order, so the driver can commit a contiguous prefix with its resume position.
* The driver **commits** (committer.py) every ``commit_every`` rows or ``commit_seconds``; Ray keeps executing
  meanwhile, so the GPUs are not idle during a commit.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from enrich.committer import Committer
from enrich.config import RunConfig
from enrich.engines.base import Engine
from enrich.errors import UsageError
from enrich.feeder import MAX_RANGE_BLOCKS, Chunk, FetchChunks, Handoff
from enrich.journal import Journal, Outcome
from enrich.plan import Plan, make_plan
from enrich.progress import Counts, Flow, Reporter
from enrich.ray_setup import configure_data_context, init_ray, probe_ray
from enrich.reader import CHUNK_ROWS, Reader, ReadSettings, chunk_rows_for
from enrich.settings import source_env_from_env, storage_options_from_env
from enrich.sink import CaptionsTable
from enrich.skip import SkipIndex
from enrich.source import Shard, list_shards
from enrich.stderr_filter import without_known_ray_lines

log = logging.getLogger(__name__)

MIN_ROWS_IN_FLIGHT = 4096  # rows read ahead of the committer on a small machine

@dataclass
class RunResult:
    run_id: str
    counts: Counts
    committed_rows: int
    commits: int
    seconds: float
    engine_starts: int | None
    outcome: Outcome
    plan: Plan
    # seconds after the start when the first engine rows reached the driver and when the first
    # of them were committed: the time to the first row, split where enrich can act on it
    milestones: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the plan (with its Arrow tables) is left out: one short line
        return (f"RunResult(run_id={self.run_id!r}, outcome={self.outcome.value!r}, "
                f"committed_rows={self.committed_rows}, counts={self.counts.by_status}, "
                f"commits={self.commits}, seconds={self.seconds:.1f})")


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------
def chunks_in_flight(cfg: RunConfig, cpus: float, engine_batches: int,
                     chunk_rows: int = CHUNK_ROWS) -> int:
    """How many chunks may be between the reader and the committer: enough to keep every engine
    replica's queue full (``engine_batches`` batches in flight per replica) plus a read task's
    block on every CPU (twice over: one being read and prepared, one waiting for the engine)."""
    engine_rows = cfg.replicas * cfg.engine_batch_size * engine_batches
    read_rows = max(MIN_ROWS_IN_FLIGHT, 2 * math.ceil(cpus) * chunk_rows)
    return math.ceil((read_rows + engine_rows) / chunk_rows)


def _follow(plan: Plan, shards: list[Shard], table: CaptionsTable, warn: bool = False) -> Plan:
    """The plan against the source as listed now: a source that grew after the last file read
    is continued; files that appeared before it are named (once) and left alone."""
    read = (lambda: table.shards_read(plan.source, plan.caption_config)) if warn else None
    plan, unread = plan.follow([s.name for s in shards], read)
    if unread:
        log.warning("%d file(s) of the source sort before %r, the last one read, and have no rows "
                    "in the table (added after it was read?): they are not captioned, since numbering "
                    "them would renumber the table; first: %s", len(unread),
                    plan.progress.next_shard, ", ".join(unread[:3]))
    return plan


@dataclass
class RunContext:
    """One run's fixed parts, as every step of it sees them."""

    cfg: RunConfig
    table: CaptionsTable
    run_id: str
    started: float  # time.time() at the start: the one rate is counted from here
    reporter: Reporter
    counts: Counts = field(default_factory=Counts)
    flow: Flow = field(default_factory=Flow)

    def result(self, outcome: Outcome, plan: Plan) -> RunResult:
        """A run that captioned nothing."""
        return RunResult(self.run_id, self.counts, 0, 0, time.time() - self.started, 0, outcome,
                         plan)


def run(cfg: RunConfig, *, reporter: Reporter | None = None) -> RunResult:
    """Run the enricher to ``cfg.until``. Safe to kill at any moment and run again."""
    run = RunContext(cfg, CaptionsTable(cfg.table, storage_options=storage_options_from_env()),
                     f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
                     time.time(), reporter or Reporter(total=cfg.until))
    plan = make_plan(cfg, run.table)
    if plan.nothing_to_do and not plan.progress.exhausted:
        # --until is covered: answered from the Delta log alone, no source listing, no Ray
        run.reporter.start(plan)
        return run.result(Outcome.NOTHING_TO_DO, plan)
    shards = list_shards(cfg.source, image_column=cfg.image_column, text_column=cfg.text_column,
                         subset=cfg.subset,
                         split=cfg.split)  # a bad source fails here, before anything is written
    plan = _follow(plan, shards, run.table, warn=True)
    if plan.nothing_to_do:  # exhausted, and no file after the last one read: still no Ray
        run.reporter.start(plan)
        return run.result(Outcome.EXHAUSTED, plan)
    from enrich.engines import make_engine

    journal = Journal(cfg, run.run_id, plan, started=run.started)
    journal.check_writable()
    engine = make_engine(cfg, starts_dir=journal.engine_dir)
    # before Ray starts: a table in use is answered at once
    with run.table.lock(ttl_s=cfg.lock_ttl, run_id=run.run_id):
        if cfg.ray_address:
            probe_ray(cfg.ray_address)
        # From the journal's first line to its last, one try: whatever fails, it says so.
        journal.write(Outcome.RUNNING, run.counts)
        try:
            result = _run_locked(run, journal, engine, shards)
            if result.engine_starts is None:
                result.engine_starts = journal.engine_starts()
        except KeyboardInterrupt:
            journal.write(Outcome.INTERRUPTED, run.counts)
            raise
        except BaseException as exc:
            if isinstance(exc, UsageError) and not run.counts.total:
                journal.discard()  # refused before a row was read (no GPU): nothing left behind
            else:
                journal.write(Outcome.FAILED, run.counts, error=f"{type(exc).__name__}: {exc}")
            raise
        journal.write(result.outcome, run.counts, result)
        return result


def _run_locked(run: RunContext, journal: Journal, engine: Engine,
                shards: list[Shard]) -> RunResult:
    """The run, under the table's lock: Ray, the plan again, the reader, the pipeline."""
    cfg, reporter = run.cfg, run.reporter
    reporter.start(journal.plan, run.started)
    reporter.running(run.flow)  # the live line from here on, whatever Ray takes to start
    reporter.update(run.counts, phase="starting Ray")
    init_ray(cfg)
    ray_started_s = round(time.time() - run.started, 1)
    engine.check_cluster()  # no GPU for the model: fail now, before anything is written
    # the plan again under the lock: another run may have moved it
    plan = journal.plan = _follow(make_plan(cfg, run.table), shards, run.table)
    reporter.total = plan.rows_to_do + plan.failed_to_retry
    reporter.update(run.counts, phase="starting the engine")
    if plan.nothing_to_do:
        return run.result(Outcome.NOTHING_TO_DO, plan)
    skip = SkipIndex.from_arrow(run.table.captioned_hashes(plan.caption_config))
    import ray

    settings = ReadSettings(
        image_size=cfg.image_size, read_cpus=engine.read_cpus(),
        chunk_rows=chunk_rows_for(max(0, cfg.until - plan.progress.next_index) + plan.failed_to_retry,
                                  cfg.engine_batch_size),
        parallel=max(1, int(ray.cluster_resources().get("CPU", 2))),  # the cluster's CPUs
        # Only remote sources need the driver's settings; forwarding them costs a worker pool
        # of their own (a runtime_env), i.e. seconds of start-up.
        env=source_env_from_env() if any(s.remote for s in shards) else None)
    reader = Reader(shards, plan.progress, cfg.until, skip, plan.retry_rows, settings)
    # The first chunk is read by the feed thread while Ray Data starts the engine's actors
    # (reading it first kept the actors waiting ~2 s on a 2-core VM), so a source that yields
    # no row at all is known only once the pipeline ran empty: rare (the listing said rows
    # were left), and then the actors started for nothing.
    with without_known_ray_lines():  # Ray Data's actors start here, and Ray says so on fd 2
        result = _execute(run, plan, engine, settings, reader.chunks())
    result.milestones["ray_started_s"] = ray_started_s
    return result


def _execute(run: RunContext, plan: Plan, engine: Engine, settings: ReadSettings,
             chunks: Generator[Chunk, None, bool]) -> RunResult:
    """The streaming pipeline from the first chunk to the last commit."""
    cfg, table, counts, flow, reporter = run.cfg, run.table, run.counts, run.flow, run.reporter
    run_id, started = run.run_id, run.started
    import ray
    import ray.data

    configure_data_context()

    chunk_rows = settings.chunk_rows
    # every chunk but the last of each stream holds chunk_rows source rows
    n_chunks = math.ceil(plan.failed_to_retry / chunk_rows) + math.ceil(
        max(0, cfg.until - plan.progress.next_index) / chunk_rows) + 2
    per_block = max(1, math.ceil(n_chunks / MAX_RANGE_BLOCKS))
    handoff = Handoff(f"enrich-feeder-{run_id}",
                      chunks_in_flight(cfg, settings.parallel, engine.batches_in_flight, chunk_rows),
                      chunks, flow)
    committer = Committer(cfg, table, plan, run_id, counts)
    milestones: dict[str, Any] = {}
    retry_indices = set(plan.retry_rows.column("source_index").to_pylist())

    # The chunk numbers, as blocks made here rather than by read tasks: `ray.data.range` runs
    # read tasks of 1 CPU each, which cannot start once the engine's actors hold the CPUs.
    ds: ray.data.Dataset = ray.data.from_items([{"id": j} for j in range(n_chunks)],
                             override_num_blocks=math.ceil(n_chunks / per_block))
    ds = ds.map_batches(FetchChunks, fn_constructor_kwargs={"feeder_name": handoff.name},
                        # waiting on the feeder and joining small tables is all it does: no CPU
                        # reserved (on 2 cores a reserved slot would starve the read tasks,
                        # which prepare the images: actors keep their CPUs)
                        batch_size=None, batch_format="numpy", num_cpus=0,
                        compute=ray.data.ActorPoolStrategy(size=1))
    ds = engine.apply(ds)

    handoff.start()
    try:
        batch: pa.Table
        # No prefetch: Ray Data's prefetching iterator (2.60) waits for the *next* output block
        # before it yields one, so every batch reached the table one engine batch late (~4.6 s
        # for the first rows on an H200). The blocks are small caption tables, fetched when used.
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None,  # type: ignore[assignment]
                                     prefetch_batches=0):
            if "first_rows_back_s" not in milestones and batch.num_rows:
                index = batch.column("source_index")
                milestones["first_rows_back_s"] = round(time.time() - started, 1)
                milestones["first_rows_back"] = f"{index[0]}..{index[-1]}"
            committer.take(handoff.take_decided())  # the batch's rows' metadata is in it
            committer.accept(batch, retry_indices)
            handoff.received(batch.num_rows)
            committer.maybe_commit()
            flow.committed = committer.committed
            reporter.update(counts)
        # a source that failed mid-run: its error, once the rows before it are in
        exhausted = handoff.finish()
        committer.take(handoff.take_decided())
        committer.maybe_commit(final=True, exhausted=exhausted)
        flow.committed = committer.committed
    finally:
        handoff.close()
    if handoff.first_chunk_at is None:  # the source had no row left after all
        return run.result(Outcome.EXHAUSTED, plan)
    milestones["first_chunk_s"] = round(handoff.first_chunk_at - started, 1)
    reporter.update(counts, phase="done")
    if committer.first_commit_at is not None:
        milestones["first_commit_s"] = round(committer.first_commit_at - started, 1)
    return RunResult(run_id, counts, committer.committed, committer.commits,
                     time.time() - started, None, Outcome.COMPLETED, plan,
                     milestones)
