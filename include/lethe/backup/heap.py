"""A backup worker's heap: few malloc arenas, and freed memory handed back to the system.

glibc gives each thread that allocates its own arena (up to 8 per core) and keeps what is freed in it
for reuse: four rewrite threads, each reading and writing Parquet a row group at a time, held three
times the memory they ever used at once (bench/memory.py: 1,514 MiB against 484 MiB with two arenas,
one erasure propagated at 100k users). Elsewhere than glibc, both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import pyarrow as pa

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
ARENAS = 2
# Allocations from this size on get pages of their own, given back when freed. glibc's default threshold
# rises to the largest block freed (up to 32 MiB), and a night at 1M users then held 92-173 MiB freed in the
# arenas at its peak (mallinfo2); 25-45 MiB with this. 4 MiB held about 100 MiB; the page faults of 1 MiB
# cost an incremental night at 1M users 14 s of system time (of 100 s of CPU)
MMAP_THRESHOLD = 1 << 20


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def few_arenas(*, fixed_mmap: bool = False) -> None:
    """Threads started from now on share ARENAS arenas (call before starting them), and Arrow allocates
    from the same heap (its own pool keeps what it freed too). `fixed_mmap` (an incremental night, which needs it:
    a base without it peaked 503 MiB at 1M users) fixes the mmap threshold at MMAP_THRESHOLD for the rest of the
    process (glibc does not let it rise again); a full export does without: 437-448 MiB at 1M users, and the
    threshold cost it ~9 s of 75 (BENCHMARKS.md)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, ARENAS)
        if fixed_mmap:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)  # fixed too: the rising threshold had raised it
        pa.set_memory_pool(pa.system_memory_pool())


def give_back() -> None:
    """Return the free memory at the top and inside every arena to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
