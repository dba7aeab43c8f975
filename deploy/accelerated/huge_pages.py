"""Back a process's anonymous memory with transparent huge pages before it forks children.

Forking copies the parent's page tables and exiting frees the child's, so both cost in
proportion to the pages mapped: for a warm worker that imported torch (about 1 GB resident,
470 MB anonymous) a fork took 11-15 ms of the parent's CPU and an empty child's exit 12-18
ms. With 400 MB of the anonymous memory in 2 MB pages (one page-table entry where there were
512), a fork took 4.2 ms and an empty child 6.2 ms; a child that trained one fc2 epoch used
0.214 instead of 0.227 CPU-s, with the same page faults (its writes still copy 4 KB each).
Measured with `madvise(MADV_COLLAPSE)`, Linux 6.18, 2-core VM.

Only memory that exists is collapsed (`MADV_COLLAPSE`, Linux >= 6.1, works whatever the
system's THP setting short of "never"); the regions are not marked `MADV_HUGEPAGE`, so what
the children allocate later stays in 4 KB pages (marked regions made every child fault in
fresh 2 MB pages, zeroed and compacted on demand: slower on a loaded, fragmented box). Where
the kernel refuses, the memory stays as it was: the worker is as correct, only slower to
fork. Linux only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

MADV_COLLAPSE = 25
THP_SIZE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")


def _huge_page_size() -> int:
    try:
        return int(THP_SIZE.read_text())
    except (OSError, ValueError):
        return 2 << 20


def anonymous_regions(maps: str, huge: int) -> list[tuple[int, int]]:
    """(start, length) of the private, writable, anonymous regions (and the heap) of
    /proc/<pid>/maps text, trimmed to whole huge pages; regions smaller than one are left out."""
    regions = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        span, perms, inode = fields[0], fields[1], fields[4]
        path = fields[5] if len(fields) > 5 else ""
        if not perms.startswith("rw") or perms[3] != "p" or inode != "0":
            continue
        if path and path != "[heap]":
            continue
        low, high = (int(x, 16) for x in span.split("-"))
        start, end = -(-low // huge) * huge, high // huge * huge
        if end - start >= huge:
            regions.append((start, end - start))
    return regions


def collapse_anonymous_memory() -> int:
    """Put this process's anonymous memory in huge pages; returns the bytes collapsed now
    (0 off Linux, or where the kernel refuses)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    collapsed = 0
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    for start, length in anonymous_regions(maps, _huge_page_size()):
        if libc.madvise(start, length, MADV_COLLAPSE) == 0:
            collapsed += length
    return collapsed
