"""data.pkl that would make an unpickler allocate far more than its own size.

The scanner must read such a pickle, or refuse it, with memory in proportion
to the pickle: a checkpoint of a few hundred bytes must not cost gigabytes.
"""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

from git_theta_filter.formats.pickle_scan import PickleScanError, scan_pickle

CASES = {
    # PUT an object at memo index 2**25: the C unpickler grows its memo array to twice that.
    "long-binput-2**25": b"\x80\x02}r" + struct.pack("<I", 1 << 25) + b".",
    "long-binput-2**31": b"\x80\x02}r" + struct.pack("<I", (1 << 31) - 1) + b".",
    "binput-then-huge-get": b"\x80\x02}r"
    + struct.pack("<I", 1 << 30)
    + b"j"
    + struct.pack("<I", 1 << 30)
    + b"\x86.",
    "text-put-10**9": b"\x80\x02}p1000000000\n.",
    "frame-claiming-2**62-bytes": b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"}.",
    "binunicode8-claiming-2**62-bytes": b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62) + b"abc.",
    # Opcodes of the scanner's fast loop (formats/pickle_common.py), which gives such a
    # pickle up part way and leaves it to the full unpickler: both must stay bounded.
    "binunicode-claiming-4-GiB": b"\x80\x02X" + struct.pack("<I", (1 << 32) - 1) + b"abc.",
    "long1-claiming-255-bytes": b"\x80\x02\x8a\xff" + b"\xff" * 8 + b".",
    "global-without-a-newline": b"\x80\x02c" + b"m" * (1 << 20) + b".",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_tiny_pickle_cannot_make_the_scanner_allocate_much(name: str) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        scan_pickle(CASES[name])
    except PickleScanError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 16 << 20, f"{name}: the scan allocated {peak >> 20} MB"
    assert time.monotonic() - started < 2
