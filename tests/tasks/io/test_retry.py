import errno

import pytest
from botocore.exceptions import ClientError

from segflow.tasks.io.retry import RetryPolicy, is_transient, retry_call


def client_error(code, status):
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    "exc,transient",
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchKey", 404), False),
        (OSError(errno.EBUSY, "Resource busy"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError("read timed out"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("denied"), False),
        (ValueError("bad config"), False),
    ],
)
def test_classification(exc, transient):
    assert is_transient(exc) is transient


def test_wrapped_errors_are_classified_by_their_cause():
    try:
        try:
            raise client_error("SlowDown", 503)
        except ClientError as inner:
            raise OSError("s3 call failed") from inner
    except OSError as outer:
        assert is_transient(outer)


def test_retry_call_retries_transient_then_succeeds_and_stops_on_permanent():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "busy")
        return "ok"

    assert retry_call(flaky, RetryPolicy(tries=5, base=0.001)) == "ok" and len(calls) == 3

    def denied():
        calls.append(2)
        raise PermissionError("403")

    calls.clear()
    with pytest.raises(PermissionError):
        retry_call(denied, RetryPolicy(tries=5, base=0.001))
    assert calls == [2]

    def always_busy():
        calls.append(3)
        raise OSError(errno.EBUSY, "busy")

    calls.clear()
    with pytest.raises(OSError):
        retry_call(always_busy, RetryPolicy(tries=4, base=0.001))
    assert len(calls) == 4
