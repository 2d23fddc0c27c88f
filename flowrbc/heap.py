"""Freed CPU tensor memory kept in the process while a model trains (glibc's malloc).

By default glibc serves a block above its mmap threshold (128 KiB, rising to at most 32 MiB as
such blocks are freed) by a mapping of its own, unmapped when freed, and gives the heap's free
top back to the system beyond 128 KiB. A CPU training step at the papers' sizes (B 64, N 1,000,
width 128: 31 MiB per activation) allocates and frees hundreds of such blocks, so the next
step writes into fresh pages: one page fault per 4 KiB. Measured on a 2-core AMD EPYC (two
threads, float32, B 64, N 1,000, 8 steps per run, two runs per model): 24,000 to 256,000 faults
per step and steps of one run from 3.1 to 4.6 s. With the heap kept: no faults once the heap has
grown; 28 of 32 steps within 5 % of their run's median (three of the others while the heap
grew); the medians 4-15 % shorter (Deep Sets++ 25, Set Transformer++ 8); the peak resident set
within 0.12 GB of the default's.

``keep_heap()`` is a context manager: inside it every block comes from the heap and freed
memory stays there for the next step (``mallopt``: ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` -1,
which the manual gives as "never trim"), as torch's caching allocator does on CUDA. On exit the
defaults are put back (``M_MMAP_MAX`` 65,536, ``M_TRIM_THRESHOLD`` 128 KiB) and the heap's free
memory is returned (``malloc_trim``): all of it where the heap is one contiguous region; where
glibc had to extend it by mappings, the kept top stays with the process as free heap that later
allocations reuse. Elsewhere than glibc (macOS, musl) it changes nothing.

Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65_536  # glibc's defaults
_open, _kept = 0, False  # keep_heap blocks open now; whether glibc took the outermost one's settings


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's own symbols where its C library is glibc (mallopt, malloc_trim), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_heap(enabled: bool = True) -> Iterator[bool]:
    """Keep freed memory on the heap inside the block (see the module docstring); yields whether
    it does (False: not asked, or not glibc). Nested blocks keep it until the outermost ends."""
    global _open, _kept
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    if _open == 0:
        _kept = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    _open += 1
    try:
        yield _kept
    finally:
        _open -= 1
        if _open == 0:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
