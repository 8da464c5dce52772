"""Block checksums of checkpoint files (torch-free): xxh3-128 of each 16 MiB block.

Per-block digests rather than one digest per file, because blocks can be verified in parallel
(one thread per core; xxhash releases the GIL) and a mismatch names the damaged byte range. The
writer computes them while writing, from the bytes it already has in memory: no second read.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from ..fs.durable import start_writeback, write_all
from ..fs.memory import private_region

ALGO = "xxh3_128"
BLOCK_SIZE = 16 << 20
READ_BUFFER = 1 << 20          # fits in L2: the hash reads what pread just copied, still hot
WRITEBACK_EVERY = 64 << 20     # start writeback this often, so the final fsync has little left
MAX_VERIFY_THREADS = 8
PAGE = 4096                    # O_DIRECT alignment of file offsets, lengths and memory (any fs)


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


def staging_buffer(size: int = BLOCK_SIZE) -> memoryview:
    """A page-aligned buffer for the bytes of a block that cannot go to disk from where they are
    (O_DIRECT needs page-aligned memory). Kept by the caller from one save to the next: fresh
    memory costs page faults. Wiped in forked children (traind.fs.memory)."""
    return memoryview(private_region(size))


def _set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for an open file; False where the filesystem refuses it."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | direct) if on else (flags & ~direct))
    except OSError:
        return False
    return on


class WriteOnlyFile:
    """What torch.save needs of a binary file object besides write(): `size` bytes so far."""

    size: int

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size


class HashingWriter(WriteOnlyFile):
    """Writes a file block by block (BLOCK_SIZE), checksumming each block from the bytes in
    memory as it is written, and fsyncs on close(). Also a binary file object (write()).

    add(data, address) appends bytes without writing them: with an address, the buffer is used
    in place and must stay unchanged until its block is written (tensor storages); without, it is
    copied (zip headers). write_block() writes the next complete block, so a file can be planned
    first and written later, by whichever thread holds the caller's lock, one block at a time.

    direct=True writes with O_DIRECT where the filesystem allows it: no copy into the page cache,
    no writeback work left for the kernel or the final fsync. Page-aligned runs whose memory is
    page-aligned too go to disk from where they are; the rest of a block (headers, small tensors,
    unaligned memory) through the page-aligned `staging` buffer. The last page is padded and the
    file truncated to its size on close(). Without O_DIRECT the bytes go through the page cache,
    with writeback started every WRITEBACK_EVERY bytes so the final fsync has little left."""

    def __init__(self, path: Path, block_size: int | None = None, reach=lambda point: None, *,
                 direct: bool = False, staging: memoryview | None = None):
        self.path = path
        self.block_size = block_size or BLOCK_SIZE
        self._reach = reach
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.direct = direct and self.block_size % PAGE == 0 and _set_direct(self._fd, True)
        self._staging = staging
        self._pieces: list[tuple[int, memoryview, int | None]] = []   # (file offset, bytes, address)
        self.size = 0              # bytes added
        self.written = 0           # bytes written: a block boundary, or the end
        self._padded = False
        self._ended = False        # no add() after end_of_data(): the last block may be partial
        self.digests: list[str] = []
        self._flushed_to = 0
        self.error: OSError | None = None

    # --- planning ----------------------------------------------------------------------------
    def add(self, data, address: int | None = None) -> int:
        if self._ended:
            raise ValueError(f"{self.path}: add() after end_of_data()")
        view = memoryview(data).cast("B")
        if address is None:
            view = memoryview(bytes(view))
        if len(view):
            self._pieces.append((self.size, view, address))
            self.size += len(view)
        return len(view)

    def write(self, data) -> int:
        """File-object write: copy, then write every block now complete."""
        n = self.add(data)
        self.write_ready_blocks()
        return n

    # --- writing -----------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        """Blocks of the file as planned so far (the last one may be partial)."""
        return block_count(self.size, self.block_size)

    def end_of_data(self) -> None:
        """Nothing more will be added: the last, partial block can be written."""
        self._ended = True

    def write_ready_blocks(self) -> None:
        while self.write_block():
            pass

    def write_block(self) -> bool:
        """Write and checksum the next complete block (or, after end_of_data(), the partial last
        one); False if there is none."""
        start = self.written
        end = min(self.size, start + self.block_size)
        if end <= start or self._fd < 0 or (end - start < self.block_size and not self._ended):
            return False
        slices = self._take(start, end)
        h = xxhash.xxh3_128()
        try:
            if self.direct:
                try:
                    self._write_direct(start, end, slices, h)
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    # this filesystem refuses the alignment after all: page cache from here on
                    self.direct = _set_direct(self._fd, False)
                    os.lseek(self._fd, start, os.SEEK_SET)
                    h = xxhash.xxh3_128()
                    self._write_buffered(slices, h)
            else:
                self._write_buffered(slices, h)
        except OSError as err:
            # torch.save's zip writer may replace this error with its own RuntimeError on the way
            # out; keep the first OS error so the caller can report the real cause (ENOSPC, EIO).
            self.error = self.error or err
            raise
        self.digests.append(h.hexdigest())
        self.written = end
        return True

    def _take(self, start: int, end: int) -> list[tuple[int, memoryview, int | None]]:
        """The pieces' bytes in [start, end), as slices; pieces fully taken are dropped."""
        out, keep = [], 0
        for i, (off, view, addr) in enumerate(self._pieces):
            if off >= end:
                break
            lo, hi = max(start, off), min(end, off + len(view))
            out.append((lo, view[lo - off:hi - off], None if addr is None else addr + lo - off))
            if off + len(view) <= end:
                keep = i + 1
        del self._pieces[:keep]
        return out

    def _write_buffered(self, slices, h) -> None:
        for _, view, _ in slices:
            for at in range(0, len(view), READ_BUFFER):    # hashed while still in cache
                chunk = view[at:at + READ_BUFFER]
                write_all(self._fd, chunk)
                h.update(chunk)
            self._reach("write")
        pos = slices[-1][0] + len(slices[-1][1])
        if pos - self._flushed_to >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed_to, pos - self._flushed_to)
            self._flushed_to = pos

    def _write_direct(self, start: int, end: int, slices, h) -> None:
        """Runs of whole pages whose memory is page-aligned go from where they are; every other
        byte is copied into the staging buffer at its place in the block, written in between."""
        if self._staging is None:
            self._staging = staging_buffer(self.block_size)
        stage, runs = self._staging, []
        for off, view, addr in slices:
            h.update(view)
            lo, hi = -(-off // PAGE) * PAGE, (off + len(view)) // PAGE * PAGE
            if addr is not None and (addr - off) % PAGE == 0 and hi > lo:
                stage[off - start:lo - start] = view[:lo - off]
                stage[hi - start:off + len(view) - start] = view[hi - off:]
                runs.append((lo, view[lo - off:hi - off]))
            else:
                stage[off - start:off + len(view) - start] = view
        pos = start
        for lo, view in runs + [(end, None)]:
            if lo > pos:
                top = -(-lo // PAGE) * PAGE       # past `end` only for the last page of the file
                if top > lo:
                    stage[lo - start:top - start] = bytes(top - lo)
                    self._padded = True
                write_all(self._fd, stage[pos - start:top - start])
                self._reach("write")
            if view is not None:
                write_all(self._fd, view)
                self._reach("write")
                pos = lo + len(view)

    def close(self) -> tuple[int, list[str]]:
        """Write what is left, fsync and close; returns (size, block digests)."""
        if self._fd >= 0:
            self.end_of_data()
            try:
                while self.write_block():
                    pass
                if self._padded:
                    os.ftruncate(self._fd, self.size)
            except BaseException:
                self.discard()
                raise
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.size, self.digests

    def discard(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self._pieces = []
