"""The batch API's JSON (docs/lfs-wire.md), endpoint discovery, and the ssh and credential
inputs: what a server or a URL may send us, and what is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from git_theta_filter.git_credential import (
    CredentialError,
    GitCredentials,
    credential_description,
)
from git_theta_filter.store.base import UnsupportedStoreURLError
from git_theta_filter.store.lfs_endpoint import (
    SshTarget,
    endpoint_from_lfs_url,
    endpoint_from_remote_url,
)
from git_theta_filter.store.lfs_protocol import (
    MAX_BATCH,
    Credential,
    LfsProtocolError,
    batch_request,
    parse_batch_response,
    parse_retry_after,
    parse_ssh_authenticate,
    printable,
    redact_url,
)
from git_theta_filter.store.lfs_ssh import (
    SshAuthenticationError,
    SshAuthenticator,
    ssh_command_line,
)
from git_theta_filter.store.remote import open_store

OID = "021a25ab31053d7b9c1e6dee318ba60b8327d365d7e78aabef799b2967683b32"
OTHER = "177b7a6f858af2b6bb0a8c4767a0ddae8396c0046d466db83a920afb925563be"
URL = "lfs+https://example.com/org/repo.git/info/lfs"


def answer(*objects: dict, **extra) -> bytes:
    return json.dumps({"transfer": "basic", "objects": list(objects), **extra}).encode()


def download_entry(oid: str = OID, size: int = 10, **action) -> dict:
    return {
        "oid": oid,
        "size": size,
        "actions": {"download": {"href": "https://cdn.example.com/x?sig=s3cr3t", **action}},
    }


def test_lfs_protocol_batch_request_is_the_literal_form_of_the_spec():
    body = json.loads(batch_request("upload", [(OID, 8264)]))
    assert body == {
        "operation": "upload",
        "transfers": ["basic"],
        "hash_algo": "sha256",
        "objects": [{"oid": OID, "size": 8264}],
    }
    with pytest.raises(ValueError, match="1 to 100"):
        batch_request("download", [(OID, 1)] * (MAX_BATCH + 1))


def test_lfs_protocol_parses_actions_errors_and_expiry():
    body = answer(
        download_entry(expires_in=60, header={"Authorization": "RemoteAuth t"}),
        {"oid": OTHER, "size": 5, "error": {"code": 404, "message": "Object does not exist"}},
    )
    answers = parse_batch_response(URL, body, "download", {OID: 10, OTHER: 5}, received_at=1000)
    action = answers[OID].actions["download"]
    assert action.headers == {"Authorization": "RemoteAuth t"}
    assert action.expires_at == 1060 and action.expires_within(5, now=1056)
    assert not action.expires_within(5, now=1054)
    assert answers[OTHER].error.code == 404 and answers[OTHER].actions == {}
    at = parse_batch_response(
        URL,
        answer(download_entry(expires_at="2016-11-10T15:29:07Z")),
        "download",
        {OID: 10},
    )
    assert at[OID].actions["download"].expires_at == 1478791747
    present = parse_batch_response(URL, answer({"oid": OID, "size": 10}), "upload", {OID: 10})
    assert present[OID].actions == {} and present[OID].error is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>", "not JSON"),
        (json.dumps({"message": "hi"}).encode(), "no list of objects"),
        (answer(download_entry(), transfer="multipart"), "transfer 'multipart' was not offered"),
        (answer(download_entry(), hash_algo="sha1"), "not sha256"),
        (answer(download_entry(oid="../../etc/passwd")), "is not a sha256"),
        (answer(download_entry(oid=OTHER)), "which was not asked"),
        (answer(download_entry(size=11)), "is 11 bytes in the answer, 10 in the request"),
        (answer({"oid": OID, "size": 10, "actions": {}}), "neither a download action nor"),
        (answer(download_entry(href="file:///etc/passwd")), "is not an http(s) URL"),
        (answer(download_entry(href="https://h.example/a\r\nX: y")), "spaces or line breaks"),
        (answer(download_entry(header={"X-A": "1\r\nCookie: x"})), "has a line break"),
        (answer(download_entry(header={"Bad Name": "1"})), "is not valid"),
        (answer(download_entry(header={"X-A": " 1"})), "without leading space"),
        (answer(download_entry(header={"X-A": "\u20ac"})), "not printable ASCII"),
        (answer(download_entry(expires_in="soon")), "expires_in is not a whole number"),
        (answer(download_entry(expires_at="tomorrow")), "is not RFC 3339"),
        (answer({"oid": OID, "size": 10, "error": {"code": "x"}}), "no numeric code"),
        (answer({"oid": OID, "size": 10, "error": "gone"}), "no numeric code"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
        (answer("an object"), "an entry of objects is not an object"),
        (answer(download_entry(size=-1)), "size is not a whole number"),
        (answer(download_entry(size="10")), "size is not a whole number"),
        (answer(download_entry(size=1.5)), "size is not a whole number"),
        (answer({"oid": OID, "size": 10, "actions": ["download"]}), "actions is not an object"),
        (answer({"oid": OID, "size": 10, "actions": {"download": "x"}}), "action is not an object"),
        (answer(download_entry(href=["https://h.example/a"])), "href is not a string"),
        (answer(download_entry(href="https://[::1/a")), "is not an http(s) URL"),
        (answer(download_entry(href="https:///a")), "is not an http(s) URL"),
        (answer(download_entry(href="https://h.example/a b")), "spaces or line breaks"),
        (answer(download_entry(header=["Authorization: x"])), "header is not an object"),
        (answer(download_entry(header={"X-A": 1})), "is not valid"),
        (answer(download_entry(expires_in=True)), "expires_in is not a whole number"),
        (answer(download_entry(expires_in=10**15)), "expires_in is not a whole number"),
        (answer(download_entry(expires_at=1478791747)), "expires_at is not a string"),
        (answer(download_entry(expires_at="2016-11-10T15:29:07")), "has no time zone"),
        (answer(dict(download_entry(), authenticated="yes")), "authenticated is not true or"),
        (answer(download_entry(size=10**30)), "more than 20 digits"),
        (json.dumps(["objects"]).encode(), "no list of objects"),
    ],
)
def test_lfs_protocol_refuses_a_malformed_answer_whole(body, reason):
    with pytest.raises(LfsProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_batch_response(URL, body, "download", {OID: 10})


def test_lfs_protocol_upload_answer_needs_an_upload_action_beside_a_verify():
    upload = {"href": "https://h.example/u"}
    verify = {"href": "https://h.example/v"}
    answers = parse_batch_response(
        URL,
        answer({"oid": OID, "size": 10, "actions": {"upload": upload, "verify": verify}}),
        "upload",
        {OID: 10},
    )
    assert set(answers[OID].actions) == {"upload", "verify"}
    with pytest.raises(LfsProtocolError, match="a verify action without an upload action"):
        parse_batch_response(
            URL,
            answer({"oid": OID, "size": 10, "actions": {"verify": verify}}),
            "upload",
            {OID: 10},
        )


def test_lfs_protocol_git_lfs_authenticate_must_print_an_object():
    with pytest.raises(LfsProtocolError, match="did not print a JSON object"):
        parse_ssh_authenticate(URL, b'["https://lfs.example.com/org/repo"]')


def test_lfs_protocol_refuses_an_answer_over_16_mib():
    body = answer(download_entry(header={"X-Pad": "a" * (17 << 20)}))
    with pytest.raises(LfsProtocolError, match="more than"):
        parse_batch_response(URL, body, "download", {OID: 10})


def test_lfs_protocol_messages_and_urls_are_safe_to_print():
    assert printable("bad\x1b[31mred\nline") == "bad\\x1b[31mred\\nline"
    assert len(printable("x" * 1000)) == 300
    assert (
        redact_url("https://user:pass@cdn.example.com:8443/o/x?X-Amz-Signature=abc#f")
        == "https://cdn.example.com:8443/o/x"
    )


def test_lfs_protocol_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_lfs_protocol_git_lfs_authenticate_answer():
    auth = parse_ssh_authenticate(
        URL,
        b'{"href": "https://lfs.example.com/org/repo", "header": {"Authorization": "RemoteAuth x"},'
        b' "expires_in": 60}',
        received_at=100,
    )
    assert auth.href == "https://lfs.example.com/org/repo"
    assert auth.headers == {"Authorization": "RemoteAuth x"} and auth.expires_at == 160
    with pytest.raises(LfsProtocolError, match="is not an http"):
        parse_ssh_authenticate(URL, b'{"href": "ext::sh -c touch% /tmp/pwned"}')


@pytest.mark.parametrize(
    ("remote", "endpoint"),
    [
        ("https://git-server.com/foo/bar", "https://git-server.com/foo/bar.git/info/lfs"),
        ("https://git-server.com/foo/bar.git", "https://git-server.com/foo/bar.git/info/lfs"),
        ("https://git-server.com/foo/bar/", "https://git-server.com/foo/bar.git/info/lfs"),
        ("git@git-server.com:foo/bar.git", "https://git-server.com/foo/bar.git/info/lfs"),
        ("ssh://git-server.com:2222/foo/bar.git", "https://git-server.com/foo/bar.git/info/lfs"),
        ("git://git-server.com/foo/bar.git", "https://git-server.com/foo/bar.git/info/lfs"),
        ("theta::https://h.example/m.git", "https://h.example/m.git/info/lfs"),
        ("https://huggingface.co/org/model", "https://huggingface.co/org/model.git/info/lfs"),
    ],
)
def test_lfs_endpoint_derived_from_a_remote_url_as_git_lfs_does(remote, endpoint):
    assert endpoint_from_remote_url(remote).url == endpoint


def test_lfs_endpoint_of_ssh_remotes_and_remotes_without_one():
    scp = endpoint_from_remote_url("git@git-server.com:foo/bar.git")
    assert scp.ssh == SshTarget("git@git-server.com", "foo/bar.git", None)
    ssh = endpoint_from_remote_url("ssh://me@git-server.com:2222/foo/bar.git")
    assert ssh.ssh == SshTarget("me@git-server.com", "foo/bar.git", 2222)
    for remote in ("/srv/models.git", "file:///srv/models.git", "./models", "ext::git %s /x"):
        assert endpoint_from_remote_url(remote) is None
    for hostile in ("ssh://-oProxyCommand=touch%20x/repo", "-oProxyCommand=x:repo"):
        assert endpoint_from_remote_url(hostile) is None


def test_lfs_endpoint_takes_credentials_out_of_the_url():
    endpoint = endpoint_from_lfs_url("https://me:s3cret@lfs.example.com/org/repo/")
    assert endpoint.url == "https://lfs.example.com/org/repo"
    assert (endpoint.username, endpoint.password) == ("me", "s3cret")
    assert "s3cret" not in repr(endpoint) + endpoint.store_url
    assert endpoint_from_lfs_url("ftp://lfs.example.com/x") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://",
        "https:///org/repo",
        "http://:80/x",
        "https://h.example:99999/x",
        "https://[::1/x",
    ],
)
def test_lfs_endpoint_of_a_url_without_a_usable_host_is_none_and_no_store(url):
    # Such a URL, in a committed .thetaconfig say, failed on the first request with
    # requests' InvalidURL, which is no named error of ours.
    assert endpoint_from_lfs_url(url) is None
    with pytest.raises(UnsupportedStoreURLError, match="has an unsupported URL"):
        open_store(f"lfs+{url}", base=Path("/nonexistent"))


def test_lfs_ssh_command_line_keeps_hosts_and_paths_from_becoming_options_or_commands():
    target = SshTarget("git@h.example", "org/my repo;rm -rf ~.git", 2222)
    argv = ssh_command_line(target, "upload")
    assert argv == [
        "ssh",
        "-p",
        "2222",
        "--",
        "git@h.example",
        "git-lfs-authenticate 'org/my repo;rm -rf ~.git' upload",
    ]
    plink = ssh_command_line(target, "download", ssh_program="/usr/bin/plink")
    assert plink[1:3] == ["-P", "2222"] and "--" not in plink
    shell = ssh_command_line(SshTarget("h", "r.git"), "download", ssh_command="ssh -i key")
    assert shell[:3] == ["sh", "-c", 'ssh -i key "$@"']
    with pytest.raises(ValueError, match="may not start with '-'"):
        ssh_command_line(SshTarget("-oProxyCommand=x", "r"), "upload")


@pytest.mark.parametrize(
    ("target", "how", "reason"),
    [
        # A shell command stands in for ssh; ": " swallows the arguments appended to it.
        (
            SshTarget("git@h.example", "r.git"),
            {"ssh_command": "echo 'Permission denied (publickey).' >&2; exit 255; :"},
            r"on git@h\.example failed: Permission denied \(publickey\)\.",
        ),
        (SshTarget("h", "r.git"), {"ssh_command": "exit 3; :"}, "failed: exit code 3"),
        (SshTarget("h", "r.git"), {"ssh_command": "ssh -o 'unclosed"}, "cannot run ssh"),
        (SshTarget("-oProxyCommand=x", "r.git"), {}, "cannot run ssh: .* may not start with '-'"),
        (
            SshTarget("h", "r.git"),
            {"ssh_program": "/nonexistent/ssh"},
            "cannot run git-lfs-authenticate over ssh",
        ),
    ],
)
def test_lfs_ssh_authentication_that_fails_is_named_by_the_endpoint(target, how, reason):
    authenticator = SshAuthenticator(target, URL, env={"PATH": "/usr/bin:/bin"}, **how)
    with pytest.raises(SshAuthenticationError, match=reason) as caught:
        authenticator.authenticate("download")
    assert str(caught.value).startswith(f"object store {URL}: unavailable")


def test_lfs_ssh_authentication_parses_what_git_lfs_authenticate_prints():
    printed = '{"href": "https://lfs.example.com/org/repo", "header": {"Authorization": "x"}}'
    authenticator = SshAuthenticator(
        SshTarget("h", "r.git"), URL, ssh_command=f"echo '{printed}'; :", env={}
    )
    answer = authenticator.authenticate("upload")
    assert answer.href == "https://lfs.example.com/org/repo"
    assert answer.headers == {"Authorization": "x"}


def test_lfs_credential_description_and_a_credential_that_never_prints():
    assert credential_description("https://h.example:8443/org/repo.git/info/lfs") == [
        ("protocol", "https"),
        ("host", "h.example:8443"),
        ("path", "org/repo.git/info/lfs"),
    ]
    for line_break in ("%0A", "%0D", "%00"):
        with pytest.raises(ValueError, match="line break"):
            credential_description(f"https://h.example/org{line_break}host=evil.example/repo")
    credential = Credential((("username", "me"), ("password", "s3cret")))
    assert "s3cret" not in repr(credential) and "s3cret" not in str(credential)


@pytest.mark.parametrize(
    "url, named",
    [
        ("ftp://me:s3cret@h.example/org/repo", "ftp://h.example/org/repo"),
        ("https:///org/repo", "https:///org/repo"),
    ],
    ids=["not http", "no host"],
)
def test_lfs_credentials_are_only_asked_for_an_http_url_with_a_host(url, named):
    with pytest.raises(ValueError) as raised:
        credential_description(url)
    assert str(raised.value) == f"credentials are only asked for http(s) URLs, not {named}"


def git_credentials(home: Path, helper: str | None = None) -> GitCredentials:
    """``git credential`` with no configuration but ``helper``, and no terminal to ask on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and "ASKPASS" not in k}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    if helper is not None:
        env.update(
            GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="credential.helper", GIT_CONFIG_VALUE_0=helper
        )
    return GitCredentials(home, env)


def test_lfs_credentials_that_git_cannot_supply_are_refused_with_gits_reason(tmp_path):
    with pytest.raises(CredentialError) as raised:
        git_credentials(tmp_path).fill("https://me:s3cret@h.example/org/repo.git/info/lfs")
    message = str(raised.value)
    assert message.startswith(
        "object store https://h.example/org/repo.git/info/lfs: unavailable (no credentials: "
        "`git credential fill` failed: fatal: could not read Password for "
    )
    assert "terminal prompts disabled" in message and "s3cret" not in message


def test_lfs_credentials_from_a_helper_that_gives_an_empty_password_are_refused(tmp_path):
    # git passes an empty password on as an answer; it would be sent as one.
    helper = "!f() { echo username=me; echo password=; }; f"
    with pytest.raises(CredentialError) as raised:
        git_credentials(tmp_path, helper).fill("https://h.example/org/repo.git/info/lfs")
    assert str(raised.value) == (
        "object store https://h.example/org/repo.git/info/lfs: unavailable "
        "(no credentials: `git credential fill` gave no password)"
    )
