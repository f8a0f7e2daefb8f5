"""Give freed memory back to the system where the C allocator keeps it.

glibc keeps freed memory in an arena per thread for reuse: after a burst that another
burst will not repeat soon (a row group written, an id table sorted to disk), the process
keeps the pages of its largest moment. `trim` hands back every free page of every arena.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

__all__ = ["trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (AttributeError, OSError):  # not glibc (musl): no arenas to trim
        return None


_TRIM = _malloc_trim()


def trim() -> None:
    if _TRIM is not None:
        _TRIM(0)
