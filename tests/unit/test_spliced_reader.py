"""formats/layout.SplicedReader: any read of a spliced file gives the file's bytes.

The reader finds the splice under a position by bisection; these reads at
random positions check that arithmetic against the file put together by hand,
with empty splices and splices at the start and the end.
"""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import pytest

from git_theta_filter.formats.layout import SplicedReader
from git_theta_filter.manifest import Splice

HEADER = 8  # bytes before the payload in the stand-in store's objects


class PayloadStore:
    """Only what SplicedReader asks of a store: an object's file and its data offset."""

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self.payloads = payloads

    def open_object(self, oid: str):
        file = io.BytesIO(b"h" * HEADER + self.payloads[oid])
        return file, SimpleNamespace(data_offset=HEADER)


def spliced_file(rng: random.Random) -> tuple[bytes, bytes, list[Splice], dict[str, bytes]]:
    """(the whole file, its skeleton, its splices, the payloads by oid)."""
    whole, skeleton, splices, payloads = bytearray(), bytearray(), [], {}
    for index in range(40):
        gap = rng.randbytes(rng.choice([0, 1, 7, 100]))  # no gap: two splices touch
        whole += gap
        skeleton += gap
        payload = rng.randbytes(rng.choice([0, 1, 33, 500]))  # empty splices too
        oid = f"{index:064x}"
        payloads[oid] = payload
        splices.append(Splice(len(whole), len(payload), oid))
        whole += payload
    tail = rng.randbytes(rng.choice([0, 9]))
    return bytes(whole + tail), bytes(skeleton + tail), splices, payloads


@pytest.mark.parametrize("seed", range(5))
def test_spliced_reader_reads_any_range_of_the_file(seed: int) -> None:
    rng = random.Random(seed)
    whole, skeleton, splices, payloads = spliced_file(rng)
    reader = SplicedReader(skeleton, splices, len(whole), PayloadStore(payloads))
    for _ in range(300):
        start = rng.randrange(len(whole) + 1)
        size = rng.choice([1, 5, 64, 1000, len(whole)])
        reader.seek(start)
        assert reader.read(size) == whole[start : start + size], (start, size)


@pytest.mark.parametrize("seed", range(5))
def test_spliced_reader_without_a_store_reads_the_skeleton_and_refuses_payloads(
    seed: int,
) -> None:
    rng = random.Random(seed)
    whole, skeleton, splices, _payloads = spliced_file(rng)
    reader = SplicedReader(skeleton, splices, len(whole), None)
    in_payload = [False] * len(whole)
    for splice in splices:
        in_payload[splice.offset : splice.end] = [True] * splice.length
    for _ in range(300):
        start = rng.randrange(len(whole) + 1)
        size = rng.choice([1, 5, 64, 1000])
        reader.seek(start)
        if any(in_payload[start : start + size]):
            with pytest.raises(OSError, match="lies in a tensor payload"):
                reader.read(size)
        else:
            assert reader.read(size) == whole[start : start + size], (start, size)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_store", [True, False])
def test_read_at_gives_what_a_seek_and_a_read_give_and_keeps_the_position(
    seed: int, with_store: bool
) -> None:
    rng = random.Random(seed)
    whole, skeleton, splices, payloads = spliced_file(rng)
    store = PayloadStore(payloads) if with_store else None
    reader = SplicedReader(skeleton, splices, len(whole), store)
    other = SplicedReader(skeleton, splices, len(whole), store)
    reader.seek(17)
    for _ in range(300):
        start = rng.randrange(-3, len(whole) + 3)
        size = rng.choice([0, 1, 5, 30, 46, 1000])
        other.seek(start)
        try:
            expected: bytes | type[OSError] = other.read(size)
        except OSError:
            expected = OSError
        if expected is OSError:
            with pytest.raises(OSError, match="lies in a tensor payload"):
                reader.read_at(start, size)
        else:
            assert reader.read_at(start, size) == expected, (start, size)
        assert reader.tell() == 17
