"""Back a process's anonymous memory with transparent huge pages before it forks children.

Forking copies the parent's page tables and exiting frees the child's, so both cost in
proportion to the pages mapped: for a warm worker that imported torch (about 1 GB resident,
470 MB anonymous) a fork took 15 ms of the parent's CPU and an empty child's exit 18 ms, and
a ClientApp child that trained one fc2 epoch used 0.227 CPU-s. With the anonymous memory in
2 MB pages (one page-table entry where there were 512), the same fork took 4.4 ms, and the
training child 0.148 CPU-s (fewer page-table copies and TLB misses; a child's write still
copies only the 4 KB it touches: its page faults stayed at about 5,200). Measured with
`madvise(MADV_COLLAPSE)` on Linux 6.18, 2-core VM.

Linux only: `MADV_HUGEPAGE` marks each private anonymous region (and the heap) of at least one
huge page, and `MADV_COLLAPSE` (Linux >= 6.1) rebuilds it in huge pages now rather than
whenever khugepaged gets to it. Where either is refused (another kernel, THP off) the memory
stays as it was: the worker is as correct, only slower to fork.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

MADV_HUGEPAGE = 14
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
        if libc.madvise(start, length, MADV_HUGEPAGE) != 0:
            continue
        if libc.madvise(start, length, MADV_COLLAPSE) == 0:
            collapsed += length
    return collapsed
