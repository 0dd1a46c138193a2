"""Opening a source's files, and the retries of every remote read (listing, reading, downloading
a shard) under ``retry.READ``: transient errors retried; what is left is SourceUnavailableError
(exit 5); a source that does not exist, SourceError (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, TypeVar

from enrich.errors import SourceError, SourceUnavailableError, clip
from enrich.retry import READ, Retries, call, is_missing, read_transient
from enrich.source.naming import is_hub_id

_T = TypeVar("_T")


def unavailable(what: str, exc: BaseException, attempts: int) -> SourceUnavailableError:
    return SourceUnavailableError(f"{what}: still failing after {attempts} tries "
                                  f"({type(exc).__name__}: {clip(str(exc))}); rows "
                                  "committed so far are safe, run the same command again later")


def unreadable(what: str, exc: BaseException) -> SourceError:
    """A read that failed for good, not for a passing fault (no credentials, access denied, a
    file gone since the listing): one line naming the file (exit 2). Read tasks run on the Ray
    cluster's nodes, which must hold the source's credentials themselves: enrich does not send
    secrets along with its tasks."""
    hint = ""
    if "credential" in type(exc).__name__.lower() or isinstance(exc, PermissionError):
        hint = ("; every node of the Ray cluster needs the source's credentials in its own "
                "environment or configuration")
    return SourceError(f"{what} ({type(exc).__name__}: {clip(str(exc))}){hint}; rows "
                       "committed so far are safe")


def read_retries(what: str) -> Retries:
    """The retries of one remote read that the caller loops over itself (``wait`` after each
    transient failure, see ``retry.read_transient``)."""
    return Retries(what, READ, lambda exc, n: unavailable(what, exc, n))


def retried_read(what: str, once: Callable[[], _T], failed: Callable[[BaseException], BaseException]) -> _T:
    """``once()`` under the read retries: transient failures retried, then SourceUnavailableError
    (exit 5); any other failure at once as ``failed(exc)``."""

    def give_up(exc: BaseException, attempts: int) -> BaseException:
        return unavailable(what, exc, attempts) if read_transient(exc) else failed(exc)

    return call(once, what=what, policy=READ, transient=read_transient,  # type: ignore[return-value]
                give_up=give_up)


def listing(shown: str, list_once: Callable[[], _T]) -> _T:
    """``list_once()`` under the read retries; a source that does not exist or cannot be listed
    is a SourceError naming ``shown`` (the spelling the user typed)."""

    def failed(exc: BaseException) -> BaseException:
        if isinstance(exc, SourceError):
            return exc
        if is_missing(exc):
            hint = ("; check the id's spelling, and HF_TOKEN for a private or gated dataset"
                    if is_hub_id(shown) or shown.startswith("hf://") else "")
            return SourceError(f"--source {shown!r}: not found ({type(exc).__name__}: "
                               f"{clip(str(exc), 160)}){hint}")
        return SourceError(f"--source {shown!r}: cannot list shards ({type(exc).__name__}: "
                           f"{clip(str(exc))})")

    return retried_read(f"--source {shown!r}: listing shards", list_once, failed)


def opener_local(path: str) -> Callable[[], IO[bytes]]:
    def _open() -> IO[bytes]:
        return open(path, "rb")

    return _open


def opener_fs(fs: Any, path: str) -> Callable[[], IO[bytes]]:
    return lambda: fs.open(path, "rb", block_size=8 * 1024 * 1024)
