"""glibc malloc settings for a process that runs the engine on the CPU.

By default glibc serves large allocations (above a threshold that adapts between 128 KiB and
32 MiB to what the process freed) with fresh pages from the kernel and hands freed memory back
at once, so the decoder's large intermediate tensors can page-fault again on every frame:
~8,000 minor faults per SAOM-small frame in our runs, 4-16% of its time on a 2-core CPU. Keeping freed memory in the heap removes them; the
process then holds the memory of its largest frame, as a caching allocator would.
"""
from __future__ import annotations

import ctypes

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The largest mmap threshold glibc accepts on 64-bit systems: larger allocations still get
# their own pages (the engine reuses its full-size buffers, the largest, between frames).
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept instead of returned to the kernel (mallopt's int).
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Serve allocations up to MMAP_THRESHOLD from the heap and keep freed memory there, for
    the whole process. True when applied; False where the C library has no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # The mmap threshold first: fixing only the trim threshold also freezes the adaptive mmap
    # threshold at 128 KiB, which made a frame 2x slower.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
