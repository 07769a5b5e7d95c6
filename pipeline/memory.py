"""Give freed heap memory back to the operating system, on glibc.

In: nothing. Out: :func:`release_free_memory`, called between batches by the
stages that stream large inputs.

Why: glibc's malloc raises its mmap threshold as large blocks are freed (up to 32
MiB), so the 16 MiB text chunks and the batches that follow them end up on the heap,
where freed pages stay resident. Over a long run the process's resident memory then
creeps up with the input's size although no more than a few batches are alive. A
``malloc_trim(0)`` between batches returns those pages (a few ms each time), and keeps
peak memory flat as the input grows. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_memory() -> None:
    """Return free heap pages to the OS (``malloc_trim(0)``) where glibc offers it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
