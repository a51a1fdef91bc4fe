"""Keep freed memory in the process, so that large tensors do not page-fault on every pass.

glibc's ``malloc`` serves a block of 32 MiB or more (its default ``mmap`` threshold, which it
raises only up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. PyTorch's CPU
allocator has no cache of its own, so every pass of a network at 800x1216 maps, zero-fills
(one page fault per 4 KiB page) and unmaps hundreds of MiB of activations again. On this
project's 2-core VM that cost 0.4-0.6 s of system time per inference pass; in a process that
also holds onnxruntime and OpenVINO sessions, eager inference was 1.5 s slower than alone.

:func:`keep_freed_memory` raises the ``mmap`` threshold to 1 GiB and switches off trimming of
the heap's top, so freed blocks are reused by the next pass instead of being returned to the
kernel. The price is a higher resident set: freed memory stays mapped (measured: +130-450 MiB
peak RSS; README, "Training step against the official code"). The same settings can be given
without code through

    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647``.

The entry points (``train_net.py``, ``demo/demo.py``, ``tools/default_run.py`` and the speed
benchmarks) call it; set ``M2F_KEEP_FREED_MEMORY=0`` to leave ``malloc`` at its defaults. It
does nothing, and says why at debug level, where the C library is not glibc.
"""

import ctypes
import ctypes.util
import logging
import os

__all__ = ["keep_freed_memory", "ENV_SWITCH", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

logger = logging.getLogger(__name__)

ENV_SWITCH = "M2F_KEEP_FREED_MEMORY"
# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, and are reused once freed
TRIM_THRESHOLD = 2**31 - 1  # never give the heap's free top back to the kernel
_FALLBACK_MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: what any glibc accepts


def _glibc():
    """The process's glibc, or None where the C library is another one (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(enabled=None) -> bool:
    """Ask glibc to keep freed blocks for reuse (see the module docstring).

    Args:
        enabled: True or False to decide here; None (the default) reads ``M2F_KEEP_FREED_MEMORY``
            ("0", "false", "no" or "off" switch it off; anything else, or unset, switches it on).

    Returns:
        True when both settings were applied (the mmap threshold possibly capped at 32 MiB by
        an older glibc); False when switched off, when the C library is not glibc, or when
        glibc refused a setting (the settings it did accept stay).
    """
    if enabled is None:
        value = os.environ.get(ENV_SWITCH, "1").strip().lower()
        enabled = value not in ("0", "false", "no", "off")
    if not enabled:
        logger.debug("%s is off: malloc keeps its defaults", ENV_SWITCH)
        return False
    libc = _glibc()
    if libc is None:
        logger.debug("not glibc: malloc keeps its defaults")
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not mmap_ok:
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, _FALLBACK_MMAP_THRESHOLD) == 1
        logger.info("this glibc caps the mmap threshold: blocks of 32 MiB or more still map")
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not (mmap_ok and trim_ok):
        logger.warning(
            "glibc refused some malloc settings (mmap threshold %s, trim threshold %s); "
            "large tensors may page-fault on every pass",
            "set" if mmap_ok else "refused",
            "set" if trim_ok else "refused",
        )
        return False
    logger.debug("malloc keeps freed memory (mmap threshold 1 GiB, no trimming)")
    return True
