"""gateway.proxy_headers: which address is the device, behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.errors import ConfigError
from gateway.proxy_headers import TrustedProxies, client_address, parse_address

TRUSTED = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"])
NOBODY = TrustedProxies([])

DEVICE = "81.2.69.142"
SPOOF = "1.2.3.4"


def xff(peer: str | None, header: str | None, trusted: TrustedProxies = TRUSTED) -> str | None:
    return client_address(peer, header, None, trusted)


def fwd(peer: str | None, header: str | None, trusted: TrustedProxies = TRUSTED) -> str | None:
    return client_address(peer, None, header, trusted)


# --------------------------------------------------------------------------- TrustedProxies


def test_membership() -> None:
    assert "127.0.0.1" in TRUSTED
    assert "10.200.3.4" in TRUSTED
    assert "2001:db8:ffff:1::5" in TRUSTED
    assert "11.0.0.1" not in TRUSTED
    assert "127.0.0.2" not in TRUSTED
    assert "2001:db8:fffe::1" not in TRUSTED


@pytest.mark.parametrize(
    "value", ["", "garbage", "10.0.0.1:80", "[::1]", "10.0.0", None, 167772161]
)
def test_anything_that_is_not_an_address_is_untrusted(value: object) -> None:
    assert value not in TRUSTED


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert "::ffff:10.0.0.1" in TRUSTED
    assert "::ffff:127.0.0.1" in TRUSTED
    assert "::ffff:11.0.0.1" not in TRUSTED
    # A mapped network in the config means the IPv4 network.
    mapped = TrustedProxies(["::ffff:192.168.0.0/112"])
    assert "192.168.3.4" in mapped
    assert "::ffff:192.168.3.4" in mapped
    assert "192.169.0.1" not in mapped


def test_empty_list_trusts_nobody() -> None:
    assert not NOBODY
    assert "127.0.0.1" not in NOBODY
    assert "::1" not in NOBODY
    assert TRUSTED


def test_host_bits_and_bare_addresses_are_accepted() -> None:
    proxies = TrustedProxies(["10.1.2.3/8", "192.0.2.7", "::1"])
    assert [str(n) for n in proxies.networks] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]
    assert "10.9.9.9" in proxies
    assert "192.0.2.7" in proxies and "192.0.2.8" not in proxies
    assert "::1" in proxies


def test_invalid_entries_are_config_errors_with_their_index() -> None:
    with pytest.raises(ConfigError) as info:
        TrustedProxies(["10.0.0.0/8", "localhost", "10.0.0.0/33"])
    assert [p.split(":")[0] for p in info.value.problems] == [
        "server.trusted_proxies[1]",
        "server.trusted_proxies[2]",
    ]


def test_cache_is_bounded_and_answers_stay_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(TrustedProxies._CACHE_LIMIT + 10):
        address = str(ipaddress.IPv4Address(0x0A000000 + i))
        assert address in proxies
    assert len(proxies._cache) <= TrustedProxies._CACHE_LIMIT
    assert "11.0.0.1" not in proxies
    assert "10.0.0.1" in proxies


# --------------------------------------------------------------------------- parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:567", "1.2.3.4"),
        ('"1.2.3.4"', "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ('"[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1"),
        ("1.2.3.4:_port", "1.2.3.4"),
    ],
)
def test_parse_address(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "unknown", "_hidden", "example.com", "1.2.3", "1.2.3.4:", "1.2.3.4:port",
        "1.2.3.4:123456", "[2001:db8::1", "[2001:db8::1]x", "[1.2.3.4]", "[2001:db8::1]:",
        "300.1.1.1", "1.2.3.4 5.6.7.8", '"', "-",
    ],
)  # fmt: skip
def test_parse_address_rejects(text: str) -> None:
    assert parse_address(text) is None


# --------------------------------------------------------------------------- untrusted peer


def test_untrusted_peer_ignores_both_headers() -> None:
    assert client_address(DEVICE, SPOOF, f"for={SPOOF}", TRUSTED) == DEVICE
    assert client_address("2001:218::1", "10.0.0.1", None, TRUSTED) == "2001:218::1"


def test_empty_trust_list_always_returns_the_peer() -> None:
    assert client_address("127.0.0.1", DEVICE, f"for={DEVICE}", NOBODY) == "127.0.0.1"


def test_no_peer() -> None:
    assert client_address(None, DEVICE, f"for={DEVICE}", TRUSTED) is None


def test_peer_that_is_not_an_address_is_returned_as_is() -> None:
    assert client_address("unix:/run/gw.sock", DEVICE, None, TRUSTED) == "unix:/run/gw.sock"


def test_ipv4_mapped_trusted_peer() -> None:
    assert xff("::ffff:10.0.0.1", DEVICE) == DEVICE


# --------------------------------------------------------------------------- X-Forwarded-For


def test_trusted_peer_without_headers_is_the_client() -> None:
    assert client_address("10.0.0.1", None, None, TRUSTED) == "10.0.0.1"
    assert xff("10.0.0.1", "") == "10.0.0.1"
    assert xff("10.0.0.1", " , ,") == "10.0.0.1"


def test_single_hop() -> None:
    assert xff("10.0.0.1", DEVICE) == DEVICE


def test_spoofed_left_most_hop_never_wins() -> None:
    # The device sent "X-Forwarded-For: 1.2.3.4"; our proxy appended the real address.
    assert xff("10.0.0.1", f"{SPOOF}, {DEVICE}") == DEVICE
    # Even when the spoof claims to be a trusted proxy or a private address.
    assert xff("10.0.0.1", f"10.9.9.9, {SPOOF}, {DEVICE}") == DEVICE


def test_multiple_trusted_hops_are_skipped() -> None:
    assert xff("127.0.0.1", f"{SPOOF}, {DEVICE}, 10.0.0.7, 10.0.0.3") == DEVICE
    assert xff("127.0.0.1", f"{DEVICE},10.0.0.7,10.0.0.3") == DEVICE


def test_all_hops_trusted_gives_the_left_most() -> None:
    assert xff("127.0.0.1", "10.0.0.9, 10.0.0.7") == "10.0.0.9"


def test_joined_header_lines_and_spacing() -> None:
    # Two X-Forwarded-For lines, joined by the server with ", ".
    assert xff("10.0.0.1", f"{SPOOF} ,  {DEVICE}, 10.0.0.5") == DEVICE
    assert xff("10.0.0.1", f"{SPOOF},,{DEVICE},") == DEVICE


def test_ports_and_brackets_are_stripped() -> None:
    assert xff("10.0.0.1", f"{SPOOF}, {DEVICE}:51234") == DEVICE
    assert xff("10.0.0.1", "[2001:218::1]:443, 10.0.0.2:80") == "2001:218::1"
    assert xff("10.0.0.1", "2001:218::1") == "2001:218::1"
    assert xff("10.0.0.1", "[2001:db8:ffff::9], 2001:218::1") == "2001:218::1"


def test_ipv4_mapped_hops() -> None:
    assert xff("10.0.0.1", f"::ffff:{DEVICE}") == DEVICE
    # A mapped trusted proxy is still trusted and skipped.
    assert xff("10.0.0.1", f"{DEVICE}, ::ffff:10.0.0.3") == DEVICE


def test_garbage_stops_the_walk_at_the_nearest_valid_address() -> None:
    # Garbage right-most: nothing in the header is usable; the peer answers.
    assert xff("10.0.0.1", f"{DEVICE}, garbage") == "10.0.0.1"
    # Garbage behind a trusted proxy: that proxy is the nearest valid answer;
    # the left of the garbage (which anyone could have written) is never used.
    assert xff("10.0.0.1", f"{SPOOF}, not-an-ip, 10.0.0.2") == "10.0.0.2"
    # With several trusted hops, the one that received from the unknown sender.
    assert xff("10.0.0.1", f"{SPOOF}, unknown, 10.0.0.2, 10.0.0.3") == "10.0.0.2"
    # Garbage left of the real client does not matter.
    assert xff("10.0.0.1", f"garbage, {DEVICE}, 10.0.0.2") == DEVICE


# --------------------------------------------------------------------------- Forwarded


def test_forwarded_simple_and_case_insensitive_names() -> None:
    assert fwd("10.0.0.1", f"for={DEVICE}") == DEVICE
    assert fwd("10.0.0.1", f"For={DEVICE};proto=https;by=10.0.0.1") == DEVICE
    assert fwd("10.0.0.1", f'FOR="{DEVICE}"') == DEVICE


def test_forwarded_quoted_ipv6_with_port() -> None:
    header = 'for="[2001:218::1]:4711", for=10.0.0.2'
    assert fwd("10.0.0.1", header) == "2001:218::1"
    assert fwd("10.0.0.1", 'for="[2001:218::1]"') == "2001:218::1"


def test_forwarded_ipv4_with_port_and_ipv4_mapped() -> None:
    assert fwd("10.0.0.1", f'for="{DEVICE}:8080"') == DEVICE
    assert fwd("10.0.0.1", f'for="[::ffff:{DEVICE}]"') == DEVICE


def test_forwarded_spoofed_left_most_and_trusted_hops() -> None:
    header = f'for={SPOOF}, for={DEVICE};proto=https, for=10.0.0.5, for="[2001:db8:ffff::2]"'
    assert fwd("10.0.0.1", header) == DEVICE


def test_forwarded_all_trusted_gives_the_left_most() -> None:
    assert fwd("10.0.0.1", "for=10.0.0.9, for=10.0.0.8") == "10.0.0.9"


def test_forwarded_separators_inside_quotes_do_not_split() -> None:
    header = f'for={DEVICE};by="a,b;c=d", for=10.0.0.2'
    assert fwd("10.0.0.1", header) == DEVICE


@pytest.mark.parametrize("node", ["unknown", '"unknown"', "_hidden", '"_gw.01"', "UNKNOWN"])
def test_forwarded_obfuscated_identifiers_stop_the_walk(node: str) -> None:
    # Obfuscated right-most: the peer is the nearest valid answer.
    assert fwd("10.0.0.1", f"for={DEVICE}, for={node}") == "10.0.0.1"
    # Behind a trusted proxy: that proxy.
    assert fwd("10.0.0.1", f"for={SPOOF}, for={node}, for=10.0.0.4") == "10.0.0.4"


def test_forwarded_obfuscated_port_is_fine() -> None:
    assert fwd("10.0.0.1", f'for="{DEVICE}:_p1"') == DEVICE


@pytest.mark.parametrize(
    "bad",
    [
        "for=garbage",
        "for=",
        "for=[2001:218::1",  # unclosed bracket
        "for=1.2.3.4;for=5.6.7.8",  # repeated parameter in one element
        "proto=https;junk",  # no for= in the element that is right-most
    ],
)
def test_forwarded_garbage_hop_stops_the_walk(bad: str) -> None:
    assert fwd("10.0.0.1", f"for={SPOOF}, {bad}") == "10.0.0.1"
    assert fwd("10.0.0.1", f"for={SPOOF}, {bad}, for=10.0.0.6") == "10.0.0.6"


def test_forwarded_unterminated_quote_swallows_the_rest_and_fails_closed() -> None:
    header = f'for={SPOOF}, for="[2001:218::1, for=10.0.0.6'
    assert fwd("10.0.0.1", header) == "10.0.0.1"


def test_forwarded_is_preferred_over_x_forwarded_for() -> None:
    assert client_address("10.0.0.1", SPOOF, f"for={DEVICE}", TRUSTED) == DEVICE


def test_forwarded_without_any_for_falls_back_to_x_forwarded_for() -> None:
    assert client_address("10.0.0.1", DEVICE, "proto=https;host=example.com", TRUSTED) == DEVICE
    assert client_address("10.0.0.1", DEVICE, "", TRUSTED) == DEVICE
    assert client_address("10.0.0.1", None, "proto=https", TRUSTED) == "10.0.0.1"


def test_results_are_canonical_text() -> None:
    assert fwd("10.0.0.1", 'for="[2001:0218:0000::0001]:80"') == "2001:218::1"
    assert xff("10.0.0.1", "2001:0DB8::0001") == "2001:db8::1"


def test_forwarded_quoted_pair_escapes() -> None:
    # RFC 9110 quoted-pair: an escaped quote does not end the string.
    header = f'for={DEVICE};by="proxy \\"one\\", really", for=10.0.0.2'
    assert fwd("10.0.0.1", header) == DEVICE
    assert fwd("10.0.0.1", f'for="\\{DEVICE}"') == DEVICE


def test_bare_ipv6_is_never_split_at_a_port() -> None:
    assert xff("10.0.0.1", "2001:218::1:80") == "2001:218::1:80"


def test_repr_names_the_networks() -> None:
    assert repr(TrustedProxies(["10.0.0.0/8"])) == "TrustedProxies(['10.0.0.0/8'])"
