"""Give freed heap memory back to the operating system, on glibc.

In: nothing. Out: :func:`release_free_memory`; :func:`trimmed`, which wraps a stream
of batches so that the heap each batch leaves free is returned before the next one
(the spill reader and ingest's join passes stream through it); and
:func:`heap_reused_while_streaming`, around ingest's reading of a file (its chunks
reuse freed heap instead of faulting in fresh pages; see there).

Why: glibc's malloc raises its mmap threshold as large blocks are freed (up to 32
MiB), so the 16 MiB text chunks and the batches that follow them end up on the heap,
where freed pages stay resident. Over a long run the process's resident memory then
creeps up with the input's size although no more than a few batches are alive. A
``malloc_trim(0)`` between batches returns those pages (a few ms each time), and keeps
peak memory flat as the input grows. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


@functools.cache
def _libc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    if not library:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _malloc_trim() -> Callable[..., int] | None:
    return _libc_function("malloc_trim", ctypes.c_size_t)


# mallopt parameters (glibc's malloc.h) and glibc's defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
# What glibc's dynamic mmap threshold grows to at most on 64-bit systems.
_MMAP_THRESHOLD = 32 << 20


def release_free_memory() -> None:
    """Return free heap pages to the OS (``malloc_trim(0)``) where glibc offers it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trimmed(items: Iterable[T]) -> Iterator[T]:
    """``items``, with :func:`release_free_memory` after the consumer is done with each one."""
    for item in items:
        yield item
        release_free_memory()


@contextlib.contextmanager
def heap_reused_while_streaming(keep_bytes: int = 128 << 20) -> Iterator[None]:
    """Let freed heap memory be reused instead of returned while a stage streams a file.

    A streaming reader allocates and frees a 16 MiB chunk (and a few copies of it) per
    step. With glibc's defaults each one is either a fresh ``mmap`` or lands at the top
    of the heap and is trimmed on free: either way the next chunk faults its pages in
    again (in ingest of a 1.86 GiB file: 460,000 page faults, 175,000 inside this). Inside this block allocations
    under 32 MiB come from the heap (the ceiling glibc's own adaptive threshold reaches)
    and up to ``keep_bytes`` of free memory stays on top of it for the next chunk;
    afterwards the trim threshold is glibc's default again and the free pages are
    returned. Peak memory grows by at most ``keep_bytes``, not with the input. Does
    nothing off glibc.
    """
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    try:
        yield
    finally:
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        release_free_memory()
