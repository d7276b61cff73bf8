"""zip_directory.py's checks that agree with zipfile on every archive zipfile reads: each is
held here by handing the reader what zipfile would never hand it."""

from __future__ import annotations

import io
import zipfile

import pytest

from git_theta_filter.formats.base import NotThisFormat
from git_theta_filter.formats.layout import SplicedReader
from git_theta_filter.formats.zip_directory import (
    _records,
    read_data_pkl_record,
    read_zip_directory,
)


def archive(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name, data in members:
            out.writestr(name, data)
    return buffer.getvalue()


def test_a_data_pkl_record_longer_than_the_bytes_given_is_refused() -> None:
    # The callers check the skeleton's length against the manifest first, so only a
    # caller that did not can reach this: the record must not be read short.
    data = archive(("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/version", b"3\n"))
    directory = read_zip_directory(data, [], len(data))
    assert read_data_pkl_record(data, [], len(data), directory) == b"\x80\x02}q\x00."
    cut = directory.records[0].data_offset + 3
    with pytest.raises(NotThisFormat, match="data.pkl runs past the end of the archive"):
        read_data_pkl_record(data[:cut], [], cut, directory)


def test_a_central_directory_that_is_not_where_zipfile_found_it_is_refused() -> None:
    # zipfile reads the entries from the same place, so they always agree; the walk
    # still checks each one rather than unpack whatever bytes are there.
    data = archive(("archive/data.pkl", b"\x80\x02}q\x00."))
    with zipfile.ZipFile(io.BytesIO(data)) as read:
        infos = read.infolist()
    reader = SplicedReader(data, [], len(data), store=None)
    with pytest.raises(NotThisFormat, match="no central directory entry at 0"):
        _records(reader, infos, 0)  # offset 0 holds the local header, not a central entry
