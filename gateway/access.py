"""Which object a request names, and whether the device may have it.

:func:`object_key` validates the key from the raw request path before anything
else looks at it (SPEC §3): exactly one percent-decoding, then only
``A-Z a-z 0-9 / . _ - ~ + = , @``, no empty, ``.`` or ``..`` segment, at most
1024 bytes. Everything else (a ``%`` left after decoding — double encoding —,
backslashes, whitespace, control characters, non-ASCII such as fullwidth dots)
is a 400. Because the allowed set has no ``%`` and no ``\\``, ``%2e%2e``,
``..%2f``, ``%252e`` and ``%5c`` all end as a rejected segment or character.

:class:`AccessPolicy` turns the ``access`` prefix templates into the prefixes a
device's claims allow (``firmware/{product}/`` with ``product: acme-x1`` gives
``firmware/acme-x1/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from gateway.errors import InvalidObjectKey, NotEntitled

MAX_KEY_BYTES = 1024
_KEY = re.compile(rb"[A-Za-z0-9/._~+=,@-]+")
# A claim value may only fill a template if it is one ordinary key segment:
# an empty value or one with "/" or ".." could widen the prefix it fills.
_CLAIM_VALUE = re.compile(r"[A-Za-z0-9._~+=,@-]+")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def object_key(raw: bytes) -> str:
    """The object key from the raw (still percent-encoded) path after the route prefix."""
    decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    if not decoded:
        raise InvalidObjectKey("the object key is empty")
    if len(decoded) > MAX_KEY_BYTES:
        raise InvalidObjectKey(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    if not _KEY.fullmatch(decoded):
        raise InvalidObjectKey(
            "the object key may contain only A-Z a-z 0-9 / . _ - ~ + = , @ after one "
            "percent-decoding"
        )
    for segment in decoded.split(b"/"):
        if segment in (b"", b".", b".."):
            raise InvalidObjectKey("the object key has an empty, '.' or '..' segment")
    return decoded.decode("ascii")


class AccessPolicy:
    """The ``access`` rules: a device may fetch keys under any prefix its claims fill."""

    def __init__(self, templates: Sequence[str]) -> None:
        # Pre-split each template into literal text and claim names.
        self._templates: list[list[tuple[bool, str]]] = []
        for template in templates:
            parts: list[tuple[bool, str]] = []
            pos = 0
            for m in _FIELD.finditer(template):
                if m.start() > pos:
                    parts.append((False, template[pos : m.start()]))
                parts.append((True, m.group(1)))
                pos = m.end()
            if pos < len(template):
                parts.append((False, template[pos:]))
            self._templates.append(parts)

    def prefixes(self, claims: Mapping[str, Any]) -> list[str]:
        """The prefixes these claims allow; a template whose claim is missing gives none."""
        return [prefix for _, prefix in self._filled(claims)]

    def _filled(self, claims: Mapping[str, Any]) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for index, parts in enumerate(self._templates):
            text: list[str] = []
            for is_claim, value in parts:
                if not is_claim:
                    text.append(value)
                    continue
                claim = claims.get(value)
                if isinstance(claim, bool) or not isinstance(claim, str | int):
                    break
                claim = str(claim)
                if claim in (".", "..") or not _CLAIM_VALUE.fullmatch(claim):
                    break
                text.append(claim)
            else:
                out.append((index, "".join(text)))
        return out

    def check(self, claims: Mapping[str, Any], key: str) -> int:
        """The index of the first rule whose prefix holds ``key``; :class:`NotEntitled` if none."""
        for index, prefix in self._filled(claims):
            if key.startswith(prefix):
                return index
        raise NotEntitled("this device is not entitled to this object")
