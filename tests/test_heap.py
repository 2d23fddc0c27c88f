"""flowrbc.heap, checked in a fresh interpreter: a long test process's heap holds free blocks of
every size, which malloc would hand out whatever the settings."""

import subprocess
import sys
import textwrap

import pytest

from flowrbc.heap import _glibc

CHECKS = textwrap.dedent("""
    import ctypes
    import torch
    from flowrbc.heap import _glibc, keep_heap

    BLOCK = 256 << 20  # bytes, never written: above glibc's largest mmap threshold (32 MiB)

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = _glibc()
    libc.mallinfo2.restype = MallInfo2

    def mapped_alone():  # is a new tensor of BLOCK bytes a mapping of its own (glibc's default)?
        before = libc.mallinfo2().hblkhd  # bytes in blocks mapped one by one
        x = torch.empty(BLOCK // 4)
        grew = libc.mallinfo2().hblkhd - before
        del x
        return grew >= BLOCK

    assert mapped_alone(), "glibc's default"
    with keep_heap(False) as kept:
        assert not kept and mapped_alone(), "not asked: nothing changes"
    with keep_heap() as kept:
        assert kept
        with keep_heap() as inner:
            assert inner
        assert not mapped_alone(), "from the heap, also after a nested block ends"
        x = torch.empty(BLOCK // 4)
        held = libc.mallinfo2().arena  # heap bytes, x's included
        del x
        assert libc.mallinfo2().arena == held, "freed, not given back"
    assert mapped_alone(), "the defaults back, the heap's free top returned"
""")


@pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="glibc 2.33 or later only")
def test_blocks_come_from_the_heap_and_stay_there_inside_keep_heap_only():
    done = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
