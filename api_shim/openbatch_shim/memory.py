"""Process-wide allocator tuning for a server that streams large bodies.

glibc's malloc serves big buffers with mmap and returns them on free, but after the first
such free it raises its mmap threshold to that size (up to 32 MiB), so later multi-MiB
buffers (upload parts, download chunks) come from the heap and from one arena per worker
thread, and stay resident after the transfer. Pinning the threshold keeps every buffer of
128 KiB or more in its own mapping: the shim's memory returns to idle after each transfer
instead of creeping up (measured in bench/b13_shim_transfer.py).
"""

import ctypes
import ctypes.util
import logging
import sys

_M_MMAP_THRESHOLD = -3  # <malloc.h>
_THRESHOLD = 128 * 1024  # glibc's initial default

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
