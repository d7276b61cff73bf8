"""The local store's write rules (store/local.py, store/writing.py): objects placed
read-only, a disk that refuses a write named as such, and a writer that refuses a payload
of another size than it was made for."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from git_theta_filter.errors import ThetaError
from git_theta_filter.store.local import LocalStore, StoreWriteError, on_refused_write
from git_theta_filter.store.object_format import ObjectFormatError
from git_theta_filter.store.writing import ExpectedObject


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def test_an_object_is_read_only_and_a_second_import_leaves_no_temp_file(
    store: LocalStore,
) -> None:
    oid = store.write_bytes(b"weights")
    path = store.object_path(oid)
    assert path.stat().st_mode & 0o777 == 0o444
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    again = store.tmp_dir / "download"
    again.write_bytes(path.read_bytes())
    store.import_verified(again, oid)
    assert path.read_bytes().endswith(b"weights") and path.stat().st_mode & 0o777 == 0o444
    assert not again.exists()
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == []


def test_writes_names_a_refused_write_and_passes_other_errors_through(store: LocalStore) -> None:
    with pytest.raises(StoreWriteError) as caught, store.writes("model.pth"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == (
        f"model.pth: cannot write objects to {store.theta_dir}: No space left on device"
    )
    with pytest.raises(OSError) as other, store.writes():
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(other.value, ThetaError)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG])
def test_on_refused_write_maps_every_errno_only_writing_causes(code: int) -> None:
    with (
        pytest.raises(ThetaError, match="refused"),
        on_refused_write(lambda exc: ThetaError(f"refused: {exc.errno}")),
    ):
        raise OSError(code, "refused")


@pytest.mark.parametrize(
    ("sized", "written"),
    [(8, 3), (8, 9), (2 << 20, 1 << 20)],
    ids=["small-short", "small-long", "large-short"],
)
def test_a_writer_given_other_than_its_size_stores_nothing_and_says_so(
    store: LocalStore, sized: int, written: int
) -> None:
    writer = store.writer("U8", (sized,), sized)
    writer.write(bytes(written))
    with pytest.raises(ThetaError, match=f"object payload was {written} bytes, expected {sized}"):
        writer.commit()
    # The header was made for `sized` bytes: an object of any other length would be
    # refused by every reader, so none is stored.
    assert list(store.iter_oids()) == []
    assert list(store.tmp_dir.glob("*")) == []


@pytest.mark.parametrize("size", [8, 2 << 20], ids=["loose-canonical", "encoded"])
def test_a_range_of_an_expected_object_that_runs_past_its_end_is_a_format_error(
    store: LocalStore, size: int
) -> None:
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]  # the large one compresses
    oid = store.write_bytes(payload)
    stored = store.open_stored(oid)
    assert stored is not None
    expected = ExpectedObject(stored)
    try:
        chunks = expected.iter_range(size - 4, 8)
        assert bytes(next(chunks)) == payload[-4:]
        with pytest.raises(ObjectFormatError, match="payload ends early") as caught:
            # A bounded read: a range that ran on past the end would yield empty chunks
            # forever instead of failing.
            list(itertools.islice(chunks, 2))
    finally:
        expected.close()
    assert caught.value.oid == oid


def test_write_async_hashes_after_returning_and_in_order(store: LocalStore) -> None:
    """write_async hands a large buffer's hash to a thread and returns its future, so the
    caller reads on; the caller's buffer may change once that is done, and a small
    write queued behind it is hashed after it, not before."""
    import hashlib

    from git_theta_filter.store.object_format import encode_header

    big = bytearray(os.urandom(1 << 20))
    small = b"tail"
    payload = bytes(big) + small
    writer = store.writer("U8", (len(payload),), len(payload))
    queued = writer.write_async(big)
    assert queued is not None
    assert writer.write_async(small) is not None  # behind the big one, on the same thread
    queued.result()
    big[:] = bytes(len(big))  # the buffer is the caller's again
    oid = writer.commit()
    assert (
        oid
        == hashlib.sha256(encode_header("U8", (len(payload),), len(payload)) + payload).hexdigest()
    )
    store.verify(oid)  # the stored object decodes to the bytes of that id


def test_write_small_stores_what_a_writer_stores_and_leaves_the_rest_to_one(
    tmp_path: Path,
) -> None:
    payload = bytes(range(256)) * 16
    by_writer, directly = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    for target in (by_writer, directly):
        with target.packing():
            if target is by_writer:
                writer = target.writer("F32", (1024,), len(payload))
                writer.write(payload)
                oid = writer.commit()
            else:
                assert directly.write_small("F32", (1024,), memoryview(payload)) == oid
    packs = [sorted(target.packs()) for target in (by_writer, directly)]
    assert [p.name for p in packs[0]] == [p.name for p in packs[1]]
    assert packs[0][0].read_bytes() == packs[1][0].read_bytes()
    # Too large for a pack, or compared with expected objects: nothing is done.
    large = bytes(1 << 20)
    assert directly.write_small("U8", (len(large),), large) is None
    with directly.expecting([oid]):
        assert directly.write_small("F32", (1024,), payload) is None
    assert sorted(directly.packs()) == packs[1] and not directly.objects_dir.exists()


def test_the_small_objects_of_one_packing_block_share_an_outlook_and_the_next_starts_afresh(
    store: LocalStore,
) -> None:
    """A compressible small object after 40 that did not compress is stored canonical
    (encoded.SmallObjectOutlook); in the next clean's block it is tried again."""
    noise = np.random.default_rng(4)

    def encoded(oid: str) -> bool:
        stored = store.open_stored(oid)
        assert stored is not None
        stored.close()
        return stored.encoded is not None

    with store.packing():
        for _ in range(40):
            store.write_small(
                "F32", (4096,), noise.standard_normal(4096).astype(np.float32).tobytes()
            )
        skipped = store.write_small("F32", (4097,), bytes(4 * 4097))
    with store.packing():
        tried = store.write_small("F32", (4098,), bytes(4 * 4098))
    assert skipped is not None and tried is not None
    assert not encoded(skipped) and encoded(tried)
    store.verify(skipped)
