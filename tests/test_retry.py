"""The one retry policy (enrich.retry) that source reads and table commits share."""

from __future__ import annotations

import logging

import pytest

from enrich import retry
from enrich.retry import Policy, backoff, call, commit_transient, read_transient

FAST = Policy(retries=3, base_s=0.001, max_s=0.01)


class Status(Exception):
    def __init__(self, code: int, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {code}")
        self.response = type("R", (), {"status_code": code,
                                        "headers": {"Retry-After": retry_after} if retry_after else {}})()


def test_transient_failures_are_retried_up_to_the_policy_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "done"

    with caplog.at_level(logging.WARNING, logger="enrich.retry"):
        assert call(flaky, what="reading x", policy=FAST, transient=read_transient,
                    give_up=lambda e, n: RuntimeError(f"gave up after {n}")) == "done"
    assert len(calls) == 3
    # one line when the retries begin, not one per retry
    assert [r.getMessage() for r in caplog.records].count(
        "reading x failed (ConnectionResetError: reset by peer); retrying, up to 3 times") == 1

    calls.clear()

    def down() -> None:
        calls.append(1)
        raise Status(503)

    with pytest.raises(RuntimeError, match="gave up after 4") as info:
        call(down, what="y", policy=FAST, transient=read_transient,
             give_up=lambda e, n: RuntimeError(f"gave up after {n}"))
    assert len(calls) == 4 and isinstance(info.value.__cause__, Status)


def test_a_failure_that_is_not_transient_is_not_retried() -> None:
    calls: list[int] = []

    def missing() -> None:
        calls.append(1)
        raise Status(404)

    with pytest.raises(Status):  # give_up may keep the error as it is
        call(missing, what="z", policy=FAST, transient=read_transient, give_up=lambda e, n: e)
    assert calls == [1]


def test_a_retry_is_skipped_when_the_failed_attempt_landed() -> None:
    calls: list[int] = []

    def commit() -> str:
        calls.append(1)
        raise OSError("connection reset")  # the answer was lost, the commit landed

    assert call(commit, what="commit", policy=FAST, transient=commit_transient,
                give_up=lambda e, n: e, before_retry=lambda: True) is None
    assert calls == [1]


def test_backoff_doubles_with_jitter_honours_retry_after_and_is_capped() -> None:
    p = Policy(retries=5, base_s=1.0, max_s=30.0)
    for attempt in (1, 2, 3):
        for _ in range(50):
            assert 0.5 * 2 ** (attempt - 1) <= backoff(p, attempt) < 1.5 * 2 ** (attempt - 1)
    assert backoff(p, 10) == 30.0
    assert backoff(p, 1, Status(429, "7")) == 7.0


def test_what_is_transient_is_named_once() -> None:
    assert read_transient(Status(503)) and read_transient(Status(429)) and read_transient(TimeoutError())
    assert not read_transient(Status(404)) and not read_transient(FileNotFoundError("x"))
    assert not read_transient(ValueError("bad bytes"))
    # s3fs's client (botocore): a store that does not answer is transient, no credentials is not
    import botocore.exceptions as botocore  # a test requirement (boto3): never a quiet skip
    assert read_transient(botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert read_transient(botocore.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"))
    assert not read_transient(botocore.NoCredentialsError())
    assert commit_transient(OSError("io")) and not commit_transient(PermissionError("ro"))
    assert not commit_transient(OSError("Read-only file system"))
    assert retry.unreachable(OSError("tcp connect error: Connection refused"))
    assert not retry.unreachable(OSError("disk full"))
