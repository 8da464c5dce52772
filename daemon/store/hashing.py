"""Block checksums of checkpoint files (torch-free): xxh3-128 of each 16 MiB block.

Per-block digests rather than one digest per file, because blocks can be verified in parallel
(one thread per core; xxhash releases the GIL) and a mismatch names the damaged byte range. The
writer computes them while writing, from the bytes it already has in memory: no second read.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from traind.fs.durable import start_writeback, write_all

ALGO = "xxh3_128"
BLOCK_SIZE = 16 << 20
READ_BUFFER = 1 << 20          # fits in L2: the hash reads what pread just copied, still hot
WRITEBACK_EVERY = 64 << 20     # start writeback this often, so the final fsync has little left
MAX_VERIFY_THREADS = 8


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    return (size + block_size - 1) // block_size


def verify_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_VERIFY_THREADS, cores))


def hash_blocks(path: Path, block_size: int | None = None, threads: int | None = None) -> tuple[int, list[str]]:
    """(size, digest of each block) of a file, blocks hashed in parallel with pread."""
    block_size = block_size or BLOCK_SIZE
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        n = block_count(size, block_size)
        local = threading.local()

        def one(index: int) -> str:
            if not hasattr(local, "view"):
                local.view = memoryview(bytearray(READ_BUFFER))
            view, h = local.view, xxhash.xxh3_128()
            offset, end = index * block_size, min(size, (index + 1) * block_size)
            while offset < end:
                got = os.preadv(fd, [view[:min(READ_BUFFER, end - offset)]], offset)
                if got == 0:
                    raise OSError(f"{path}: file shrank while being read")
                h.update(view[:got])
                offset += got
            return h.hexdigest()

        threads = min(threads or verify_threads(), max(1, n))
        if threads == 1:
            return size, [one(i) for i in range(n)]
        with ThreadPoolExecutor(threads, thread_name_prefix="traind-verify") as pool:
            return size, list(pool.map(one, range(n)))
    finally:
        os.close(fd)


class HashingWriter:
    """A binary file object for torch.save: checksums blocks as bytes pass through, writes them
    with os.write (torch hands over tensor storages as memoryviews: no extra copy), starts
    writeback early, and fsyncs on close()."""

    def __init__(self, path: Path, block_size: int | None = None, reach=lambda point: None):
        self.path = path
        self.block_size = block_size or BLOCK_SIZE
        self._reach = reach
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._hash = xxhash.xxh3_128()
        self._in_block = 0
        self.digests: list[str] = []
        self.size = 0
        self._flushed_to = 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        try:
            write_all(self._fd, view)
        except OSError as err:
            # torch.save's zip writer may replace this error with its own RuntimeError on the way
            # out; keep the first OS error so the caller can report the real cause (ENOSPC, EIO).
            self.error = self.error or err
            raise
        while len(view):
            take = min(len(view), self.block_size - self._in_block)
            self._hash.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == self.block_size:
                self.digests.append(self._hash.hexdigest())
                self._hash.reset()
                self._in_block = 0
        self.size += total
        if self.size - self._flushed_to >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed_to, self.size - self._flushed_to)
            self._flushed_to = self.size
        self._reach("write")
        return total

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def close(self) -> tuple[int, list[str]]:
        """fsync and close; returns (size, block digests)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._in_block:
                self.digests.append(self._hash.hexdigest())
                self._in_block = 0
        return self.size, self.digests

    def discard(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
