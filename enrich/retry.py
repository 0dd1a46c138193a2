"""One retry policy for every call that can fail for a while: reading the source (listing, shard
reads, downloads) and writing the table (commits and the look before them).

- **What is transient is named here once**: :func:`read_transient` for sources (HTTP statuses, the
  hub client's transport errors, OSError), :func:`commit_transient` for the table (Delta commit
  conflicts and storage errors), :func:`unreachable` for an object store that is not answering,
  :func:`actor_transient` for enrich's own Ray actors.
- **How long to wait**: exponential backoff with jitter, capped, honouring a server's
  ``Retry-After``; a bounded number of retries per :class:`Policy`.
- **What is said**: one warning line when an operation's retries begin, none per retry.
- **What is left** after the retries is the caller's ``give_up(exc, attempts)`` error: a worded
  ``SourceUnavailableError`` (exit 5) for sources, ``CommitError``/``TableUnreachableError`` for
  the table.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from enrich.errors import CommitError, EnrichError, TableUnreachableError, store_error

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    retries: int  # tries after the first
    base_s: float  # the first wait; doubled each time, times a jitter in [0.5, 1.5)
    max_s: float = 30.0  # no single wait longer


# Source reads: the hub and object stores throttle and reset for seconds at a time.
READ = Policy(retries=4, base_s=1.0)
# Table commits: conflicts with a compaction, a passing storage error.
COMMIT = Policy(retries=4, base_s=0.2)
# Calls to enrich's own Ray actors that Ray could not deliver for a moment.
ACTOR = Policy(retries=4, base_s=0.5)


def backoff(policy: Policy, attempt: int, exc: BaseException | None = None) -> float:
    """The wait before retry number ``attempt`` (1-based)."""
    wait = policy.base_s * 2 ** (attempt - 1) * (0.5 + random.random())
    return min(policy.max_s, max(_retry_after(exc), wait))


def _retry_after(exc: BaseException | None) -> float:
    response = getattr(exc, "response", None)
    after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(after) if after is not None else 0.0
    except ValueError:
        return 0.0


class Retries:
    """One operation's retries. After each transient failure call :meth:`wait`: it sleeps before
    the next try, or raises ``give_up(exc, attempts)`` when no retry is left."""

    def __init__(self, what: str, policy: Policy,
                 give_up: Callable[[BaseException, int], BaseException]) -> None:
        self.what, self.policy, self.give_up = what, policy, give_up
        self.attempt = 0

    def wait(self, exc: BaseException) -> None:
        self.attempt += 1
        if self.attempt > self.policy.retries:
            _raise(self.give_up(exc, self.attempt), exc)
        if self.attempt == 1:  # one line when the retries begin: an outage's errors differ in
            # their details (timings, paths) from one try to the next
            log.warning("%s failed (%s: %s); retrying, up to %d times", self.what,
                        type(exc).__name__, store_error(exc)[:300], self.policy.retries)
        time.sleep(backoff(self.policy, self.attempt, exc))


def call(fn: Callable[[], T], *, what: str, policy: Policy,
         transient: Callable[[BaseException], bool],
         give_up: Callable[[BaseException, int], BaseException],
         before_retry: Callable[[], bool] | None = None) -> T | None:
    """Run ``fn``, retrying its transient failures. A failure that is not transient, or is left
    after the retries, raises ``give_up(exc, attempts)``. ``before_retry`` runs before each retry
    and returns True when the failed attempt turns out to have done the work (a commit that
    landed although its answer was lost): then ``fn`` is not run again and None is returned."""
    retries = Retries(what, policy, give_up)
    while True:
        if retries.attempt and before_retry is not None and before_retry():
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - sorted: transient ones retried, others given up
            if not transient(exc):
                _raise(give_up(exc, retries.attempt + 1), exc)
            retries.wait(exc)


def _raise(err: BaseException, cause: BaseException) -> None:
    if err is cause:  # give_up kept the error as it was (already worded)
        raise err
    raise err from cause


# --------------------------------------------------------------------------------------------
# Sources. The hub client raises HfHubHTTPError for HTTP statuses and its HTTP library's
# TransportError (resets, protocol errors, timeouts), neither of which is an OSError; object
# stores raise OSError subclasses.
# --------------------------------------------------------------------------------------------
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


def is_missing(exc: BaseException) -> bool:
    """The source (repo, revision, file) does not exist, or may not be read: retrying cannot help."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
                         "GatedRepoError", "FileNotFoundError", "PermissionError"}) or \
        _status(exc) in (401, 403, 404)


