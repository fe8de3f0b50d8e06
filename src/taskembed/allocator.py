"""glibc malloc settings for CPU inference.

PyTorch has no caching allocator on CPU: every activation is a fresh malloc. glibc serves blocks above its
mmap threshold (adaptive, at most 32 MiB) straight from mmap and unmaps them on free, and it trims the free
top of the heap back to the OS, so every forward pass pays the page faults of its large activations again
(the int8 kernels, which allocate quantised copies of their inputs, most of all). Raising both thresholds
keeps freed blocks in the heap for the next batch, as jemalloc or tcmalloc under LD_PRELOAD would. On the
bundled model, medium texts, one thread: int8 5.2 -> 3.1 s, fp32 7.3 -> 5.6 s (benchmarks/encode_speed.py
measures it against the same baseline, both ways). The price: up to `keep_bytes` x 2 of freed memory stays
with the process instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
DISABLE_ENV = "TASKEMBED_MALLOC_TUNING"  # "0": leave the C allocator as it is
_done: bool | None = None


def tune_cpu_allocator(keep_bytes: int = 256 << 20) -> bool:
    """Raise glibc's mmap threshold to `keep_bytes` and its trim threshold to twice that, once per process.

    Returns whether the settings are in force: False off Linux/glibc, or when TASKEMBED_MALLOC_TUNING=0.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(DISABLE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError off glibc (musl has mallopt too)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(int(keep_bytes), (1 << 30) - 1)
    _done = bool(mallopt(_M_MMAP_THRESHOLD, keep)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * keep))
    return _done


def limit_arenas(n: int = 1) -> bool:
    """At most `n` glibc arenas; call before other threads start. Whether the setting took.

    glibc gives each thread that allocates its own arena, and trimming leaves each arena's scattered live
    blocks holding pages: a server's event loop, worker and tokenising threads then hold tens of MiB more
    after a load than one shared heap does. Off with TASKEMBED_MALLOC_TUNING=0, like the thresholds.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, n))


def trim_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim); whether any went back.

    The thresholds above keep freed activations for the next batch, which is right while batches keep
    coming; a server calls this when its queue has been idle a moment, so memory returns to its resting size.
    """
    try:
        libc = ctypes.CDLL(None)
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(malloc_trim(0))
