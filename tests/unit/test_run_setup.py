"""Shared run set-up: the CPU allocator setting."""

import platform
import resource

import pytest
import torch

from pluralign.train.setup import reuse_freed_memory

PAGE = resource.getpagesize()


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_blocks_are_reused_without_new_page_faults():
    """Freed 64 MiB blocks (above glibc's mmap threshold) are reused by later allocations of that
    size instead of being mapped and page-faulted again: without the setting every fill below
    faults in all 16384 pages of its block, 5 blocks' worth in 5 rounds. (The heap grows over the first
    rounds, and a stray small allocation can make it grow once more, hence the margin.)"""
    assert reuse_freed_memory()
    size = 64 << 20
    for _ in range(2):
        block = torch.empty(size, dtype=torch.uint8)
        block.fill_(1)
        del block
    before = _page_faults()
    for _ in range(5):
        block = torch.empty(size, dtype=torch.uint8)
        block.fill_(1)
        del block
    assert _page_faults() - before < 2 * size // PAGE
