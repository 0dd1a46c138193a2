"""enrich: caption a streamed image dataset with a VLM on Ray, into a Delta table, exactly once.

Importing this package is light: Ray, vllm and torch are imported only where a run needs them.
The Python API is :func:`run` and :func:`status` (see :mod:`enrich.api`); errors are the classes
of :mod:`enrich.errors`, importable from here.
"""

from typing import Any

from enrich.errors import (
    CommitError,
    EnrichError,
    NoAcceleratorError,
    RunLockedError,
    SourceError,
    SourceUnavailableError,
    TableError,
    UsageError,
)

__version__ = "0.1.0"


def run(**kwargs: Any) -> Any:
    """Caption rows into a table: see :func:`enrich.api.run`."""
    from enrich.api import run as _run

    return _run(**kwargs)


def status(table: str, checkpoint_dir: str = "./checkpoints") -> dict[str, Any]:
    """Where a table stands: see :func:`enrich.api.status`."""
    from enrich.api import status as _status

    return _status(table, checkpoint_dir)


__all__ = ["CommitError", "EnrichError", "NoAcceleratorError", "RunLockedError", "SourceError",
           "SourceUnavailableError", "TableError", "UsageError", "run", "status"]
