"""Who the client is when the gateway sits behind reverse proxies or a CDN.

The TCP peer of a request is the last proxy, not the device. Proxies record the
addresses they saw in ``X-Forwarded-For`` (de-facto standard) or ``Forwarded``
(RFC 7239), each appending the address of whoever connected to it. A device can
send either header itself, pre-filled with anything, so only the entries that
*our* proxies appended may be believed: they are at the right-hand end.

Usage::

    trusted = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8"])   # server.trusted_proxies
    client = client_address(peer, xff_header, forwarded_header, trusted)

Rule (SPEC section 4, "Locating a device"):

1. If the TCP peer is not in ``trusted``, the headers are ignored entirely and
   the peer is the client.
2. Otherwise take the chain of addresses from ``Forwarded`` when it has any
   ``for=`` parameter, else from ``X-Forwarded-For``, and walk it right to
   left, skipping addresses that are themselves trusted proxies. The first
   untrusted address is the client.
3. If every address is a trusted proxy, the left-most one is the answer (the
   request started inside the trusted network).
4. If the walk meets an entry that is not an IP address (garbage, ``unknown``,
   an RFC 7239 obfuscated identifier such as ``_hidden``, a ``Forwarded``
   element without ``for=``), it stops there. The answer is the nearest valid
   address to the *right* of that entry: the last trusted proxy passed, or
   the peer itself when the bad entry is the right-most one. Nothing to the
   left of a bad entry is ever used, because whoever wrote it is not a proxy
   we can vouch for.

The gateway passes only the header named by ``server.forwarded_header``
(default ``x-forwarded-for``): a device can send the other header itself, and
a proxy that does not maintain it would pass it through untouched. When this
function is given both, ``Forwarded`` wins.

Pure functions and a small cache; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from gateway.errors import ConfigError
from gateway.memo import Memo

__all__ = ["IPAddress", "TrustedProxies", "client_address", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A port after an address: digits, or an RFC 7239 section 6.3 obfuscated port.
_PORT = re.compile(r"\d{1,5}|_[A-Za-z0-9._-]+")

# RFC 7239 section 6.3: "unknown" and "_"-prefixed obfuscated identifiers name a
# node without revealing an address. They are valid syntax but not addresses.
_UNKNOWN = "unknown"


def _unmap(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` -> ``10.0.0.1``: a dual-stack socket reports IPv4 peers
    in the mapped form, and trust lists and GeoIP should see the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress | None:
    """Parse one address as proxies write it, or ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:567``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:4711``, optionally in double quotes, with surrounding
    spaces; IPv4-mapped IPv6 comes back as IPv4. A bare IPv6 address is never
    split at its last colon (``2001:db8::1:80`` is one address): proxies must
    bracket IPv6 to add a port.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    if not text:
        return None
    host = text
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:])):
            return None
        try:
            return _unmap(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    if text.count(":") == 1:
        # Only IPv4 has exactly one colon when a port is attached.
        host, port = text.split(":")
        if not _PORT.fullmatch(port):
            return None
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            return None
    try:
        return _unmap(ipaddress.ip_address(host))
    except ValueError:
        return None


class TrustedProxies:
    """The set of proxy networks whose forwarding headers are believed.

    Built once per configuration from ``server.trusted_proxies``::

        trusted = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"])
        "10.1.2.3" in trusted            # True
        "::ffff:10.1.2.3" in trusted     # True (IPv4-mapped IPv6 is the IPv4 address)
        "not an ip" in trusted           # False

    Entries are CIDRs; host bits are allowed (``10.1.2.3/8`` means
    ``10.0.0.0/8``) and a bare address is a single host. An invalid entry raises
    ``ConfigError`` naming ``server.trusted_proxies[i]``. An empty list trusts
    nobody.

    Membership answers are cached (the same few proxy addresses ask on every
    request); the cache is bounded and simply starts over when full.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, cidrs: Iterable[str]) -> None:
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        problems: list[str] = []
        for index, cidr in enumerate(cidrs):
            try:
                network = self._unmap_network(ipaddress.ip_network(str(cidr).strip(), strict=False))
            except ValueError as exc:
                problems.append(f"server.trusted_proxies[{index}]: {exc}")
                continue
            if isinstance(network, ipaddress.IPv4Network):
                v4.append(network)
            else:
                v6.append(network)
        if problems:
            raise ConfigError(problems)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)
        # Client addresses pass through here too (each hop of a chain is
        # checked), so the cache must not grow without bound.
        self._cache: Memo[str, bool] = Memo(self._CACHE_LIMIT)

    @staticmethod
    def _unmap_network(network: _Network) -> _Network:
        # "::ffff:10.0.0.0/104" is how someone may write 10.0.0.0/8 for a
        # dual-stack listener; addresses are unmapped before matching, so the
        # network must be too or it would never match.
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:
                return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
        return network

    @property
    def networks(self) -> tuple[_Network, ...]:
        """The trusted networks, IPv4 first, in configuration order."""
        return (*self._v4, *self._v6)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def contains_address(self, address: IPAddress) -> bool:
        """Whether a parsed address is inside a trusted network (no cache)."""
        address = _unmap(address)
        if isinstance(address, ipaddress.IPv4Address):
            return any(address in network for network in self._v4)
        return any(address in network for network in self._v6)

    def __contains__(self, ip: object) -> bool:
        """Whether address text ``ip`` is a trusted proxy; anything that is not an
        IP address is not."""
        if not isinstance(ip, str) or not (self._v4 or self._v6):
            return False
        cached = self._cache.get(ip)
        if cached is not None:
            return cached
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            result = False
        else:
            result = self.contains_address(address)
        return self._cache.remember(ip, result)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"


# --------------------------------------------------------------------------- header parsing


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    """Split an RFC 7239 ``Forwarded`` value into elements of ``{name: value}``.

    Grammar (section 4): elements separated by ``,``, pairs by ``;``, each pair
    ``token=value`` where value is a token or a quoted-string (RFC 9110 section
    5.6.4, backslash escapes). Separators inside quotes do not split. Names are
    lower-cased. A malformed pair (no ``=``, a parameter repeated within an
    element) marks its element with the key ``""`` so the caller treats the hop
    as unidentifiable. An unterminated quote swallows the rest of the value,
    which then cannot parse as an address: fail closed.
    """
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    pair: list[str] = []
    quoted = escaped = False

    def end_pair() -> None:
        text = "".join(pair).strip()
        pair.clear()
        if not text:
            return
        name, sep, raw = text.partition("=")
        name = name.strip().lower()
        if not sep or not name or name in element:
            element[""] = text
            return
        element[name] = raw.strip()

    for char in value:
        if quoted:
            pair.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            pair.append(char)
        elif char == ";":
            end_pair()
        elif char == ",":
            end_pair()
            # Empty list elements (", ,") are allowed by the list syntax
            # (RFC 9110 section 5.6.1) and carry nothing.
            if element:
                elements.append(element)
            element = {}
        else:
            pair.append(char)
    end_pair()
    if element:
        elements.append(element)
    return elements


def _unquote(raw: str) -> str:
    """The content of an RFC 9110 quoted-string, or ``raw`` if it is a token."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def _forwarded_node(raw: str) -> IPAddress | None:
    """The address of an RFC 7239 ``for=`` node, or None for unknown/obfuscated/garbage."""
    node = _unquote(raw).strip()
    if node.lower() == _UNKNOWN or node.startswith("_"):
        return None
    return parse_address(node)


def _forwarded_chain(value: str) -> list[IPAddress | None] | None:
    """The ``for=`` hops of a ``Forwarded`` value, left to right; ``None`` entries
    are hops that name no usable address. ``None`` (the whole result) when no
    element has a ``for=`` parameter, so the caller can fall back to XFF."""
    elements = _forwarded_elements(value)
    if not any("for" in element for element in elements):
        return None
    chain: list[IPAddress | None] = []
    for element in elements:
        raw = element.get("for")
        if raw is None or "" in element:
            # A hop that does not say who connected (or says it unreadably)
            # breaks the chain of custody.
            chain.append(None)
        else:
            chain.append(_forwarded_node(raw))
    return chain


def _x_forwarded_for_chain(value: str) -> list[IPAddress | None]:
    """The hops of an ``X-Forwarded-For`` value, left to right, empty entries dropped."""
    chain: list[IPAddress | None] = []
    for item in value.split(","):
        item = item.strip()
        if item:
            chain.append(parse_address(item))
    return chain


def client_address(
    peer: str | None,
    x_forwarded_for: str | None,
    forwarded: str | None,
    trusted: TrustedProxies,
) -> str | None:
    """The device's address for a request from TCP peer ``peer``.

    ``x_forwarded_for`` and ``forwarded`` are the raw header values, several
    header lines joined with ``", "`` (RFC 9110 section 5.3), or ``None``.
    See the module docstring for the rule. Returns:

    * ``peer`` unchanged when the peer is not trusted, when it is ``None`` (a
      Unix socket: nothing to vouch for), or when neither header has a hop;
    * otherwise an address from the headers in canonical text form
      (``2001:db8::1``, no brackets or port; IPv4-mapped IPv6 as IPv4), or the
      peer when the right-most hop is unusable.
    """
    if peer is None:
        return None
    peer_address = parse_address(peer)
    if peer_address is None or not trusted.contains_address(peer_address):
        return peer
    chain: list[IPAddress | None] | None = None
    if forwarded:
        chain = _forwarded_chain(forwarded)
    if chain is None:
        chain = _x_forwarded_for_chain(x_forwarded_for) if x_forwarded_for else []
    nearest = peer
    for hop in reversed(chain):
        if hop is None:
            return nearest
        text = str(hop)
        if text not in trusted:
            return text
        nearest = text
    return nearest
