"""The few Linux calls the stdlib lacks (sync_file_range, renameat2, prctl), reached through one
ctypes handle. Each returns None/False where unavailable, so callers keep a portable fallback."""
from __future__ import annotations

import ctypes
import ctypes.util

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = None


def libc_fn(name: str):
    """The libc function `name`, or None (no libc, or an older one without it)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, name, None) if _libc else None


def prctl(option: int, value: int) -> int | None:
    """prctl(option, value): 0 on success, the errno on failure, None where there is no prctl."""
    fn = libc_fn("prctl")
    if fn is None:
        return None
    if fn(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        return ctypes.get_errno()
    return 0
