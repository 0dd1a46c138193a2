"""Domain errors. The CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: str) -> str:
    """Library errors (delta-rs, object stores) come with newlines and colour codes: fold them."""
    return " ".join(_ANSI.sub("", text).replace("↳", " ").split())


_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")


def clip(text: str, limit: int = 300) -> str:
    """A library's message, folded to one line and cut at a word (not mid-word) with "…" when
    longer than ``limit``; the hub's request ids (noise to a reader) are dropped."""
    text = one_line(_REQUEST_ID.sub("", text))
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" .,;:") + " …"


class Terminated(KeyboardInterrupt):
    """SIGTERM to a run (``kill``, ``timeout``, a service manager): an interruption like Ctrl-C,
    so the journal says "interrupted"; the CLI exits 143."""


class EnrichError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(EnrichError):
    """A bad flag, value or target: nothing was written."""

    exit_code = 2


class SourceError(UsageError):
    """The source cannot be listed or opened at all."""


class TableError(UsageError):
    """The --table is not a captions table (not Delta, or another schema)."""


class NoAcceleratorError(UsageError):
    """The cluster has no node with the requested GPU type: Ray would wait forever."""


class SourceUnavailableError(EnrichError):
    """The source exists but stayed unreachable (5xx, 429, resets, timeouts) through every retry.
    Rows committed before are safe; run again later."""

    exit_code = 5


class RunLockedError(EnrichError):
    """Another enrich run holds the table for this source and caption config."""

    exit_code = 3


class CommitError(EnrichError):
    """Writing to the table failed after retries. Rows committed before are safe; rerun."""

    exit_code = 4


class TableUnreachableError(CommitError):
    """The table's storage did not answer (connection refused, timeouts, 5xx): an outage, not a
    wrong --table. Rows committed before are safe; run again when the store is back."""


def store_error(exc: BaseException) -> str:
    """An object-store error in a few words: its client (object_store, through delta-rs and
    obstore) prints a page of debug structure after the first sentence."""
    text = one_line(str(exc))
    cut = min((i for i in (text.find(" Debug source"), text.find(" - HTTP error")) if i > 0),
              default=len(text))
    tail = next((s for s in ("Connection refused", "timed out", "dns error", "Service Unavailable")
                 if s.lower() in text.lower()[cut:]), "")
    return (text[:min(cut, 240)] + (f" ... {tail}" if tail else "")).strip()


def cannot_write(folder: str) -> str | None:
    """Why nothing can be written in ``folder`` (missing, not a folder, read-only), or None:
    found by creating and removing a scratch file there."""
    import os
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".enrich-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None
