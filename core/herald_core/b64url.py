"""Base64url as JOSE uses it (RFC 7515 §2): unpadded, and strict about the canonical spelling."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

_ALPHABET: Final = re.compile(r"[A-Za-z0-9_-]*")


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str) -> bytes | None:
    """The bytes ``text`` spells in canonical unpadded base64url; None for anything else.

    Non-zero trailing bits would give one value two spellings, so only the canonical one passes
    (PyJWT insists on the same).
    """
    if len(text) % 4 == 1 or not _ALPHABET.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None
    return raw if encode(raw) == text else None
