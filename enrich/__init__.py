"""enrich: caption a streamed image dataset with a VLM on Ray, into a Delta table, exactly once.

Importing this package is light: Ray, vllm and torch are imported only where a run needs them.
The Python API is :func:`run` and :func:`status` (see :mod:`enrich.api`); errors are the classes
of :mod:`enrich.errors`, importable from here.
"""

from enrich.api import run, status
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

__all__ = ["CommitError", "EnrichError", "NoAcceleratorError", "RunLockedError", "SourceError",
           "SourceUnavailableError", "TableError", "UsageError", "run", "status"]
