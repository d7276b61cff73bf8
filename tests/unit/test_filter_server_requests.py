"""The filter server's first read of a connection (filter_server.receive_request): who
may ask and with what, checked on a socket pair, without a server."""

from __future__ import annotations

import os
import socket

import pytest

from git_theta_filter import filter_server, filter_wire

REQUEST = filter_wire.encode_request(
    filter_wire.FilterRequest("identity", b"/", 0o022, {b"HOME": b"/nonexistent"})
)


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def send_request(client: socket.socket, descriptors: int) -> None:
    """Send a well-formed request with ``descriptors`` descriptors of /dev/null."""
    null = [os.open(os.devnull, os.O_RDWR) for _ in range(descriptors)]
    try:
        socket.send_fds(client, [REQUEST], null)
    finally:
        for fd in null:
            os.close(fd)


def test_a_well_formed_request_from_this_user_is_received_with_its_three_descriptors() -> None:
    # The refusals below are of this same request: only what they change is wrong.
    server, client = socket.socketpair()
    with server, client:
        send_request(client, filter_server.DESCRIPTORS)
        request, descriptors = filter_server.receive_request(server)
    for fd in descriptors:
        os.close(fd)
    assert (request.cwd, len(descriptors)) == (b"/", 3)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_request_from_another_user_is_refused_naming_both_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A socket pair's peer is always this user: another user's client is stood in for by
    # what SO_PEERCRED reports (test_filter_server.py connects as one, when run as root).
    other = os.getuid() + 1
    monkeypatch.setattr(filter_wire, "peer_uid", lambda connection: other)
    server, client = socket.socketpair()
    with server, client:
        send_request(client, filter_server.DESCRIPTORS)
        before = open_descriptors()
        with pytest.raises(filter_server.UntrustedClientError) as error:
            filter_server.receive_request(server)
        assert open_descriptors() <= before  # refused before its descriptors were taken
    assert str(error.value).startswith(f"a client of user {other} connected to user {os.getuid()}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("descriptors", [2, 4])
def test_a_request_with_other_than_three_descriptors_is_refused_and_they_are_closed(
    descriptors: int,
) -> None:
    server, client = socket.socketpair()
    with server, client:
        send_request(client, descriptors)
        before = open_descriptors()
        with pytest.raises(filter_server.UntrustedClientError, match="comes with 3 descriptors"):
            filter_server.receive_request(server)
        assert open_descriptors() <= before
