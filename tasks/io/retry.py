"""Retries that know the difference between a busy store and a wrong request.

Transient (retried with exponential backoff and jitter): throttling (503
SlowDown), 5xx server errors, request timeouts, connection resets and
refusals, ``EBUSY``/``EAGAIN``. Permanent (raised at once): missing objects
(404), permission and credential errors (403), invalid requests, anything else.

s3fs and botocore already retry throttling a few times; this is the outer
layer that decides what a shard or an image does when those retries run out.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["is_transient", "retry_call", "RetryPolicy"]

T = TypeVar("T")

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_TRANSIENT_ERRNOS = {
    errno.EBUSY,
    errno.EAGAIN,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
}
_TRANSIENT_NAMES = {
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ConnectionAbortedError",
    "TimeoutError",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "ClientOSError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "IncompleteRead",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same request again later can succeed."""
    for e in _chain(exc):
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return True
            if code or status:
                return False
        if type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        text = str(e)
        if any(
            s in text
            for s in ("SlowDown", "Please reduce your request rate", "503 Service Unavailable", "Connection reset")
        ):
            return True
    return False


class RetryPolicy:
    """``tries`` attempts with backoff ``base * 2**k`` (capped at ``cap``) and full jitter."""

    def __init__(self, tries: int = 5, base: float = 0.2, cap: float = 10.0):
        self.tries, self.base, self.cap = max(1, tries), base, cap

    def delays(self):
        for k in range(self.tries - 1):
            yield random.uniform(0, min(self.cap, self.base * (2**k)))


def retry_call(
    fn: Callable[[], T], policy: RetryPolicy | None = None, on_retry: Callable[[int, BaseException], None] | None = None
) -> T:
    """Call ``fn``; retry transient failures per ``policy``; raise permanent ones at once."""
    policy = policy or RetryPolicy()
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(attempt, e)
            time.sleep(delay)