def read_transient(exc: BaseException) -> bool:
    # HF_HUB_OFFLINE=1 makes the hub client refuse every request: deliberate, not transient.
    if is_missing(exc) or type(exc).__name__ == "OfflineModeIsEnabled":
        return False
    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    # httpx's (and huggingface_hub's httpx2's) resets, protocol errors and timeouts, by name:
    # the hub client has used more than one HTTP library. botocore's (s3fs) connection errors
    # and timeouts derive from its own ConnectionError / HTTPClientError, not from OSError.
    if {cls.__name__ for cls in type(exc).__mro__} & {"TransportError", "TimeoutException",
                                                      "ConnectionError", "HTTPClientError"}:
        return True
    return isinstance(exc, OSError | TimeoutError)


# --------------------------------------------------------------------------------------------
# The table. What an object store's client says when the store is not there or not answering
# (object_store wraps them in its own errors, after its own retries): an outage, never a wrong
# --table.
# --------------------------------------------------------------------------------------------
_UNREACHABLE = ("connection refused", "tcp connect error", "timed out", "timeout", "dns error",
                "name or service not known", "connection reset", "connection closed",
                "broken pipe", "error sending request", "incomplete message",
                "service unavailable", "503", "502", "504")


def unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in _UNREACHABLE)


def commit_transient(exc: BaseException) -> bool:
    """What a commit may retry: conflicts and passing storage errors, never schema or usage."""
    from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError

    if isinstance(exc, TableUnreachableError | CommitFailedError):
        return True
    if isinstance(exc, SchemaMismatchError | PermissionError):
        return False
    text = str(exc).lower()
    if "permission" in text or "not permitted" in text or "read-only file system" in text:
        return False  # retrying cannot fix it: fail now, with the cause
    return isinstance(exc, OSError | DeltaError)


# --------------------------------------------------------------------------------------------
# enrich's own Ray actors. Ray raises ActorUnavailableError for an actor it cannot reach for a
# moment ("may be available later"; seen once on a loaded 2-core machine: connection refused
# right after the feeder actor started), the call may or may not have run: only calls that are
# safe to repeat may be retried on it.
# --------------------------------------------------------------------------------------------
def actor_transient(exc: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError

    return isinstance(exc, ActorUnavailableError)


def _give_up(what: str) -> Callable[[BaseException, int], BaseException]:
    """A commit's error once retrying is over: ours as they are (a lost race, an unreachable
    store), an object store that is not answering as an outage, anything else a CommitError."""
    def give_up(exc: BaseException, attempts: int) -> BaseException:
        if isinstance(exc, EnrichError):
            return exc
        cls = TableUnreachableError if unreachable(exc) else CommitError
        return cls(f"{what} failed: {type(exc).__name__}: {store_error(exc)}")

    return give_up


def commit(fn: Callable[[], T], *, what: str, before_retry: Callable[[], bool] | None = None) -> T | None:
    """``fn``, a step of a table commit, under the commit policy (``COMMIT``): an error once
    retrying is over is ours as it is, an unreachable store's TableUnreachableError, else a
    CommitError."""
    return call(fn, what=what, policy=COMMIT, transient=commit_transient,
                give_up=_give_up(what), before_retry=before_retry)
