"""The warm worker's anonymous memory goes into huge pages; nothing else is touched."""

from __future__ import annotations

import os
import sys

import pytest

from fedsqueeze.deploy.accelerated.huge_pages import anonymous_regions, collapse_anonymous_memory

HUGE = 2 << 20
MAPS = """\
00400000-00401000 r-xp 00000000 fd:00 123 /usr/bin/python3.11
01000000-01a00000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000500000 rw-p 00000000 00:00 0
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
7f0000800000-7f0000c00000 rw-s 00000000 00:05 77 /dev/shm/x
7f0000c00000-7f0001000000 rw-p 00001000 fd:00 456 /usr/lib/libtorch_cpu.so
7f0001000000-7f0001400000 r--p 00000000 00:00 0
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0 [stack]
"""


def test_only_private_writable_anonymous_memory_in_whole_huge_pages_is_chosen():
    assert anonymous_regions(MAPS, HUGE) == [
        (0x01000000, 0x00a00000 // HUGE * HUGE),  # the heap, trimmed to whole huge pages
        (0x7f0000000000, 2 * HUGE),                 # 5 MB of anonymous memory: 2 huge pages
    ]  # under one huge page, shared, file-backed, read-only and the stack: left alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_collapsing_keeps_the_memory_and_its_contents():
    import mmap

    region = mmap.mmap(-1, 8 * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region[:] = os.urandom(1 << 16) * (8 * HUGE >> 16)
    before = bytes(region[:1 << 20])
    collapsed = collapse_anonymous_memory()
    assert collapsed >= 0 and bytes(region[:1 << 20]) == before
    region.close()
