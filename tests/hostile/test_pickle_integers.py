"""Class 4 of docs/security.md: integers in a ``data.pkl`` cost time linear in their digits.

A skeleton's ``data.pkl`` comes from whoever made the commit (the merge
driver, ``fsck --check-pickles`` and the history readers, which clean a raw
version, all scan it). Python converts a decimal string to an integer in
time quadratic in its digits, and multiplies two large integers in more than
linear time: a 256 MiB pickle of either kind would take hours.
"""

from __future__ import annotations

import pickle
import struct
import sys

import pytest

from git_theta_filter.formats.pickle_scan import PickleScanError, scan_pickle

DIGITS = 200_000


def _unicode(text: str) -> bytes:
    return pickle.BINUNICODE + struct.pack("<I", len(text)) + text.encode()


def _text_opcode(opcode: bytes) -> bytes:
    """``{"x": <DIGITS digits>}``, the digits in one of the text opcodes that read a decimal."""
    if opcode in (pickle.GET, pickle.PUT):
        value = pickle.NONE + pickle.PUT + b"9" * DIGITS + b"\n"
        if opcode == pickle.GET:
            value += pickle.POP + pickle.GET + b"9" * DIGITS + b"\n"
    else:
        value = opcode + b"9" * DIGITS + b"\n"
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + _unicode("x") + value + b"s."


@pytest.mark.parametrize(
    "opcode", [pickle.INT, pickle.LONG, pickle.GET, pickle.PUT], ids=["INT", "LONG", "GET", "PUT"]
)
def test_a_decimal_in_a_pickle_is_bounded_whatever_pythons_digit_limit(no_digit_limit, opcode):
    with pytest.raises(PickleScanError, match="digits"):
        scan_pickle(_text_opcode(opcode))
    assert sys.get_int_max_str_digits() == 0  # the user's setting, back as it was


def _long4(value: int) -> bytes:
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG4 + struct.pack("<i", len(data)) + data


def test_a_tensor_of_huge_sizes_and_strides_is_refused_before_they_are_multiplied():
    """``(size - 1) * stride`` of two 1 MiB integers took 9 s; of two 100 MiB ones, hours."""
    huge = _long4((1 << (8 << 20)) - 1)
    storage = (
        pickle.MARK
        + _unicode("storage")
        + pickle.GLOBAL
        + b"torch\nFloatStorage\n"
        + _unicode("0")
        + _unicode("cpu")
        + pickle.BININT1
        + b"\x04"
        + pickle.TUPLE
        + pickle.BINPERSID
    )
    tensor = (
        pickle.GLOBAL
        + b"torch._utils\n_rebuild_tensor_v2\n"
        + pickle.MARK
        + storage
        + pickle.BININT1
        + b"\x00"
        + huge
        + huge
        + pickle.TUPLE2
        + huge
        + huge
        + pickle.TUPLE2
        + pickle.NEWFALSE
        + pickle.EMPTY_DICT
        + pickle.TUPLE
        + pickle.REDUCE
    )
    data = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + _unicode("w") + tensor + b"s."
    with pytest.raises(PickleScanError, match="over 2\\*\\*60"):
        scan_pickle(data)


@pytest.mark.parametrize("limit", ["default", "off"])
def test_a_key_that_is_a_huge_integer_is_refused_by_name(limit, no_digit_limit):
    """Its name would be its decimal digits: a ValueError escaped the scanner under Python's
    digit limit (clean, the merge driver and fsck crashed), n² time without it."""
    if limit == "default":
        sys.set_int_max_str_digits(4300)
    key = _long4((1 << (1 << 20)) - 1)  # 315,653 digits
    data = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + key + pickle.BININT1 + b"\x01" + b"s."
    with pytest.raises(PickleScanError, match="digits"):
        scan_pickle(data)
