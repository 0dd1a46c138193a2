"""The Python API: what the command line does, for notebooks and scripts.

    import enrich
    result = enrich.run(until=200, source="sample", table="./captions", engine="dry-run")
    result.committed_rows, result.counts.by_status, result.commits, result.run_id
    enrich.status("./captions")          # what `enrich status` shows, as data

Settings are the long flags' names with underscores (``max_tokens=100``, ``ray_address=...``);
the environment (``ENRICH_*``) and a settings file apply as they do for the command line, and
flags given here win. Errors are enrich's exception classes (:mod:`enrich.errors`), each with
the exit code the command line would use. Nothing is printed unless ``progress=True``. A Ray
that the run started is shut down when it returns; a Ray already running is left as it was.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enrich.pipeline import RunResult


def run(*, until: int, source: str | None = None, table: str | None = None,
        engine: str | None = None, config: str | None = None, progress: bool = False,
        **settings: Any) -> RunResult:
    """Caption the first ``until`` rows of ``source`` into ``table``; safe to call again."""
    from enrich.settings import resolve

    flags = {"until": until, "source": source, "table": table, "engine": engine, **settings}
    cfg = resolve({k: v for k, v in flags.items() if v is not None}, config_file=config)

    import ray

    from enrich.pipeline import run as run_pipeline
    from enrich.progress import Reporter

    ours = not ray.is_initialized()
    reporter = Reporter(total=cfg.until, quiet=not progress, stream=sys.stderr)
    try:
        return run_pipeline(cfg, reporter=reporter)
    finally:
        reporter.close()
        if ours and ray.is_initialized():
            ray.shutdown()


def status(table: str, checkpoint_dir: str = "./checkpoints") -> dict[str, Any]:
    """Where ``table`` stands: rows by source, caption config and status; resume positions;
    recent runs (from ``checkpoint_dir``); the table version and file count."""
    from enrich.ops import status_info

    return status_info(table, checkpoint_dir)
