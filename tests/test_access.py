"""Object keys from the raw request path (SPEC §3) and claim-based access prefixes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.access import MAX_KEY_BYTES, AccessPolicy, object_key
from gateway.errors import BadRequest, InvalidObjectKey, NotEntitled

# --------------------------------------------------------------------------- object_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"firmware/acme-x1/1.4.2/rootfs.img", "firmware/acme-x1/1.4.2/rootfs.img"),
        (b"a", "a"),
        (
            b"firmware/acme~x1/v1+build=2,rc@3/root-fs_1.img",
            "firmware/acme~x1/v1+build=2,rc@3/root-fs_1.img",
        ),
        (b"~+=,@-_/x", "~+=,@-_/x"),
        (b"firmware/.hidden/..dots/a..b/...", "firmware/.hidden/..dots/a..b/..."),
        (b"firmware%2Facme", "firmware/acme"),
        (b"firmware%2facme%2Dx1/1%2E4", "firmware/acme-x1/1.4"),
        (b"%41%42%43", "ABC"),
        (b"fw/a+b", "fw/a+b"),  # '+' in a path is a plus, never a space
        (b"fw/a%2Bb", "fw/a+b"),
    ],
)
def test_valid_keys(raw: bytes, key: str) -> None:
    assert object_key(raw) == key


@pytest.mark.parametrize(
    "raw",
    [
        # traversal, plain and encoded
        b"..",
        b"firmware/../secret",
        b"firmware/acme/..",
        b"../etc/passwd",
        b"firmware/./acme",
        b"./firmware",
        b".",
        b"firmware/%2e%2e/secret",
        b"firmware/%2E%2E/secret",
        b"firmware/.%2e/secret",
        b"firmware/..%2fsecret",
        b"firmware/..%2Fsecret",
        b"firmware/%2e%2e%2fsecret",
        b"%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"firmware/%2e/acme",
        # double encoding: a '%' survives the one decoding
        b"firmware/%252e%252e/secret",
        b"firmware%252facme",
        b"firmware/%25",
        # backslashes
        b"firmware\\..\\secret",
        b"firmware%5c..%5csecret",
        b"firmware%5Cacme",
        # empty segments
        b"a//b",
        b"/firmware/acme",
        b"firmware/acme/",
        b"/",
        b"//",
        b"firmware%2F%2Facme",
        b"firmware/acme%2F",
        # empty key
        b"",
        # NUL and other control characters
        b"firmware/acme%00.img",
        b"firmware/acme\x00.img",
        b"firmware/%01",
        b"firmware/%1f",
        b"firmware/%7f",
        b"firmware/a%09b",
        b"firmware/a\tb",
        b"firmware/acme%0d%0aSet-Cookie:x",
        b"firmware/acme%0A",
        b"firmware/acme\n",
        b"firmware/acme\r\n",
        # whitespace
        b"firmware/acme x1",
        b"firmware/acme%20x1",
        b" firmware/acme",
        # non-ASCII: fullwidth dots, raw UTF-8, Latin-1
        b"firmware/%EF%BC%8E%EF%BC%8E/secret",
        b"firmware/\xef\xbc\x8e\xef\xbc\x8e/secret",
        b"firmware/caf\xc3\xa9",
        b"firmware/caf%C3%A9",
        b"firmware/caf%e9",
        # '%' garbage
        b"firmware/%zz",
        b"firmware/%",
        b"firmware/%2",
        b"%g0",
        # characters outside the allowed set
        b"firmware/acme?x=1",
        b"firmware/acme#frag",
        b"firmware/acme;x",
        b"firmware/*",
        b"firmware/a:b",
        b"firmware/a%3Fb",
        b'firmware/a"b',
        b"firmware/<x>",
    ],
)
def test_rejected_keys(raw: bytes) -> None:
    with pytest.raises(InvalidObjectKey) as info:
        object_key(raw)
    assert info.value.status == 400
    assert isinstance(info.value, BadRequest)
    status, _headers, body = info.value.render()
    assert status == 400
    assert b"invalid-key" in body


def test_rejected_key_detail_does_not_echo_the_key() -> None:
    with pytest.raises(InvalidObjectKey) as info:
        object_key(b"firmware/%3Cscript%3E")
    assert "script" not in info.value.detail


def test_length_limit_is_1024_bytes_after_decoding() -> None:
    assert MAX_KEY_BYTES == 1024
    ok = b"f/" + b"a" * 1022
    assert len(ok) == 1024
    assert object_key(ok) == ok.decode()
    with pytest.raises(InvalidObjectKey):
        object_key(ok + b"a")


def test_length_is_counted_after_decoding() -> None:
    # 1024 decoded bytes sent as 3072 encoded bytes: allowed.
    assert object_key(b"%61" * 1024) == "a" * 1024
    with pytest.raises(InvalidObjectKey):
        object_key(b"%61" * 1025)


def test_decoding_happens_exactly_once() -> None:
    # "%2561" decodes to "%61", which must not be decoded again into "a".
    with pytest.raises(InvalidObjectKey):
        object_key(b"firmware/%2561")


# --------------------------------------------------------------------------- AccessPolicy

KEY = "firmware/acme-x1/1.4.2/rootfs.img"


def test_prefix_from_claims() -> None:
    policy = AccessPolicy(["firmware/{product}/"])
    claims = {"sub": "dev-1", "product": "acme-x1"}
    assert policy.prefixes(claims) == ["firmware/acme-x1/"]
    assert policy.check(claims, KEY) == 0  # the index of the rule that matched
    policy.check(claims, "firmware/acme-x1/a")


@pytest.mark.parametrize(
    "key",
    [
        "firmware/acme-x2/1.4.2/rootfs.img",
        "firmware/acme-x10/1.4.2/rootfs.img",  # a sibling that shares the text prefix
        "firmware/acme-x1",  # the directory itself is not under the prefix
        "other/acme-x1/rootfs.img",
        "Firmware/acme-x1/rootfs.img",
        "firmware/ACME-X1/rootfs.img",
    ],
)
def test_key_outside_the_prefix_is_not_entitled(key: str) -> None:
    policy = AccessPolicy(["firmware/{product}/"])
    with pytest.raises(NotEntitled) as info:
        policy.check({"product": "acme-x1"}, key)
    assert info.value.status == 403
    assert info.value.render()[0] == 403


def test_missing_claim_gives_no_prefix() -> None:
    policy = AccessPolicy(["firmware/{product}/"])
    assert policy.prefixes({"sub": "dev-1"}) == []
    with pytest.raises(NotEntitled):
        policy.check({"sub": "dev-1"}, KEY)


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        "a/b",
        "acme-x1/..",
        "/",
        "*",
        "acme*",
        "%2e%2e",
        "acme x1",
        "acme\n",
        "acme\\x1",
        "\uff41cme",  # fullwidth 'a'
        None,
        True,
        False,
        1.5,
        {"a": "b"},
        ["acme-x1"],
        [],
    ],
)
def test_claim_values_that_could_widen_access_give_no_prefix(value: Any) -> None:
    policy = AccessPolicy(["firmware/{product}/"])
    claims = {"product": value}
    assert policy.prefixes(claims) == []
    for key in (KEY, "firmware/x", "firmware/a/b/c"):
        with pytest.raises(NotEntitled):
            policy.check(claims, key)


def test_integer_claim_fills_the_template() -> None:
    policy = AccessPolicy(["tenants/{tenant}/"])
    assert policy.prefixes({"tenant": 42}) == ["tenants/42/"]
    policy.check({"tenant": 42}, "tenants/42/fw.bin")
    with pytest.raises(NotEntitled):
        policy.check({"tenant": 42}, "tenants/420/fw.bin")


def test_several_templates_one_missing_claim_other_matches() -> None:
    policy = AccessPolicy(["firmware/{product}/", "shared/{tenant}/"])
    claims = {"tenant": "acme"}
    assert policy.prefixes(claims) == ["shared/acme/"]
    policy.check(claims, "shared/acme/bootloader.bin")
    with pytest.raises(NotEntitled):
        policy.check(claims, KEY)


def test_several_templates_all_filled() -> None:
    policy = AccessPolicy(["firmware/{product}/", "shared/{tenant}/"])
    claims = {"tenant": "acme", "product": "acme-x1"}
    assert policy.prefixes(claims) == ["firmware/acme-x1/", "shared/acme/"]
    policy.check(claims, KEY)
    policy.check(claims, "shared/acme/x")


def test_one_bad_claim_disables_only_its_template() -> None:
    policy = AccessPolicy(["firmware/{product}/", "shared/{tenant}/"])
    claims = {"tenant": "acme", "product": ".."}
    assert policy.prefixes(claims) == ["shared/acme/"]


def test_template_with_two_claims() -> None:
    policy = AccessPolicy(["{tenant}/firmware/{product}/"])
    assert policy.prefixes({"tenant": "acme", "product": "x1"}) == ["acme/firmware/x1/"]
    # Both claims must be usable.
    assert policy.prefixes({"tenant": "acme"}) == []
    assert policy.prefixes({"tenant": "acme", "product": "a/b"}) == []
    policy.check({"tenant": "acme", "product": "x1"}, "acme/firmware/x1/rootfs.img")


def test_literal_template_needs_no_claims() -> None:
    policy = AccessPolicy(["public/"])
    assert policy.prefixes({}) == ["public/"]
    policy.check({}, "public/readme.txt")
    with pytest.raises(NotEntitled):
        policy.check({}, "private/readme.txt")


def test_no_templates_allow_nothing() -> None:
    policy = AccessPolicy([])
    assert policy.prefixes({"product": "acme-x1"}) == []
    with pytest.raises(NotEntitled):
        policy.check({"product": "acme-x1"}, KEY)


def test_claim_values_with_allowed_punctuation() -> None:
    policy = AccessPolicy(["firmware/{product}/"])
    assert policy.prefixes({"product": "acme_x1.v2~b+c=d,e@f-g"}) == [
        "firmware/acme_x1.v2~b+c=d,e@f-g/"
    ]
