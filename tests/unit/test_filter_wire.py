"""The filter server's request and message format (filter_wire.py), read from an untrusted peer.

Any process of this user may connect to the server's socket and send
anything; each check here is one a malformed request must fail. The server
built on them is tested in tests/integration/test_filter_server.py.
"""

from __future__ import annotations

import socket
import threading

import pytest

from git_theta_filter.filter_wire import (
    MAX_REQUEST_BYTES,
    FilterRequest,
    MalformedRequestError,
    body_length,
    decode_request,
    encode_message,
    encode_request,
    receive_message,
)


def a_request(**changes) -> FilterRequest:
    fields = {
        "identity": "this installation",
        "cwd": b"/home/user/repo",
        "umask": 0o022,
        "environ": {b"HOME": b"/home/user"},
    }
    fields.update(changes)
    return FilterRequest(**fields)


def body_of(request: FilterRequest) -> bytes:
    encoded = encode_request(request)
    assert body_length(encoded[:8]) == len(encoded) - 8
    return encoded[8:]


def test_a_request_decodes_to_what_was_encoded():
    decoded = decode_request(body_of(a_request(environ={b"A": b"1=2", b"EMPTY": b""})))
    assert decoded.identity == "this installation"
    assert decoded.cwd == b"/home/user/repo"
    assert decoded.umask == 0o022
    assert decoded.environ == {b"A": b"1=2", b"EMPTY": b""}


def test_a_request_over_the_size_limit_is_not_encoded():
    huge = {b"BIG": b"x" * MAX_REQUEST_BYTES}
    with pytest.raises(MalformedRequestError, match=f"exceeds {MAX_REQUEST_BYTES}"):
        encode_request(a_request(environ=huge))


@pytest.mark.parametrize(
    "header",
    [b"0000001", b"000000010", b"0000001A", b"0x000001", b" 0000001", b"+0000001"],
    ids=["short", "long", "uppercase", "0x", "space", "plus"],
)
def test_a_length_that_is_not_8_lowercase_hex_digits_is_refused(header):
    with pytest.raises(MalformedRequestError, match="8 lowercase hex digits"):
        body_length(header)


def test_a_length_over_the_limit_is_refused_before_the_body_is_read():
    assert body_length(b"%08x" % MAX_REQUEST_BYTES) == MAX_REQUEST_BYTES
    with pytest.raises(MalformedRequestError, match=f"of {MAX_REQUEST_BYTES + 1} bytes exceeds"):
        body_length(b"%08x" % (MAX_REQUEST_BYTES + 1))


def test_a_request_of_fewer_than_four_fields_is_refused():
    with pytest.raises(MalformedRequestError, match="at least 4 fields"):
        decode_request(b"1\0identity\0/")


def test_a_request_of_another_protocol_version_is_refused():
    body = body_of(a_request())
    with pytest.raises(MalformedRequestError, match="protocol version b'2', expected 1"):
        decode_request(b"2" + body[1:])


def test_a_relative_working_directory_is_refused():
    # The server's child would resolve it against the server's own directory.
    with pytest.raises(MalformedRequestError, match="working directory is not absolute"):
        decode_request(body_of(a_request(cwd=b"home/user/repo")))


@pytest.mark.parametrize("umask", [b"", b"77777", b"8", b"-1", b"0o22"])
def test_a_umask_that_is_not_up_to_four_octal_digits_is_refused(umask):
    body = b"\0".join([b"1", b"this installation", b"/", umask])
    with pytest.raises(MalformedRequestError, match=f"umask {umask!r} is not up to 4 octal"):
        decode_request(body)


@pytest.mark.parametrize("entry", [b"NOEQUALS", b"=value"])
def test_an_environment_entry_without_a_name_is_refused(entry):
    body = body_of(a_request()) + b"\0" + entry
    with pytest.raises(MalformedRequestError, match=f"environment entry {entry!r} has no name"):
        decode_request(body)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def test_a_message_within_the_limit_is_received_whole(pair):
    ours, theirs = pair
    theirs.sendall(encode_message(b"Password: "))
    assert receive_message(ours, limit=10) == b"Password: "


def test_a_message_over_the_receivers_limit_is_refused_unread(pair):
    ours, theirs = pair
    theirs.sendall(encode_message(b"x" * 11))
    with pytest.raises(MalformedRequestError, match="a message of 11 bytes exceeds 10"):
        receive_message(ours, limit=10)


def test_a_message_that_ends_before_its_length_is_refused(pair):
    ours, theirs = pair
    theirs.sendall(encode_message(b"Password: ")[:-1])
    theirs.shutdown(socket.SHUT_WR)
    # In a thread: a receiver that missed the end would spin on recv() forever.
    raised: list[BaseException] = []

    def receive() -> None:
        try:
            receive_message(ours, limit=100)
        except MalformedRequestError as exc:
            raised.append(exc)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    receiver.join(10)
    assert not receiver.is_alive(), "the receiver did not see the end of the stream"
    assert [str(exc) for exc in raised] == ["the message ended early"]
