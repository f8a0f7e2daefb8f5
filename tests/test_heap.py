"""heap.one_arena: a process's threads share glibc's main arena (what `runner` does at start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# Threads that allocate past pymalloc's small-object limit (so glibc serves them), then
# glibc's own account of its arenas: one <heap> element each.
_PROBE = """
import ctypes, sys, threading
from runner.heap import one_arena
if sys.argv[1] == "one":
    one_arena()
def work():
    kept = [bytearray(4000) for _ in range(200)]
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
fp = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
"""


def _arenas(tmp_path: Path, mode: str) -> int:
    out = tmp_path / f"{mode}.xml"
    subprocess.run([sys.executable, "-c", _PROBE, mode, str(out)], check=True, timeout=60)
    return out.read_text().count("<heap nr=")


def test_threads_share_one_arena(tmp_path: Path) -> None:
    assert _arenas(tmp_path, "default") > 1  # the default: an arena a thread
    assert _arenas(tmp_path, "one") == 1
