"""Large private buffers of our own (snapshot buffers, the O_DIRECT staging block): one mmap each.

They are marked MADV_WIPEONFORK: a forked child (a DataLoader worker) gets the range as fresh
zero pages, so the parent's pages are not made copy-on-write (else the next snapshot would pay a
fault and a page copy for each). MADV_DONTFORK would avoid that too, but leaves the range
unmapped in the child: the child may map something else there, and when its garbage collector
frees an inherited buffer object, that object's munmap takes the child's new mapping away; its
next touch is a SIGSEGV (seen in a forked checkpoint writer). WIPEONFORK (Linux 4.14) keeps the
range mapped, so an inherited munmap only unmaps what it owns. Where it is refused the buffer is
plainly inherited: copy-on-write costs time, never correctness.
"""
from __future__ import annotations

import mmap

MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def private_region(nbytes: int, *, huge: bool = False) -> mmap.mmap:
    """An anonymous private mapping of nbytes (page-aligned), wiped in forked children; with
    `huge`, transparent huge pages asked for where the kernel offers them."""
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advices = [MADV_WIPEONFORK] + ([mmap.MADV_HUGEPAGE] if huge and hasattr(mmap, "MADV_HUGEPAGE") else [])
    for advice in advices:
        try:
            region.madvise(advice)
        except OSError:          # an older kernel: the advice is only an optimisation
            pass
    return region
