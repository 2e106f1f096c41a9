"""Process-wide allocator tuning for a server that streams large bodies.

glibc's malloc serves big buffers with mmap and returns them on free, but after the first
such free it raises its mmap threshold to that size (up to 32 MiB), so later multi-MiB
buffers (upload parts) come from the heap and from one arena per worker thread, and stay
resident after the transfer. Pinning the threshold at 1 MiB keeps every upload part (5 MiB)
and download chunk (1 MiB) in its own mapping, so the shim's memory returns to idle after
each transfer instead of creeping up, while the many socket-sized pieces of a request body
(up to 256 KiB, copied several times on their way) reuse heap memory. (Pinned at 128 KiB,
glibc's initial value, every piece was a fresh mapping: page faults and unmaps cost the
shim about 0.7 CPU-seconds per 200 MB upload; measured in bench/b13_shim_transfer.py.)
"""

import ctypes
import ctypes.util
import logging
import sys

_M_MMAP_THRESHOLD = -3  # <malloc.h>
_THRESHOLD = 1024 * 1024  # above a body's socket-sized pieces, at the 1 MiB chunks

log = logging.getLogger(__name__)


def return_large_buffers_to_os() -> bool:
    """Pin glibc's mmap threshold; True when applied (False off glibc, e.g. macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD))
    if not applied:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; allocator left as it is")
    return applied
