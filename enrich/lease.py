"""The run lock of a table on an object store (S3, GCS, Azure): a lease object beside the table.

A local table is locked with ``flock`` (``sink.CaptionsTable.lock``): the OS drops it when the
process dies. An object store has no such lock, so a run holds a lease instead:

- **acquire**: ``_enrich.lease`` is created with a conditional put (create only if absent). If
  it exists and has not expired, the run is refused at once, naming the holder.
- **renew**: the holder rewrites it every third of ``ttl`` with a version-matched put (only if
  the object is still the one it wrote), moving the expiry forward.
- **take over**: a lease whose holder stopped renewing (SIGKILL, a lost node) is replaced once its
  expiry has passed, again with a version-matched put: of two waiters, one wins, the other is
  refused.
- **lost**: a holder whose renewal finds the lease replaced (it stalled past the ttl) has lost
  it; ``check`` then refuses its next commit.

Conditional puts are object_store's (the Rust crate delta-rs uses), through ``obstore``; the
store is configured from the environment as delta-rs configures its own (``AWS_*``, ...).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from enrich.errors import RunLockedError, TableError, store_error

log = logging.getLogger(__name__)

LEASE_KEY = "_enrich.lease"
DEFAULT_TTL_S = 120.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (epoch seconds)."""

    host: str
    pid: int
    run_id: str
    since: float
    expires: float

    def to_bytes(self) -> bytes:
        d = asdict(self)
        if d["expires"] == float("inf"):
            d["expires"] = None  # a local flock: no expiry (JSON has no infinity)
        return json.dumps(d).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            expires = float("inf") if d["expires"] is None else float(d["expires"])
            return cls(str(d["host"]), int(d["pid"]), str(d["run_id"]), float(d["since"]), expires)
        except (ValueError, KeyError, TypeError):
            return None  # not ours, or half-written by hand: treated as expired

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        left = self.expires - now
        when = ("held until that process ends" if left == float("inf") else
                f"expires in {left:.0f} s unless renewed" if left >= 0 else f"expired {-left:.0f} s ago")
        return f"host {self.host}, pid {self.pid}, run {self.run_id}, since {since}, {when}"


def refusal(uri: str, holder: Holder | None, now: float) -> RunLockedError:
    who = holder.describe(now) if holder else "holder unknown"
    return RunLockedError(f"--table {uri!r} is in use by another enrich process ({who}); "
                          "try again when it ends")


class ObjectStoreLease:
    """The lease on one table. Use :meth:`hold` (a context manager)."""

    def __init__(self, uri: str, *, ttl_s: float = DEFAULT_TTL_S, run_id: str = "",
                 store: Any = None) -> None:
        self.uri = uri.rstrip("/")
        self.ttl_s = ttl_s
        self.run_id = run_id or f"pid-{os.getpid()}"
        self._store = store
        self._etag: str | None = None
        self._since = time.time()
        self.lost: str | None = None
        self._stop = threading.Event()

    @property
    def store(self) -> Any:
        if self._store is None:
            from obstore.store import from_url

            self._store = from_url(self.uri)  # credentials and endpoint from the environment
        return self._store

    def _mine(self, now: float) -> Holder:
        return Holder(socket.gethostname(), os.getpid(), self.run_id, self._since, now + self.ttl_s)

    def _read(self) -> tuple[Holder | None, str | None]:
        import obstore

        try:
            got = obstore.get(self.store, LEASE_KEY)
        except FileNotFoundError:
            return None, None
        return Holder.from_bytes(bytes(got.bytes())), got.meta["e_tag"]

    def acquire(self, *, wait: bool = False, poll_s: float = 2.0) -> None:
        """Take the lease, or raise :class:`RunLockedError` naming its live holder (``wait``:
        poll until it is free)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        while True:
            now = time.time()
            self._since = now
            try:
                self._etag = obstore.put(self.store, LEASE_KEY, self._mine(now).to_bytes(),
                                         mode="create")["e_tag"]
                return
            except AlreadyExistsError:
                pass
            holder, etag = self._read()
            if etag is not None and (holder is None or holder.expires < now):
                try:  # take over the expired lease, only if nobody else did first
                    self._etag = obstore.put(self.store, LEASE_KEY, self._mine(now).to_bytes(),
                                             mode={"e_tag": etag})["e_tag"]
                    log.warning("took over the run lease of %s: %s", self.uri,
                                holder.describe(now) if holder else "unreadable lease")
                    return
                except PreconditionError:
                    holder, _ = self._read()
            if not wait:
                raise refusal(self.uri, holder, time.time())
            time.sleep(poll_s)

    def renew(self) -> bool:
        """Move the expiry forward; False (and :attr:`lost` set) if the lease was replaced."""
        import obstore
        from obstore.exceptions import PreconditionError

        if self._etag is None or self.lost:
            return False
        try:
            self._etag = obstore.put(self.store, LEASE_KEY, self._mine(time.time()).to_bytes(),
                                     mode={"e_tag": self._etag})["e_tag"]
            return True
        except (PreconditionError, FileNotFoundError):
            holder, _ = self._read()
            self.lost = (f"the run lease of {self.uri} was taken over "
                         f"({holder.describe(time.time()) if holder else 'holder unknown'})")
            return False

    def check(self) -> None:
        """Before a commit: refuse it if this run no longer holds the lease."""
        if self.lost:
            raise RunLockedError(self.lost + "; this run stops before committing more rows")

    def release(self) -> None:
        import obstore

        holder, etag = self._read()
        if etag is not None and etag == self._etag:
            obstore.delete(self.store, LEASE_KEY)
        self._etag = None

    def _renew_loop(self) -> None:
        failing = False  # one warning when renewals start failing, as retry.Retries does
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
                failing = False
            except Exception as exc:  # noqa: BLE001 - a store hiccup: the next renewal retries
                if not failing:
                    log.warning("could not renew the run lease of %s: %s", self.uri, store_error(exc))
                failing = True

    @contextmanager
    def hold(self, *, wait: bool = False) -> Iterator[ObjectStoreLease]:
        self.acquire(wait=wait)
        self._stop.clear()
        renewer = threading.Thread(target=self._renew_loop, name="enrich-lease", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join(timeout=5)
            try:
                self.release()
            except Exception as exc:  # noqa: BLE001 - it expires by itself after the ttl
                log.warning("could not release the run lease of %s (it expires in %.0f s): %s",
                            self.uri, self.ttl_s, store_error(exc))


@contextmanager
def local_lock(uri: str, path: str, *, run_id: str = "", wait: bool = False) -> Iterator[None]:
    """The run lock of a local table at ``path``: an ``flock`` on ``_enrich.lock`` in its folder,
    which the OS drops when the process dies, SIGKILL included."""
    created = not os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, "_enrich.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TableError(f"--table {uri!r} cannot be written: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            # the OS holds this lock until the holder's process ends: no expiry (inf)
            raise refusal(uri, Holder.from_bytes(os.pread(fd, 1000, 0)), time.time()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder(socket.gethostname(), os.getpid(), run_id or f"pid-{os.getpid()}",
                             time.time(), float("inf")).to_bytes(), 0)
        yield
    finally:
        # A folder made only to hold the lock (the run stopped before creating the table)
        # is removed again: a failed start leaves nothing behind.
        if created and os.listdir(path) == ["_enrich.lock"]:
            os.unlink(os.path.join(path, "_enrich.lock"))
            os.rmdir(path)
        os.close(fd)
