"""Progress reporting from shard work to whoever is watching (the CLI's progress bar).

Shard code calls :func:`advance`; the CLI installs a reporter with
:func:`set_reporter`. Without one (deployed workers), nothing happens here and
progress is visible in Prefect's task states and logs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["set_reporter", "advance"]

_reporter: Callable[..., None] | None = None
_lock = threading.Lock()


def set_reporter(fn: Callable[..., None] | None) -> None:
    global _reporter
    _reporter = fn


def advance(*, images: int = 0, masks: int = 0, failed: int = 0, shards: int = 0) -> None:
    fn = _reporter
    if fn is not None:
        with _lock:
            fn(images=images, masks=masks, failed=failed, shards=shards)
