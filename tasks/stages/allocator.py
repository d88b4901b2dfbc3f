"""Worker-process memory allocator settings (glibc ``malloc``).

Model inference on the CPU allocates and frees the same few large tensors
over and over: a SAM decoder call makes ~10 temporaries of 4-8 MB per chunk of
boxes. glibc serves allocations above ``M_MMAP_THRESHOLD`` (adaptive, 128 KiB
up to 32 MiB) with a fresh ``mmap`` and gives them back on ``free``, and trims
the heap's top above ``M_TRIM_THRESHOLD``; either way the next tensor starts on
pages the kernel has to fault in and zero, so CPU inference page-faults on
most large temporaries (figures: bench/README.md, "Design measurements").

:func:`keep_freed_memory` fixes both thresholds for the process (the same
effect as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or a
jemalloc/tcmalloc preload, which PyTorch's CPU tuning guide recommends):
blocks up to 32 MiB come from the heap, and freed memory stays mapped for the
next tensor. The price is a resident size that stays at the worker's peak
instead of shrinking between images -- memory the next image needs anyway.

Shard workers call it once (``runtime.malloc_tuning``, default on). It does
nothing off glibc (macOS, musl), and never fails a run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

__all__ = ["keep_freed_memory", "is_applied", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

log = logging.getLogger(__name__)

#: glibc's largest allowed mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are always mmapped.
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept for reuse before glibc returns it to the system.
TRIM_THRESHOLD = 1 << 30

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_state: dict[str, bool] = {}
_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version  # present only in glibc
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once). Returns whether they are set."""
    with _lock:
        if "applied" not in _state:
            libc = _glibc()
            ok = (
                bool(libc)
                and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            )
            if not ok:
                log.debug("malloc tuning not applied (not glibc, or mallopt refused)")
            _state["applied"] = ok
        return _state["applied"]


def is_applied() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _state.get("applied", False)
